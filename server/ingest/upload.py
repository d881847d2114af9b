"""POST /videos/upload: a multipart upload streamed to disk, sniffed, and stored.

The body is staged in STORAGE_DIR (with S3, the node's scratch disk) and goes to
the media store once whole and sniffed (Catalog.create).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles
from aiohttp import BodyPartReader, ClientError, web
from aiohttp.http_exceptions import HttpProcessingError

from server.accounts.auth import authenticated_user
from server.catalog.handlers import CATALOG_KEY
from server.catalog.records import video_json
from server.core.clients import hash_secret
from server.core.errors import ApiError
from server.core.keys import CONFIG_KEY, REDIS_KEY
from server.core.keyspace import Keyspace
from server.core.loops import run_every, stop
from server.core.ratelimit import ActionThrottle, RateLimiter
from server.core.storage import new_storage_key, unlink
from server.core.validation import invalid

from .media import SNIFF_BYTES, probe_duration, sniff_container

routes = web.RouteTableDef()
UPLOAD_THROTTLE_KEY = web.AppKey("upload_throttle", ActionThrottle)

CHUNK = 256 * 1024
TEXT_FIELD_LIMIT = 64 * 1024
# Slack for multipart boundaries and the text fields around the file.
MULTIPART_OVERHEAD = 1024 * 1024
TEMP_PREFIX = ".upload-"
STALE_TEMP_SECONDS = 24 * 3600
STALE_TEMP_SWEEP_EVERY = 3600.0
MAX_TITLE = 200
MAX_DESCRIPTION = 5000


@dataclass(slots=True)
class StagedFile:
    temp_path: Path
    size: int
    content_type: str
    extension: str


async def _read_text(part: BodyPartReader, name: str, limit: int) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(8192):
        data += chunk
        if len(data) > limit:
            raise invalid(f"'{name}' is too long")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(f"'{name}' must be UTF-8 text") from None


async def _stage_file(part: BodyPartReader, storage_dir: Path, max_bytes: int) -> StagedFile:
    """Stream one file part to a temporary file, checking magic bytes and size."""
    temp_path = storage_dir / f"{TEMP_PREFIX}{secrets.token_hex(16)}.part"
    size = 0
    head = b""
    sniffed: tuple[str, str] | None = None
    try:
        async with aiofiles.open(temp_path, "xb") as out:
            while chunk := await part.read_chunk(CHUNK):
                if sniffed is None:
                    head += chunk
                    if len(head) < SNIFF_BYTES:
                        continue
                    sniffed = _sniff_or_reject(head)
                    chunk, head = head, b""
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(max_bytes)
                await out.write(chunk)
            if sniffed is None:
                sniffed = _sniff_or_reject(head)
                size = len(head)
                if size > max_bytes:
                    raise _too_large(max_bytes)
                await out.write(head)
            await out.flush()
            await asyncio.to_thread(os.fsync, out.fileno())
    except BaseException:
        await unlink(temp_path)
        raise
    return StagedFile(temp_path, size, *sniffed)


def _sniff_or_reject(head: bytes) -> tuple[str, str]:
    sniffed = sniff_container(head)
    if sniffed is None:
        raise ApiError(415, "unsupported_media_type",
                       "The file is not a supported video (MP4, MOV, WebM, Matroska or Ogg)")
    return sniffed


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "payload_too_large",
                    f"The file is larger than the limit of {max_bytes} bytes",
                    {"Connection": "close"})


async def _read_upload(request: web.Request) -> tuple[dict[str, str], StagedFile]:
    config = request.app[CONFIG_KEY]
    fields: dict[str, str] = {}
    staged: StagedFile | None = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise invalid("Nested multipart bodies are not accepted")
            if part.name == "file":
                if staged is not None:
                    raise invalid("Send exactly one 'file'")
                staged = await _stage_file(part, config.storage_dir, config.max_upload_bytes)
            elif part.name in ("title", "description"):
                if part.name in fields:
                    raise invalid(f"'{part.name}' was sent twice")
                fields[part.name] = await _read_text(part, part.name, TEXT_FIELD_LIMIT)
            else:
                await _read_text(part, "field", TEXT_FIELD_LIMIT)
    except BaseException as exc:
        if staged is not None:
            await unlink(staged.temp_path)
        if isinstance(exc, ApiError | asyncio.CancelledError):
            raise
        if isinstance(exc, ClientError | ConnectionError | asyncio.IncompleteReadError):
            raise ApiError(400, "upload_incomplete", "The upload ended early") from None
        if isinstance(exc, ValueError | AssertionError | RuntimeError | HttpProcessingError):
            raise ApiError(400, "malformed_multipart",
                           "The body is not valid multipart/form-data") from None
        raise
    if staged is None:
        raise invalid("'file' is required")
    return fields, staged


def check_fields(fields: dict[str, str]) -> tuple[str, str]:
    title = fields.get("title", "").strip()
    if not title:
        raise invalid("'title' is required")
    if len(title) > MAX_TITLE:
        raise invalid(f"'title' must be at most {MAX_TITLE} characters")
    description = fields.get("description", "").strip()
    if len(description) > MAX_DESCRIPTION:
        raise invalid(f"'description' must be at most {MAX_DESCRIPTION} characters")
    if "\x00" in title or "\x00" in description:
        raise invalid("Text fields must not contain NUL characters")
    return title, description


async def count_upload(request: web.Request, user_id: int) -> None:
    """Count an upload begun (multipart or tus), per account and per address
    (RATE_LIMIT_UPLOAD), or raise RateLimited (429 with Retry-After). Counted once
    its headers pass, before any of the body is read."""
    await request.app[UPLOAD_THROTTLE_KEY].hit(request, "upload", user_id,
                                               request.app[CONFIG_KEY].rate_limit_upload)


@routes.post("/videos/upload", name="upload")
async def upload(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    config = request.app[CONFIG_KEY]
    if not request.content_type.startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "Send the video as multipart/form-data")
    declared = request.content_length
    if declared is not None and declared > config.max_upload_bytes + MULTIPART_OVERHEAD:
        raise _too_large(config.max_upload_bytes)
    await count_upload(request, user_id)

    fields, staged = await _read_upload(request)
    try:
        title, description = check_fields(fields)
    except BaseException:
        await unlink(staged.temp_path)
        raise
    row = await create_video(request.app, user_id, title, description, staged)
    return web.json_response(video_json(row), status=201)


async def create_video(app: web.Application, author_id: int, title: str, description: str,
                       staged: StagedFile, storage_key: str | None = None,
                       before_insert: Callable[[], None] | None = None) -> dict[str, Any]:
    """Turn a staged, sniffed file into a video row; both kinds of upload end here.

    The file is stored under `storage_key` (a fresh one by default) by
    Catalog.create, which runs `before_insert` between storing and inserting;
    if anything fails, the staged file is removed.
    """
    try:
        duration = await probe_duration(staged.temp_path)
        return await app[CATALOG_KEY].create({
            "author_id": author_id, "title": title, "description": description,
            "size": staged.size, "content_type": staged.content_type,
            "storage_key": storage_key or new_storage_key(staged.extension),
            "duration": duration,
        }, staged.temp_path, before_insert)
    except BaseException:
        await unlink(staged.temp_path)
        raise


def _sweep_stale_uploads(storage_dir: Path) -> None:
    cutoff = time.time() - STALE_TEMP_SECONDS
    for path in storage_dir.glob(f"{TEMP_PREFIX}*.part"):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                path.unlink()


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    storage_dir = config.storage_dir
    limiter = RateLimiter(app[REDIS_KEY], Keyspace(config.redis_prefix))
    app[UPLOAD_THROTTLE_KEY] = ActionThrottle(limiter, hash_secret(config.jwt_secret),
                                              config.trusted_proxies)
    await asyncio.to_thread(storage_dir.mkdir, parents=True, exist_ok=True)
    # The first sweep runs at start-up: it finds what a crash left behind.
    sweep = run_every(STALE_TEMP_SWEEP_EVERY,
                      lambda: asyncio.to_thread(_sweep_stale_uploads, storage_dir),
                      "upload-temp-sweep")
    try:
        yield
    finally:
        await stop(sweep)


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(storage_ctx)
    app.add_routes(routes)
