"""GET/HEAD /videos/{id}/stream: RFC 9110 conditional and byte-range delivery.

The handler is a straight line over the pure decisions in `ranges`; bodies go
out with sendfile. File metadata is cached per process so a seeking player's
many requests cost no database round trip, and the usual request (a GET of one
range or the whole file, no conditional headers) is written straight to the
socket (`sendfile.send_direct`); bench/NOTES.md has the measurements behind the
shape of the hot path.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from aiohttp import HttpVersion11, web

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
from .sendfile import (
    HttpDate,
    SentResponse,
    abandon,
    cork,
    head_block,
    header_fields,
    plain_socket,
    send_direct,
    sendfile,
)

INVALIDATE_CHANNEL = "videos:changed"


@dataclass(frozen=True, slots=True)
class VideoFile:
    path: Path
    size: int
    content_type: str
    validators: Validators
    # ETag, Last-Modified, Cache-Control, Accept-Ranges: formatted once, not per request.
    headers: Mapping[str, str]
    # The same with Content-Type and Server, as header lines for a direct response.
    fields: bytes


def video_file(path: Path, size: int, content_type: str, validators: Validators,
               max_age: int) -> VideoFile:
    headers = MappingProxyType({
        "ETag": validators.etag,
        "Last-Modified": format_http_date(validators.last_modified),
        "Cache-Control": f"public, max-age={max_age}",
        "Accept-Ranges": "bytes",
    })
    fields = header_fields({**headers, "Content-Type": content_type})
    return VideoFile(path, size, content_type, validators, headers, fields)


class OpenFile:
    """A read-only descriptor of a stored file, shared by the requests that stream it.

    The cache holds one reference and every request holds one while it sends, so
    an eviction never closes the descriptor under a sendfile in flight. A file
    unlinked meanwhile stays readable through it, which is what those requests want.
    """

    __slots__ = ("fd", "refs", "checked")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refs = 1
        self.checked = time.monotonic()

    def acquire(self) -> OpenFile:
        self.refs += 1
        return self

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            os.close(self.fd)


class VideoFileCache:
    """Per-process LRU of stream metadata and open files; misses are remembered briefly.

    Uploads and deletes publish the video id on Redis so every process evicts it.
    """

    def __init__(self, capacity: int = 8192, negative_ttl: float = 2.0,
                 open_files: int = 256, recheck: float = 1.0) -> None:
        self.capacity = capacity
        self.negative_ttl = negative_ttl
        self.open_files = open_files
        self.recheck = recheck
        self._hits: OrderedDict[int, VideoFile] = OrderedDict()
        self._misses: dict[int, float] = {}
        self._loading: dict[int, asyncio.Future[VideoFile | None]] = {}
        self._files: OrderedDict[int, OpenFile] = OrderedDict()
        self.date = HttpDate()

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
        self._close(video_id)

    def open(self, video_id: int, video: VideoFile) -> OpenFile:
        """The video's file, referenced for the caller, who must release() it.

        An open() and close() per request are a measurable share of a small
        range request, so descriptors are kept. Deletes evict them; should an
        eviction be missed, a kept descriptor whose file was unlinked counts as
        gone, as a fresh open() would, once its `recheck` seconds are up.
        """
        handle = self._files.get(video_id)
        if handle is not None:
            now = time.monotonic()
            if now - handle.checked >= self.recheck:
                if not os.fstat(handle.fd).st_nlink:
                    self._close(video_id)
                    raise FileNotFoundError(str(video.path))
                handle.checked = now
            self._files.move_to_end(video_id)
            return handle.acquire()
        handle = OpenFile(os.open(video.path, os.O_RDONLY))
        self._files[video_id] = handle
        while len(self._files) > self.open_files:
            self._files.popitem(last=False)[1].release()
        return handle.acquire()

    def open_present(self, video_id: int, video: VideoFile) -> OpenFile | None:
        """open(), or None with the video forgotten when its file is gone.

        Files are never rewritten in place: a kept descriptor reads the same bytes.
        """
        try:
            return self.open(video_id, video)
        except FileNotFoundError:
            self.evict(video_id)
            return None

    def close(self) -> None:
        while self._files:
            self._files.popitem()[1].release()

    def _close(self, video_id: int) -> None:
        handle = self._files.pop(video_id, None)
        if handle is not None:
            handle.release()

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
        config = app[CONFIG_KEY]
        value = None if row is None else video_file(
            path=storage_path(config.storage_dir, row["storage_key"]),
            size=row["size"],
            content_type=row["content_type"],
            validators=Validators(etag=etag_for(row["storage_key"]),
                                  last_modified=int(row["created"])),
            max_age=config.stream_cache_seconds,
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
    """A video id in its one spelling: ASCII digits, no sign, no leading zero."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18 or raw[0] == "0":
        return None
    return int(raw)


CONDITIONAL_HEADERS = ("If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since",
                       "If-Range")
NO_CONDITIONS = Conditions()


def conditions(request: web.Request) -> Conditions:
    headers = request.headers
    for name in CONDITIONAL_HEADERS:
        if name in headers:
            break
    else:
        return NO_CONDITIONS  # the usual request: five look-ups and nothing built

    def joined(name: str) -> str | None:
        values = headers.getall(name, ())
        return ", ".join(values) if values else None

    return Conditions(
        if_match=joined("If-Match"),
        if_none_match=joined("If-None-Match"),
        if_modified_since=headers.get("If-Modified-Since"),
        if_unmodified_since=headers.get("If-Unmodified-Since"),
        if_range=headers.get("If-Range"),
    )


async def stream(request: web.Request) -> web.StreamResponse:
    video_id = parse_video_id(request.match_info["id"])
    video = None if video_id is None else await load_video_file(request.app, video_id)
    if video_id is None or video is None:
        return error_response(404, "not_found", "No such video")
    cond = conditions(request)
    if cond is NO_CONDITIONS and request.method == "GET" and request.version == HttpVersion11:
        span = plain_span(request.headers.get("Range"), video.size)
        sock = None if span is None else plain_socket(request.transport)
        if span is not None and sock is not None:
            first, last, partial = span
            return await stream_direct(request, video_id, video, sock, first, last, partial)
    return await stream_general(request, video_id, video, cond)


async def stream_direct(request: web.Request, video_id: int, video: VideoFile, sock: object,
                        first: int, last: int, partial: bool) -> web.StreamResponse:
    """The usual request, one range or the whole file, written straight to the socket."""
    cache = request.app[FILE_CACHE_KEY]
    file = cache.open_present(video_id, video)
    if file is None:
        return error_response(404, "not_found", "No such video")
    keep_alive = request.keep_alive
    head = head_block(first, last, video.size, partial, video.fields, cache.date.now(),
                      keep_alive)
    try:
        sent = await send_direct(request, sock, head, file.fd, first, last - first + 1)
    finally:
        file.release()
    return SentResponse(206 if partial else 200, last - first + 1, keep_alive and sent)


def uncacheable(headers: Mapping[str, str]) -> dict[str, str]:
    """The file's headers for an error answer: no Cache-Control, so no cache keeps it."""
    return {name: value for name, value in headers.items() if name != "Cache-Control"}


async def stream_general(request: web.Request, video_id: int, video: VideoFile,
                         cond: Conditions) -> web.StreamResponse:
    """Every other request: conditionals, HEAD, range lists, HTTP/1.0, TLS."""
    headers = video.headers
    decision = evaluate_preconditions(request.method, cond, video.validators)
    if decision is Precondition.NOT_MODIFIED:
        return web.Response(status=304, headers=headers)
    if decision is Precondition.PRECONDITION_FAILED:
        return error_response(412, "precondition_failed", "A precondition did not hold",
                              uncacheable(headers))

    range_header = request.headers.get("Range")
    if range_header is not None and range_applies(request.method, cond, video.validators):
        plan = plan_ranges(range_header, video.size)
    else:
        plan = plan_ranges(None, video.size)
    if plan.outcome is RangeOutcome.UNSATISFIABLE:
        return error_response(416, "range_not_satisfiable",
                              "None of the requested ranges can be satisfied",
                              {**uncacheable(headers), "Content-Range": f"bytes */{video.size}"})

    file = request.app[FILE_CACHE_KEY].open_present(video_id, video)
    if file is None:
        return error_response(404, "not_found", "No such video")
    try:
        if plan.outcome is RangeOutcome.FULL:
            response = web.StreamResponse(status=200, headers={
                **headers, "Content-Type": video.content_type,
                "Content-Length": str(video.size)})
            await send(request, response, file.fd, [ByteRange(0, video.size - 1)])
        elif len(plan.ranges) == 1:
            only = plan.ranges[0]
            response = web.StreamResponse(status=206, headers={
                **headers, "Content-Range": only.content_range(video.size),
                "Content-Type": video.content_type, "Content-Length": str(only.length)})
            await send(request, response, file.fd, [only])
        else:
            layout = multipart_layout(plan.ranges, video.size, video.content_type,
                                      secrets.token_hex(12))
            response = web.StreamResponse(status=206, headers={
                **headers, "Content-Type": layout.content_type,
                "Content-Length": str(layout.content_length)})
            body: list[bytes | ByteRange] = []
            for part_header, part in layout.parts:
                body += [part_header, part]
            body.append(layout.closing)
            await send(request, response, file.fd, body)
    finally:
        file.release()
    return response


# The form players send, "bytes=first-" or "bytes=first-last"; plan_ranges has the rest.
_SIMPLE_RANGE_RE = re.compile(r"bytes=([0-9]{1,15})-([0-9]{0,15})")


def plain_span(range_header: str | None, size: int) -> tuple[int, int, bool] | None:
    """(first, last, partial) for a whole-file GET or one plain satisfiable range.

    None for anything else (empty files, suffix ranges, lists, bad syntax), which
    plan_ranges answers; where both answer, they agree (a test checks).
    """
    if range_header is None:
        return (0, size - 1, False) if size else None
    m = _SIMPLE_RANGE_RE.fullmatch(range_header)
    if m is None:
        return None
    first, last = int(m[1]), m[2]
    end = min(int(last), size - 1) if last else size - 1
    if first > end:
        return None
    return first, end, True


async def send(request: web.Request, response: web.StreamResponse, fd: int,
               body: Sequence[bytes | ByteRange]) -> None:
    """Prepare `response` and write `body`: literal bytes, and file ranges by sendfile.

    The socket is corked meanwhile, so the header block and a small body leave
    in one segment instead of two.
    """
    transport = request.transport
    sock = plain_socket(transport)
    cork(sock, True)
    try:
        await response.prepare(request)
        if request.method == "HEAD":
            return
        for piece in body:
            if isinstance(piece, bytes):
                await response.write(piece)
            else:
                await sendfile(transport, sock, fd, piece.start, piece.length)  # type: ignore[arg-type]
        await response.write_eof()
    except Exception as exc:
        if not response.prepared:
            raise  # nothing was sent: the error middleware answers
        abandon(request, exc)
    finally:
        cork(sock, False)


def _on_changed(cache: VideoFileCache, _channel: str, data: bytes) -> None:
    video_id = parse_video_id(data.decode("ascii", "replace"))
    if video_id is not None:
        cache.evict(video_id)


async def file_cache_ctx(app: web.Application) -> AsyncIterator[None]:
    cache = VideoFileCache()
    app[FILE_CACHE_KEY] = cache
    bus = app[BUS_KEY]
    bus.on(bus.key(INVALIDATE_CHANNEL), lambda ch, data: _on_changed(cache, ch, data))
    try:
        yield
    finally:
        cache.close()


async def announce_change(app: web.Application, video_id: int) -> None:
    """Evict `video_id` here and, through Redis, in every other process."""
    app[FILE_CACHE_KEY].evict(video_id)
    bus = app[BUS_KEY]
    await bus.publish(bus.key(INVALIDATE_CHANNEL), str(video_id))


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(file_cache_ctx)
    app.router.add_route("GET", "/videos/{id}/stream", stream, name="stream")
    app.router.add_route("HEAD", "/videos/{id}/stream", stream)
