"""Stream answers that come from the bucket, not a local file.

`forward`: a file not yet in this node's cache. The requested ranges are read
from the bucket and written on as they arrive, so a player seeking into a 2 GB
file waits for its range only, while the cache fetches the whole file in the
background (`NodeCache.want`). Errors before the header block (the bucket down,
the object gone) get their own answers (503, 404); after it, the connection is
closed, as for a local file.

`redirect`: STREAM_REDIRECT=presigned answers with a 302 to a presigned bucket
URL (the signature covers no Range header, so the player seeks there freely).
A private video's URL lives PRIVATE_REDIRECT_TTL seconds at most.
"""

from __future__ import annotations

from aiohttp import web

from server.catalog.records import VideoNotFound
from server.storage.store import MediaStore, RangeBody

from .answers import Answer
from .files import Senders, VideoFile, VideoFileCache
from .ranges import ByteRange
from .sendfile import abandon

PRIVATE_REDIRECT_TTL = 300
MIN_REDIRECT_TTL = 60


class Redirects:
    """Presigned URLs of stored media for the stream's redirects."""

    def __init__(self, store: MediaStore, public_ttl: int, private_ttl: int) -> None:
        self._store = store
        self._public_ttl = max(public_ttl, MIN_REDIRECT_TTL)
        self._private_ttl = min(PRIVATE_REDIRECT_TTL, max(private_ttl, MIN_REDIRECT_TTL))

    async def url(self, video: VideoFile) -> str | None:
        ttl = self._private_ttl if video.private else self._public_ttl
        return await self._store.presign(video.key, ttl)


async def redirect(request: web.Request, redirects: Redirects,
                   video: VideoFile) -> web.Response:
    url = await redirects.url(video)
    if url is None:
        raise VideoNotFound()
    # Each request gets a URL of its own: one kept by a cache would outlive its signature.
    return web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})


async def forward(request: web.Request, video_id: int, video: VideoFile, planned: Answer,
                  cache: VideoFileCache) -> web.StreamResponse:
    node_cache = cache.node_cache
    assert node_cache is not None
    node_cache.want(video.key, video.size)
    counts = cache.counts
    counts.answered(planned.kind)
    body = planned.body
    transport = request.transport
    senders = cache.proxying.get(video_id)
    if senders is None:
        senders = cache.proxying[video_id] = Senders()
    if transport is not None:
        senders.streams.add(transport)
    sent = 0
    try:
        response = web.StreamResponse(status=planned.status, headers=planned.headers)
        opened: RangeBody | None = None
        if request.method != "HEAD":
            first = next((piece for piece in body if isinstance(piece, ByteRange)), None)
            if first is not None:
                opened = await _open(node_cache.store, video.key, first)
        try:
            await response.prepare(request)
            if request.method == "HEAD":
                return response
            for piece in body:
                if isinstance(piece, bytes):
                    await response.write(piece)
                    continue
                source = opened or await _open(node_cache.store, video.key, piece)
                opened = None
                try:
                    async for chunk in source.chunks():
                        await response.write(chunk)
                        sent += len(chunk)
                finally:
                    source.close()
            await response.write_eof()
        except Exception as exc:
            if not response.prepared:
                raise
            abandon(request, exc)
        finally:
            if opened is not None:
                opened.close()
    finally:
        counts.proxied_bytes += sent
        if transport is not None:
            senders.streams.discard(transport)
        if not senders.streams:
            cache.proxying.pop(video_id, None)
    return response


async def _open(store: MediaStore, key: str, part: ByteRange) -> RangeBody:
    try:
        return await store.open_range(key, part.start, part.length)
    except FileNotFoundError:
        raise VideoNotFound() from None
