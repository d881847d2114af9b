"""GET/HEAD /videos/{id}/poster.jpg, /storyboard.jpg and /storyboard.vtt of a ready video.

Small files, read whole and sent with validators: their storage key names one
content (a new processing run writes new keys), so it is the ETag and a
revalidation costs a 304.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from server.core.errors import NotFound
from server.core.ids import parse_video_id
from server.core.keys import CONFIG_KEY, DB_KEY
from server.core.storage import storage_path

from .files import etag_for
from .ranges import Conditions, Precondition, Validators, evaluate_preconditions, format_http_date


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
    config = request.app[CONFIG_KEY]
    validators = Validators(etag=etag_for(key), last_modified=int(row["modified"]))
    headers = {
        "ETag": validators.etag,
        "Last-Modified": format_http_date(validators.last_modified),
        "Cache-Control": f"public, max-age={config.stream_cache_seconds}",
    }
    cond = Conditions(if_none_match=request.headers.get("If-None-Match"),
                      if_modified_since=request.headers.get("If-Modified-Since"))
    if evaluate_preconditions(request.method, cond, validators) is Precondition.NOT_MODIFIED:
        return web.Response(status=304, headers=headers)
    try:
        body = await asyncio.to_thread(storage_path(config.storage_dir, key).read_bytes)
    except FileNotFoundError:
        raise ArtifactNotFound() from None
    return web.Response(body=body, headers=headers, content_type=kind.content_type,
                        charset=kind.charset)


def setup(app: web.Application) -> None:
    names = "|".join(name.replace(".", r"\.") for name in ARTIFACTS)
    # add_get answers HEAD as well.
    app.router.add_get(f"/videos/{{id}}/{{name:{names}}}", artifact, name="video_artifact")
