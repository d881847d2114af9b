"""GET/HEAD /videos/{id}/stream: RFC 9110 conditional and byte-range delivery.

The handler is a straight line over the pure decisions in `ranges`; bodies go
out with sendfile. File metadata is cached per process so a seeking player's
many requests cost no database round trip, and the usual request (a GET of one
range or the whole file, no conditional headers) is written straight to the
socket (`sendfile.send_direct`); bench/NOTES.md has the measurements behind the
shape of the hot path. A private video is served the same way once its signed
URL checks out (`signed`), which needs no lookup either; a public one pays one
attribute test.

With S3 storage the file comes from this node's cache; a file not cached yet is
answered by forwarding the requested ranges from the bucket (`remote`) while the
cache fetches it whole in the background. With STREAM_REDIRECT=presigned the
stream answers with a redirect to a presigned bucket URL instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

from aiohttp import HttpVersion11, web
from prometheus_client.metrics_core import Metric

from server.catalog.records import VideoNotFound
from server.core.errors import ApiError
from server.core.http import LANE_KEY
from server.core.ids import parse_video_id
from server.core.keys import CHANGES_KEY, CONFIG_KEY, DB_KEY
from server.core.metrics import METRICS_KEY
from server.storage.keys import NODE_CACHE_KEY, STORE_KEY
from server.storage.store import MediaStore

from . import artifacts, remote
from .answers import answer
from .files import VideoFile, VideoFiles
from .lane import StreamLane
from .ranges import (
    ByteRange,
    Conditions,
    Precondition,
    RangeOutcome,
    evaluate_preconditions,
    plain_span,
    plan_ranges,
    range_applies,
)
from .sendfile import (
    FileBodyResponse,
    SentResponse,
    abandon,
    cork,
    head_block,
    plain_socket,
    send_direct,
    sendfile,
)
from .signed import require_signature

FILES_KEY: web.AppKey[VideoFiles] = web.AppKey("video_files")

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
    files = request.app[FILES_KEY]
    video = None if video_id is None else await files.load(video_id)
    if video_id is None or video is None:
        raise VideoNotFound()
    if video.private:
        require_signature(request, video_id)
    if files.redirect is not None:
        return await remote.redirect(request, files.redirect, video)
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
    cache = request.app[FILES_KEY].cache
    transport = request.transport
    file = cache.open_present(video_id, video, transport)
    if file is None:
        if cache.node_cache is None:
            raise VideoNotFound()
        return await stream_general(request, video_id, video, NO_CONDITIONS)
    if cache.node_cache is not None:
        cache.node_cache.counts.hits += 1
    keep_alive = request.keep_alive
    head = head_block(first, last, video.size, partial, video.fields, cache.date.now(),
                      keep_alive)
    response = SentResponse(206 if partial else 200, keep_alive)
    try:
        await send_direct(request, sock, head, file.fd, first, last - first + 1, response)
    finally:
        file.release(transport)
    # Plain integers on an object at hand: this path has no time for more (counts.py).
    counts = cache.counts
    counts.direct_bytes += response.file_bytes
    if partial:
        counts.single += 1
    else:
        counts.full += 1
    return response


def uncacheable(headers: Mapping[str, str]) -> dict[str, str]:
    """The file's headers for an error answer: no Cache-Control, so no cache keeps it."""
    return {name: value for name, value in headers.items() if name != "Cache-Control"}


async def stream_general(request: web.Request, video_id: int, video: VideoFile,
                         cond: Conditions) -> web.StreamResponse:
    """Every other request: conditionals, HEAD, range lists, HTTP/1.0, TLS."""
    headers = video.headers
    cache = request.app[FILES_KEY].cache
    counts = cache.counts
    decision = evaluate_preconditions(request.method, cond, video.validators)
    if decision is Precondition.NOT_MODIFIED:
        counts.not_modified += 1
        return web.Response(status=304, headers=headers)
    if decision is Precondition.PRECONDITION_FAILED:
        raise ApiError(412, "precondition_failed", "A precondition did not hold",
                       uncacheable(headers))

    range_header = request.headers.get("Range")
    if range_header is not None and range_applies(request.method, cond, video.validators):
        plan = plan_ranges(range_header, video.size)
    else:
        plan = plan_ranges(None, video.size)
    if plan.outcome is RangeOutcome.UNSATISFIABLE:
        counts.unsatisfiable += 1
        raise ApiError(416, "range_not_satisfiable",
                       "None of the requested ranges can be satisfied",
                       {**uncacheable(headers), "Content-Range": f"bytes */{video.size}"})

    planned = answer(plan, video)
    transport = request.transport
    file = cache.open_present(video_id, video, transport)
    if file is None:
        if cache.node_cache is None:
            raise VideoNotFound()
        return await remote.forward(request, video_id, video, planned, cache)
    if cache.node_cache is not None:
        cache.node_cache.counts.hits += 1
    counts.answered(planned.kind)
    response: FileBodyResponse | None = None
    try:
        response = FileBodyResponse(status=planned.status, headers=planned.headers)
        await send(request, response, file.fd, planned.body)
    finally:
        file.release(transport)
        if response is not None:
            counts.general_bytes += response.file_bytes
    return response


async def send(request: web.Request, response: FileBodyResponse, fd: int,
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
                await sendfile(transport, sock, fd, piece.start, piece.length, response)
        await response.write_eof()
    except Exception as exc:
        if not response.prepared:
            raise  # nothing was sent: the error middleware answers
        abandon(request, exc)
    finally:
        cork(sock, False)


async def files_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    node_cache = app[NODE_CACHE_KEY]
    files = VideoFiles(app[DB_KEY], config.storage_dir, config.stream_cache_seconds,
                       min(config.stream_cache_seconds, config.stream_url_ttl),
                       node_cache)
    store: MediaStore = app[STORE_KEY]
    if config.stream_redirect == "presigned":
        files.redirect = remote.Redirects(store, config.stream_cache_seconds,
                                          config.stream_url_ttl)
    app[FILES_KEY] = files
    if files.redirect is None:
        app[LANE_KEY] = StreamLane(files.cache, app.router["stream"], app)
    app[CHANGES_KEY].subscribe(files.changed)
    counts = files.cache.counts

    async def stream_metrics() -> list[Metric]:
        families = counts.families()
        if node_cache is not None:
            families += node_cache.counts.families(node_cache.cached_bytes,
                                                   node_cache.max_bytes)
        return families

    app[METRICS_KEY].add("stream", stream_metrics)
    try:
        yield
    finally:
        await files.close()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(files_ctx)
    app.router.add_route("GET", "/videos/{id}/stream", stream, name="stream")
    app.router.add_route("HEAD", "/videos/{id}/stream", stream)
    artifacts.setup(app)
