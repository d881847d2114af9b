"""GET/HEAD /videos/{id}/poster.jpg, /storyboard.jpg and /storyboard.vtt of a playable video.

Small files, read whole from the media store (through this node's cache when the
store is a bucket) and sent with validators: their storage key names one
content (a new processing run writes new keys), so it is the ETag and a
revalidation costs a 304. A private video's files need its signed URL, as its
stream does; its storyboard then names the sprite with the same signature, since
the player fetches the sprite from the URL the storyboard gives.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from server.core.errors import NotFound
from server.core.ids import parse_video_id
from server.core.keys import CONFIG_KEY, DB_KEY
from server.storage.cache import read_whole
from server.storage.keys import NODE_CACHE_KEY, STORE_KEY

from .files import etag_for
from .ranges import Conditions, Precondition, Validators, evaluate_preconditions, format_http_date
from .signed import require_signature


@dataclass(frozen=True, slots=True)
class Artifact:
    column: str
    content_type: str
    charset: str | None = None


ARTIFACTS = {
    "poster.jpg": Artifact("poster_key", "image/jpeg"),
    "storyboard.jpg": Artifact("storyboard_key", "image/jpeg"),
    "storyboard.vtt": Artifact("storyboard_vtt_key", "text/vtt", "utf-8"),
}


class ArtifactNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("This video has no such file, or is not ready yet")


async def artifact(request: web.Request) -> web.Response:
    kind = ARTIFACTS[request.match_info["name"]]
    video_id = parse_video_id(request.match_info["id"])
    row = None if video_id is None else await request.app[DB_KEY].one(
        "video_artifacts", {"id": video_id})
    key = None if row is None else row[kind.column]
    if row is None or key is None:
        raise ArtifactNotFound()
    assert video_id is not None
    config = request.app[CONFIG_KEY]
    private = row["visibility"] == "private"
    sprite_query = None
    etag = etag_for(key)
    if private:
        require_signature(request, video_id)
        if kind.column == "storyboard_vtt_key":
            # Rebuilt from the checked values: nothing else of the URL gets into the body.
            expires = request.query["expires"]
            sprite_query = f"expires={expires}&sig={request.query['sig']}"
            # The body names this signature, so it is another content.
            etag = etag_for(f"{key}-{expires}")
    validators = Validators(etag=etag, last_modified=int(row["modified"]))
    max_age = min(config.stream_cache_seconds, config.stream_url_ttl) if private \
        else config.stream_cache_seconds
    headers = {
        "ETag": validators.etag,
        "Last-Modified": format_http_date(validators.last_modified),
        "Cache-Control": f"{'private' if private else 'public'}, max-age={max_age}",
    }
    cond = Conditions(if_none_match=request.headers.get("If-None-Match"),
                      if_modified_since=request.headers.get("If-Modified-Since"))
    if evaluate_preconditions(request.method, cond, validators) is Precondition.NOT_MODIFIED:
        return web.Response(status=304, headers=headers)
    try:
        # With a bucket, through this node's cache: posters are asked for with every list.
        body = await read_whole(request.app[STORE_KEY], request.app[NODE_CACHE_KEY], key)
    except FileNotFoundError:
        raise ArtifactNotFound() from None
    if sprite_query is not None:
        body = signed_sprites(body, video_id, sprite_query)
    return web.Response(body=body, headers=headers, content_type=kind.content_type,
                        charset=kind.charset)


def signed_sprites(vtt: bytes, video_id: int, query: str) -> bytes:
    """A storyboard whose sprite URLs carry `query` (a private video's signature)."""
    sprite = f"/videos/{video_id}/storyboard.jpg#".encode()
    return vtt.replace(sprite, sprite[:-1] + b"?" + query.encode("ascii") + b"#")


def setup(app: web.Application) -> None:
    names = "|".join(name.replace(".", r"\.") for name in ARTIFACTS)
    # add_get answers HEAD as well.
    app.router.add_get(f"/videos/{{id}}/{{name:{names}}}", artifact, name="video_artifact")
