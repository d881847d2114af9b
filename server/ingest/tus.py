"""Resumable uploads: the tus 1.0 protocol on /uploads, as tusd serves it.

Extensions: creation, creation-with-upload, termination, expiration and checksum
(sha1, md5, sha256, sha512). Every request but OPTIONS needs `Tus-Resumable:
1.0.0` (412 otherwise) and a Bearer access token; an upload is its creator's
alone (404 for anyone else).

- `OPTIONS /uploads[/{id}]`: 200 with Tus-Version, Tus-Extension, Tus-Max-Size
  (MAX_UPLOAD_BYTES) and Tus-Checksum-Algorithm; also the CORS preflight.
- `POST /uploads` with Upload-Length and Upload-Metadata (base64 `title`,
  `description`, `filename`): 201 with `Location: /uploads/{id}` (a path: both
  tus-js-client and tuspy resolve it against the URL they posted to, and no Host
  header is trusted to build it) and Upload-Expires. A body sent as
  application/offset+octet-stream is the first chunk (creation-with-upload).
  Each creation counts against RATE_LIMIT_UPLOAD, per account and per address,
  as multipart uploads do: past it, 429 with Retry-After (and the tus headers).
- `HEAD /uploads/{id}`: Upload-Offset, Upload-Length, Upload-Metadata,
  `Cache-Control: no-store`.
- `PATCH /uploads/{id}`: application/offset+octet-stream at Upload-Offset (409
  unless it is the current offset); 204 with the new Upload-Offset. 413 past the
  upload's length, 423 while another request writes the upload, 460 when the
  body fails its Upload-Checksum (the body is discarded).
- `DELETE /uploads/{id}`: 204; the bytes are removed.

When the last byte arrives the file is sniffed like a multipart upload (415 and
the upload removed if it is not a video) and becomes a video in state
`processing`. The answer names it in `Tubelet-Video-Id`, and so does every later
HEAD or PATCH of the finished upload, until it expires. If the media store
fails then (503), the upload stays complete on this node's disk and the next
HEAD or PATCH (an empty one at the final offset) finishes it. Unfinished uploads
are kept on the disk of the node that took them (see tus_store), and expire
UPLOAD_EXPIRY seconds after their last bytes arrived.

CORS: pages of origins in ALLOWED_ORIGINS may use all of it; the tus headers are
exposed to them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from server.accounts.auth import authenticated_user
from server.core.errors import ApiError, Unavailable
from server.core.keys import CONFIG_KEY, DB_KEY
from server.core.loops import run_every, stop
from server.core.storage import StorageUnavailable

from .tus_rules import (
    OFFSET_CONTENT_TYPE,
    TUS_VERSION,
    VIDEO_ID_HEADER,
    Checksum,
    bad_header,
    check_tus_resumable,
    cors_headers,
    discovery_headers,
    http_date,
    parse_checksum,
    parse_integer,
    parse_metadata,
    parse_upload_id,
    video_fields,
)
from .tus_store import Held, TusStore, Upload, UploadNotFound, offset_mismatch
from .upload import StagedFile, check_fields, count_upload, create_video

routes = web.RouteTableDef()

TUS_KEY = web.AppKey("tus", TusStore)
TUS_PATH = "/uploads"
# Sweeps run often enough that an upload outlives its expiry by at most a quarter of it.
MAX_SWEEP_EVERY = 600.0
METHOD_OVERRIDES = frozenset({"PATCH", "DELETE", "HEAD"})


def _store(request: web.Request) -> TusStore:
    return request.app[TUS_KEY]


def _begin(request: web.Request) -> int:
    """The checks every tus request but OPTIONS starts with; the caller's user id."""
    check_tus_resumable(request.headers.get("Tus-Resumable"))
    return authenticated_user(request)


def _upload_id(request: web.Request) -> str:
    upload_id = parse_upload_id(request.match_info["id"])
    if upload_id is None:
        raise UploadNotFound()
    return upload_id


def _state(upload: Upload) -> dict[str, str]:
    """Where an upload stands, as PATCH and HEAD answer it."""
    headers = {"Upload-Offset": str(upload.received)}
    if upload.finished:
        if upload.video_id is not None:
            headers[VIDEO_ID_HEADER] = str(upload.video_id)
    else:
        headers["Upload-Expires"] = http_date(upload.expires_at)
    return headers


def _check_body_type(request: web.Request) -> None:
    if request.content_type != OFFSET_CONTENT_TYPE:
        raise ApiError(415, "unsupported_media_type",
                       f"Send upload data as {OFFSET_CONTENT_TYPE}")


def _too_long(upload_length: int) -> ApiError:
    return ApiError(413, "payload_too_large",
                    f"The body goes past the upload's length of {upload_length} bytes",
                    {"Connection": "close"})


async def _write(request: web.Request, held: Held, checksum: Checksum | None) -> None:
    """Take the request body into the upload, and finish it once complete."""
    store = _store(request)
    upload = held.upload
    if not upload.complete:
        declared = request.content_length
        if declared is not None and upload.received + declared > upload.length:
            raise _too_long(upload.length)
        await store.receive(held, request.content, checksum)
    if held.durable == upload.length and not upload.finished:
        await _finish(store, held)


async def _finish(store: TusStore, held: Held) -> None:
    try:
        await store.finish(held)
    except StorageUnavailable:
        # The bytes are kept: a later HEAD or PATCH finishes the upload.
        raise Unavailable("The video cannot be stored right now; the upload is kept, "
                          "ask for it with HEAD in a moment") from None


@routes.options(TUS_PATH)
@routes.options(TUS_PATH + "/{id}")
async def discover(request: web.Request) -> web.Response:
    # Also every CORS preflight: _tus_headers adds what the origin may use.
    return web.Response(status=200,
                        headers=discovery_headers(request.app[CONFIG_KEY].max_upload_bytes))


@routes.post(TUS_PATH)
async def create(request: web.Request) -> web.Response:
    user_id = _begin(request)
    max_bytes = request.app[CONFIG_KEY].max_upload_bytes
    if "Upload-Concat" in request.headers:
        raise bad_header("Upload-Concat (concatenation) is not supported")
    if "Upload-Length" not in request.headers and "Upload-Defer-Length" in request.headers:
        raise bad_header("Upload-Defer-Length is not supported; send Upload-Length")
    length = parse_integer(request.headers.get("Upload-Length"), "Upload-Length")
    if length > max_bytes:
        raise ApiError(413, "payload_too_large",
                       f"The file is larger than the limit of {max_bytes} bytes")
    if length == 0:
        raise ApiError(415, "unsupported_media_type", "An empty file is not a video")
    raw_metadata = request.headers.get("Upload-Metadata", "")
    fields, filename = video_fields(parse_metadata(raw_metadata))
    title, description = check_fields(fields)
    with_body = request.body_exists
    checksum = None
    if with_body:
        _check_body_type(request)
        checksum = parse_checksum(request.headers.get("Upload-Checksum"))
        declared = request.content_length
        if declared is not None and declared > length:
            raise _too_long(length)
    await count_upload(request, user_id)

    store = _store(request)
    upload, lease = await store.create(user_id, length, raw_metadata.strip(), title,
                                       description, filename, leased=with_body)
    location = {"Location": f"{TUS_PATH}/{upload.id}"}
    if lease is not None:
        try:
            async with store.hold(upload.id, user_id, created=(upload, lease)) as held:
                await _write(request, held, checksum)
        except ApiError as exc:
            # The upload exists: the client may resume it from what HEAD reports.
            if exc.status != 415:
                exc.headers.update(location)
            raise
    return web.Response(status=201, headers={**location, **_state(upload)})


@routes.route("HEAD", TUS_PATH + "/{id}")
async def head(request: web.Request) -> web.Response:
    user_id = _begin(request)
    upload_id = _upload_id(request)
    store = _store(request)
    upload = await store.get(upload_id, user_id)
    if upload.complete and not upload.finished:
        # A finish cut short (a crash, an outage): done now, once.
        async with store.hold(upload_id, user_id) as held:
            if held.upload.complete and not held.upload.finished:
                await _finish(store, held)
        upload = held.upload
    headers = {**_state(upload), "Upload-Length": str(upload.length),
               "Cache-Control": "no-store"}
    if upload.metadata:
        headers["Upload-Metadata"] = upload.metadata
    return web.Response(status=200, headers=headers)


@routes.patch(TUS_PATH + "/{id}")
async def patch(request: web.Request) -> web.Response:
    user_id = _begin(request)
    upload_id = _upload_id(request)
    _check_body_type(request)
    offset = parse_integer(request.headers.get("Upload-Offset"), "Upload-Offset")
    checksum = parse_checksum(request.headers.get("Upload-Checksum"))
    store = _store(request)
    async with store.hold(upload_id, user_id) as held:
        if offset != held.upload.received:
            raise offset_mismatch()
        await _write(request, held, checksum)
    return web.Response(status=204, headers=_state(held.upload))


@routes.delete(TUS_PATH + "/{id}")
async def terminate(request: web.Request) -> web.Response:
    user_id = _begin(request)
    await _store(request).terminate(_upload_id(request), user_id)
    return web.Response(status=204)


@routes.post(TUS_PATH + "/{id}")
async def overridden(request: web.Request) -> web.StreamResponse:
    """POST with X-HTTP-Method-Override, for clients behind proxies that drop PATCH."""
    method = request.headers.get("X-HTTP-Method-Override", "").upper()
    if method not in METHOD_OVERRIDES:
        raise ApiError(405, "method_not_allowed",
                       "POST an upload only with X-HTTP-Method-Override: PATCH, DELETE or HEAD",
                       {"Allow": "HEAD, PATCH, DELETE, OPTIONS"})
    handler = {"PATCH": patch, "DELETE": terminate, "HEAD": head}[method]
    return await handler(request)


def _is_tus(path: str) -> bool:
    return path == TUS_PATH or path.startswith(TUS_PATH + "/")


async def _tus_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: Tus-Resumable and CORS on every /uploads answer, errors too."""
    if not _is_tus(request.path):
        return
    response.headers["Tus-Resumable"] = TUS_VERSION
    preflight = request.method == "OPTIONS" \
        and "Access-Control-Request-Method" in request.headers
    response.headers.update(cors_headers(request.headers.get("Origin"),
                                         request.app[CONFIG_KEY].allowed_origins,
                                         preflight=preflight))


def sweep_interval(expiry: float) -> float:
    return max(1.0, min(MAX_SWEEP_EVERY, expiry / 4))


async def tus_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]

    async def make_video(author_id: int, title: str, description: str, staged: StagedFile,
                         storage_key: str, before_insert: Callable[[], None]) -> dict[str, Any]:
        return await create_video(app, author_id, title, description, staged, storage_key,
                                  before_insert)

    store = TusStore(app[DB_KEY], config.storage_dir, config.upload_expiry, make_video)
    app[TUS_KEY] = store
    # The first sweep runs at start-up and finds what expired while the server was down.
    sweep = run_every(sweep_interval(config.upload_expiry), store.sweep, "tus-upload-sweep")
    try:
        yield
    finally:
        await stop(sweep)


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(tus_ctx)
    app.on_response_prepare.append(_tus_headers)
    app.add_routes(routes)
