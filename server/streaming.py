"""GET/HEAD /videos/{id}/stream: RFC 9110 conditional and byte-range delivery.

The handler is a straight line over the pure decisions in `ranges`; bodies go
out with sendfile. File metadata is cached per process so a seeking player's
many requests cost no database round trip.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from aiohttp import web

from . import db
from .errors import error_response
from .keys import BUS_KEY, CONFIG_KEY, FILE_CACHE_KEY, QUERIES_KEY
from .ranges import (
    ByteRange,
    Conditions,
    Precondition,
    RangeOutcome,
    Validators,
    evaluate_preconditions,
    format_http_date,
    multipart_layout,
    plan_ranges,
    range_applies,
)

log = logging.getLogger(__name__)

INVALIDATE_CHANNEL = "videos:changed"


@dataclass(frozen=True, slots=True)
class VideoFile:
    path: Path
    size: int
    content_type: str
    validators: Validators


class VideoFileCache:
    """Per-process LRU of stream metadata; misses are remembered briefly.

    Uploads and deletes publish the video id on Redis so every process evicts it.
    """

    def __init__(self, capacity: int = 8192, negative_ttl: float = 2.0) -> None:
        self.capacity = capacity
        self.negative_ttl = negative_ttl
        self._hits: OrderedDict[int, VideoFile] = OrderedDict()
        self._misses: dict[int, float] = {}
        self._loading: dict[int, asyncio.Future[VideoFile | None]] = {}

    def get(self, video_id: int) -> VideoFile | None | bool:
        """The cached file, None for a remembered miss, False when unknown."""
        found = self._hits.get(video_id)
        if found is not None:
            self._hits.move_to_end(video_id)
            return found
        expires = self._misses.get(video_id)
        if expires is not None:
            if expires > time.monotonic():
                return None
            del self._misses[video_id]
        return False

    def put(self, video_id: int, value: VideoFile | None) -> None:
        if value is None:
            if len(self._misses) >= self.capacity:
                self._misses.clear()
            self._misses[video_id] = time.monotonic() + self.negative_ttl
            return
        self._hits[video_id] = value
        self._hits.move_to_end(video_id)
        while len(self._hits) > self.capacity:
            self._hits.popitem(last=False)

    def evict(self, video_id: int) -> None:
        self._hits.pop(video_id, None)
        self._misses.pop(video_id, None)

    def loading(self) -> dict[int, asyncio.Future[VideoFile | None]]:
        return self._loading


def storage_path(storage_dir: Path, storage_key: str) -> Path:
    return storage_dir / storage_key


def etag_for(storage_key: str) -> str:
    # Stored files are never rewritten: the random storage key names one content.
    return f'"{storage_key}"'


async def load_video_file(app: web.Application, video_id: int) -> VideoFile | None:
    cache = app[FILE_CACHE_KEY]
    cached = cache.get(video_id)
    if cached is not False:
        return cached  # type: ignore[return-value]
    pending = cache.loading().get(video_id)
    if pending is not None:
        return await asyncio.shield(pending)
    future: asyncio.Future[VideoFile | None] = asyncio.get_running_loop().create_future()
    cache.loading()[video_id] = future
    try:
        async with db.cursor(app) as cur:
            row = await db.fetch_one(cur, app[QUERIES_KEY]["video_file"], {"id": video_id})
        value = None if row is None else VideoFile(
            path=storage_path(app[CONFIG_KEY].storage_dir, row["storage_key"]),
            size=row["size"],
            content_type=row["content_type"],
            validators=Validators(etag=etag_for(row["storage_key"]),
                                  last_modified=int(row["created"])),
        )
        cache.put(video_id, value)
        future.set_result(value)
        return value
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # mark retrieved: waiters re-raise it themselves
        raise
    finally:
        del cache.loading()[video_id]


def parse_video_id(raw: str) -> int | None:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        return None
    value = int(raw)
    return value if value > 0 else None


def conditions(request: web.Request) -> Conditions:
    def joined(name: str) -> str | None:
        values = request.headers.getall(name, ())
        return ", ".join(values) if values else None

    return Conditions(
        if_match=joined("If-Match"),
        if_none_match=joined("If-None-Match"),
        if_modified_since=request.headers.get("If-Modified-Since"),
        if_unmodified_since=request.headers.get("If-Unmodified-Since"),
        if_range=request.headers.get("If-Range"),
    )


def validator_headers(video: VideoFile, max_age: int) -> dict[str, str]:
    return {
        "ETag": video.validators.etag,
        "Last-Modified": format_http_date(video.validators.last_modified),
        "Cache-Control": f"public, max-age={max_age}",
        "Accept-Ranges": "bytes",
    }


async def stream(request: web.Request) -> web.StreamResponse:
    video_id = parse_video_id(request.match_info["id"])
    video = None if video_id is None else await load_video_file(request.app, video_id)
    if video is None:
        return error_response(404, "not_found", "No such video")
    headers = validator_headers(video, request.app[CONFIG_KEY].stream_cache_seconds)
    cond = conditions(request)

    decision = evaluate_preconditions(request.method, cond, video.validators)
    if decision is Precondition.NOT_MODIFIED:
        return web.Response(status=304, headers=headers)
    if decision is Precondition.PRECONDITION_FAILED:
        return error_response(412, "precondition_failed", "A precondition did not hold",
                              headers)

    range_header = request.headers.get("Range")
    if range_header is not None and range_applies(request.method, cond, video.validators):
        plan = plan_ranges(range_header, video.size)
    else:
        plan = plan_ranges(None, video.size)
    if plan.outcome is RangeOutcome.UNSATISFIABLE:
        headers["Content-Range"] = f"bytes */{video.size}"
        return error_response(416, "range_not_satisfiable",
                              "None of the requested ranges can be satisfied", headers)

    try:
        # A local open() is one short syscall; files are never rewritten in place.
        fobj = open(video.path, "rb", buffering=0)  # noqa: SIM115, ASYNC230
    except FileNotFoundError:
        request.app[FILE_CACHE_KEY].evict(video_id)  # type: ignore[arg-type]
        return error_response(404, "not_found", "No such video")
    with fobj:
        if plan.outcome is RangeOutcome.FULL:
            response = web.StreamResponse(status=200, headers=headers)
            response.content_type = video.content_type
            response.content_length = video.size
            await send(request, response, fobj, [ByteRange(0, video.size - 1)])
        elif len(plan.ranges) == 1:
            only = plan.ranges[0]
            response = web.StreamResponse(status=206, headers=headers)
            response.headers["Content-Range"] = only.content_range(video.size)
            response.content_type = video.content_type
            response.content_length = only.length
            await send(request, response, fobj, [only])
        else:
            layout = multipart_layout(plan.ranges, video.size, video.content_type,
                                      secrets.token_hex(12))
            response = web.StreamResponse(status=206, headers=headers)
            response.headers["Content-Type"] = layout.content_type
            response.content_length = layout.content_length
            body: list[bytes | ByteRange] = []
            for part_header, part in layout.parts:
                body += [part_header, part]
            body.append(layout.closing)
            await send(request, response, fobj, body)
    return response


async def send(request: web.Request, response: web.StreamResponse, fobj: IO[bytes],
               body: Sequence[bytes | ByteRange]) -> None:
    """Prepare `response` and write `body`: literal bytes, and file ranges by sendfile.

    A client that goes away mid-body (a seeking player does so constantly) is
    normal traffic, not an error worth logging.
    """
    try:
        await response.prepare(request)
        if request.method == "HEAD":
            return
        loop = asyncio.get_running_loop()
        for piece in body:
            if isinstance(piece, bytes):
                await response.write(piece)
                continue
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("client went away")
            await loop.sendfile(transport, fobj, piece.start, piece.length)
        await response.write_eof()
    except (ConnectionError, RuntimeError) as exc:
        transport = request.transport
        # asyncio raises RuntimeError for a sendfile on a transport that is closing.
        if isinstance(exc, RuntimeError) and transport is not None \
                and not transport.is_closing():
            raise
        log.debug("client left during %s: %s", request.path, exc)
        if transport is not None:
            transport.close()


def _on_changed(cache: VideoFileCache, _channel: str, data: bytes) -> None:
    video_id = parse_video_id(data.decode("ascii", "replace"))
    if video_id is not None:
        cache.evict(video_id)


async def file_cache_ctx(app: web.Application) -> AsyncIterator[None]:
    cache = VideoFileCache()
    app[FILE_CACHE_KEY] = cache
    bus = app[BUS_KEY]
    bus.on(bus.key(INVALIDATE_CHANNEL), lambda ch, data: _on_changed(cache, ch, data))
    yield


async def announce_change(app: web.Application, video_id: int) -> None:
    """Evict `video_id` here and, through Redis, in every other process."""
    app[FILE_CACHE_KEY].evict(video_id)
    bus = app[BUS_KEY]
    await bus.publish(bus.key(INVALIDATE_CHANNEL), str(video_id))


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(file_cache_ctx)
    app.router.add_route("GET", "/videos/{id}/stream", stream, name="stream")
    app.router.add_route("HEAD", "/videos/{id}/stream", stream)
