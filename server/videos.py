"""Upload, list, read and delete videos."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles
from aiohttp import BodyPartReader, ClientError, web
from aiohttp.http_exceptions import HttpProcessingError

from . import db
from .auth import authenticated_user
from .errors import ApiError
from .keys import CONFIG_KEY, QUERIES_KEY
from .media import SNIFF_BYTES, probe_duration, sniff_container
from .streaming import announce_change, parse_video_id, storage_path
from .validation import invalid, positive_int
from .views import current_views

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

CHUNK = 256 * 1024
TEXT_FIELD_LIMIT = 64 * 1024
# Slack for multipart boundaries and the text fields around the file.
MULTIPART_OVERHEAD = 1024 * 1024
TEMP_PREFIX = ".upload-"
STALE_TEMP_SECONDS = 24 * 3600
MAX_TITLE = 200
MAX_DESCRIPTION = 5000


def video_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "title": row["title"],
        "description": row["description"],
        "author_id": row["author_id"],
        "author_name": row["author_name"],
        "size": row["size"],
        "content_type": row["content_type"],
        "duration": row["duration"],
        "views": row["views"],
        "created_at": row["created_at"].isoformat(),
        "stream_url": f"/videos/{row['id']}/stream",
    }


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
        await _unlink(temp_path)
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


async def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        await asyncio.to_thread(path.unlink)


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
            await _unlink(staged.temp_path)
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


def _check_fields(fields: dict[str, str]) -> tuple[str, str]:
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


@routes.post("/videos/upload", name="upload")
async def upload(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    config = request.app[CONFIG_KEY]
    if not request.content_type.startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "Send the video as multipart/form-data")
    declared = request.content_length
    if declared is not None and declared > config.max_upload_bytes + MULTIPART_OVERHEAD:
        raise _too_large(config.max_upload_bytes)

    fields, staged = await _read_upload(request)
    final_path: Path | None = None
    try:
        title, description = _check_fields(fields)
        duration = await probe_duration(staged.temp_path)
        storage_key = f"{secrets.token_hex(16)}.{staged.extension}"
        final_path = storage_path(config.storage_dir, storage_key)
        async with db.cursor(request.app) as cur, cur.begin():
            row = await db.fetch_one(cur, request.app[QUERIES_KEY]["insert_video"], {
                "author_id": user_id, "title": title, "description": description,
                "size": staged.size, "content_type": staged.content_type,
                "storage_key": storage_key, "duration": duration,
            })
            # Renamed inside the transaction: if the commit fails, the file is
            # removed below and nothing is left behind.
            await asyncio.to_thread(os.replace, staged.temp_path, final_path)
    except BaseException:
        await _unlink(staged.temp_path)
        if final_path is not None:
            await _unlink(final_path)
        raise
    assert row is not None
    await announce_change(request.app, row["id"])
    return web.json_response(video_json(row), status=201)


@routes.get("/videos", name="videos")
async def list_videos(request: web.Request) -> web.Response:
    limit = positive_int(request.query.get("limit"), "limit", default=20, maximum=100)
    cursor = request.query.get("cursor")
    before = positive_int(cursor, "cursor") if cursor else None
    async with db.cursor(request.app) as cur:
        rows = await db.fetch_all(cur, request.app[QUERIES_KEY]["list_videos"],
                                  {"before": before, "limit": limit})
    items = [video_json(r) for r in await with_current_views(request.app, rows)]
    next_cursor = str(rows[-1]["id"]) if len(rows) == limit else None
    return web.json_response({"items": items, "next_cursor": next_cursor})


async def fetch_video(app: web.Application, raw_id: str) -> dict[str, Any]:
    video_id = parse_video_id(raw_id)
    row = None
    if video_id is not None:
        async with db.cursor(app) as cur:
            row = await db.fetch_one(cur, app[QUERIES_KEY]["video_by_id"], {"id": video_id})
    if row is None:
        raise ApiError(404, "not_found", "No such video")
    return row


async def with_current_views(app: web.Application,
                             rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with `views` including views counted but not yet flushed."""
    totals = await current_views(app, [r["id"] for r in rows],
                                 {r["id"]: r["views"] for r in rows})
    return [{**r, "views": totals[r["id"]]} for r in rows]


@routes.get("/videos/{id}", name="video")
async def get_video(request: web.Request) -> web.Response:
    row = await fetch_video(request.app, request.match_info["id"])
    [row] = await with_current_views(request.app, [row])
    return web.json_response(video_json(row))


@routes.delete("/videos/{id}", name="delete_video")
async def delete_video(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    video_id = parse_video_id(request.match_info["id"])
    if video_id is None:
        raise ApiError(404, "not_found", "No such video")
    queries = request.app[QUERIES_KEY]
    async with db.cursor(request.app) as cur, cur.begin():
        owner = await db.fetch_one(cur, queries["lock_video_author"], {"id": video_id})
        if owner is None:
            raise ApiError(404, "not_found", "No such video")
        if owner["author_id"] != user_id:
            raise ApiError(403, "forbidden", "Only the author can delete this video")
        deleted = await db.fetch_one(cur, queries["delete_video"], {"id": video_id})
    assert deleted is not None
    await announce_change(request.app, video_id)
    await _unlink(storage_path(request.app[CONFIG_KEY].storage_dir, deleted["storage_key"]))
    return web.Response(status=204)


def _sweep_stale_uploads(storage_dir: Path) -> None:
    cutoff = time.time() - STALE_TEMP_SECONDS
    for path in storage_dir.glob(f"{TEMP_PREFIX}*.part"):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                path.unlink()


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    storage_dir = app[CONFIG_KEY].storage_dir
    await asyncio.to_thread(storage_dir.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(_sweep_stale_uploads, storage_dir)
    yield


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(storage_ctx)
    app.add_routes(routes)
