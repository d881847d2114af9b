"""Profiles: GET /users/me, GET /users/{id}, PATCH /users/me, PUT /users/me/avatar and
GET /users/{id}/avatar.jpg.

A banned user has no public profile and no avatar while the ban lasts (404).
An avatar is stored in the media store under a fresh random key each time; the
old file goes once the row names the new one. Reads go through this node's
cache when the store is a bucket. The avatar URL carries a version (`?v=`), so a
versioned fetch may be cached for good and a bare one is revalidated.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import ClientError, web

from server.core.config import RateSpec
from server.core.db import Database, fetch_one, refused
from server.core.errors import ApiError, Invalid, NotFound
from server.core.ids import parse_id
from server.core.ratelimit import ActionThrottle
from server.core.storage import new_storage_key
from server.core.validation import clean_text, read_json_object, string_field
from server.storage.cache import NodeCache, read_whole
from server.storage.store import MediaStore

from .auth import UNAUTHORIZED, authenticated_user
from .avatars import MAX_BYTES, ImageRejected, render_avatar
from .standing import UserNotFound

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

NAME_MAX = 50
BIO_MAX = 1000
# Room for surrounding white space that strip() removes.
RAW_SLACK = 200
# Images decoded at once by this process: each may take a few hundred MB.
DECODE_CONCURRENCY = 2
READ_CHUNK = 64 * 1024
VERSION_CHARS = 12
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "public, no-cache"


# --- pure rules --------------------------------------------------------------

def clean_name(value: str) -> str:
    name = clean_text(value, "name", NAME_MAX, multiline=False)
    if not name:
        raise Invalid("'name' must not be empty")
    return name


def clean_bio(value: str) -> str:
    return clean_text(value, "bio", BIO_MAX, multiline=True)


def avatar_version(key: str) -> str:
    return key[:VERSION_CHARS]


def avatar_url(user_id: int, key: str | None) -> str | None:
    return None if key is None else f"/users/{user_id}/avatar.jpg?v={avatar_version(key)}"


def etag_matches(header: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (weak comparison, or `*`)."""
    if header is None:
        return False
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def user_json(row: dict[str, Any]) -> dict[str, Any]:
    """A user as they see themself."""
    return {
        "id": row["id"],
        "email": row["email"],
        "name": row["name"],
        "created_at": row["created_at"].isoformat(),
        "role": row["role"],
        "bio": row["bio"],
        "avatar_url": avatar_url(row["id"], row["avatar_key"]),
    }


def profile_json(row: dict[str, Any]) -> dict[str, Any]:
    """A user as everyone sees them."""
    return {
        "id": row["id"],
        "name": row["name"],
        "bio": row["bio"],
        "avatar_url": avatar_url(row["id"], row["avatar_key"]),
        "created_at": row["created_at"].isoformat(),
        "subscriber_count": row["subscriber_count"],
        "video_count": row["video_count"],
    }


# --- the service ---------------------------------------------------------------

class Profiles:
    def __init__(self, db: Database, store: MediaStore, cache: NodeCache | None,
                 throttle: ActionThrottle, avatar_limit: RateSpec) -> None:
        self._db = db
        self._store = store
        self._cache = cache
        self._decoding = asyncio.Semaphore(DECODE_CONCURRENCY)
        self._throttle = throttle
        self._avatar_limit = avatar_limit

    async def count_avatar_upload(self, request: web.Request, user_id: int) -> None:
        """Decoding is the costly part of an avatar: uploads share the upload limit's
        allowance, in a bucket of their own. RateLimited (429) past it."""
        await self._throttle.hit(request, "avatar", user_id, self._avatar_limit)

    async def own(self, user_id: int) -> dict[str, Any]:
        row = await self._db.one("user_by_id", {"id": user_id})
        if row is None:
            raise ApiError(401, "invalid_token", "The account no longer exists", UNAUTHORIZED)
        return row

    async def public(self, raw_id: str) -> dict[str, Any]:
        user_id = parse_id(raw_id)
        row = None if user_id is None else await self._db.one("profile_by_id", {"id": user_id})
        if row is None:
            raise UserNotFound()
        return row

    async def update(self, user_id: int, name: str | None, bio: str | None) -> dict[str, Any]:
        async with self._db.transaction() as cur:
            row = await fetch_one(cur, self._db.queries["profile_update"],
                                  {"id": user_id, "name": name, "bio": bio})
        if row is None:
            raise ApiError(401, "invalid_token", "The account no longer exists", UNAUTHORIZED)
        return row

    async def avatar_key(self, raw_id: str) -> str:
        user_id = parse_id(raw_id)
        row = None if user_id is None else await self._db.one("profile_avatar_key",
                                                              {"id": user_id})
        if row is None or row["avatar_key"] is None:
            raise NotFound("This user has no avatar")
        return str(row["avatar_key"])

    async def read_avatar(self, key: str) -> bytes:
        try:
            return await read_whole(self._store, self._cache, key)
        except FileNotFoundError:
            raise NotFound("This user has no avatar") from None

    async def set_avatar(self, user_id: int, upload: bytes) -> dict[str, Any]:
        """Re-encode the upload, store it under a new key, point the row at it, and
        remove the old file after the commit."""
        async with self._decoding:
            try:
                jpeg = await asyncio.to_thread(render_avatar, upload)
            except ImageRejected as exc:
                status = 415 if exc.code == "unsupported_media_type" else 422
                raise ApiError(status, exc.code, exc.message) from None
        key = new_storage_key("jpg")
        queries = self._db.queries
        committing = False
        try:
            # Stored before the transaction: no pooled connection waits on a bucket.
            await self._store.put_bytes(key, jpeg)
            async with self._db.transaction() as cur:
                old = await fetch_one(cur, queries["profile_avatar_for_update"], {"id": user_id})
                if old is None:
                    raise ApiError(401, "invalid_token", "The account no longer exists",
                                   UNAUTHORIZED)
                row = await fetch_one(cur, queries["profile_set_avatar"],
                                      {"id": user_id, "key": key})
                committing = True
        except BaseException as exc:
            if committing and not refused(exc):
                log.warning("avatar of user %d may not have been saved; its file is left "
                            "for the orphan sweep", user_id)
            else:
                await self._remove(key, f"new avatar of user {user_id} not removed")
            raise
        assert row is not None
        if old["avatar_key"] is not None:
            await self._remove(old["avatar_key"], f"old avatar of user {user_id} not removed")
        return row

    async def _remove(self, key: str, what: str) -> None:
        """Delete an avatar no row names; the orphan sweep's if that fails."""
        try:
            await self._store.delete(key)
            if self._cache is not None:
                await self._cache.evict(key)
        except OSError as exc:  # StorageUnavailable is one
            log.warning("%s (%s); the orphan sweep will remove it", what, exc)


PROFILES_KEY: web.AppKey[Profiles] = web.AppKey("profiles", Profiles)


# --- handlers ------------------------------------------------------------------

def _too_large() -> ApiError:
    return ApiError(413, "payload_too_large", f"An avatar may be at most {MAX_BYTES} bytes",
                    {"Connection": "close"})


async def read_capped(request: web.Request, limit: int) -> bytes:
    """The whole body, read in chunks; 413 as soon as it passes `limit` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large()
    body = bytearray()
    try:
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            body += chunk
            if len(body) > limit:
                raise _too_large()
    except (ClientError, asyncio.IncompleteReadError):
        # A body cut short or badly chunked: the client's doing.
        raise ApiError(400, "upload_incomplete", "The body ended early") from None
    return bytes(body)


@routes.get("/users/me", name="users_me")
async def me(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    return web.json_response(user_json(await request.app[PROFILES_KEY].own(user_id)))


@routes.patch("/users/me", name="edit_profile")
async def edit_profile(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    body = await read_json_object(request)
    name = clean_name(string_field(body, "name", max_len=NAME_MAX + RAW_SLACK)) \
        if "name" in body else None
    bio = clean_bio(string_field(body, "bio", max_len=BIO_MAX + RAW_SLACK)) \
        if "bio" in body else None
    if name is None and bio is None:
        raise Invalid("Send 'name', 'bio' or both")
    row = await request.app[PROFILES_KEY].update(user_id, name, bio)
    return web.json_response(user_json(row))


@routes.put("/users/me/avatar", name="set_avatar")
async def set_avatar(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    await request.app[PROFILES_KEY].count_avatar_upload(request, user_id)
    upload = await read_capped(request, MAX_BYTES)
    if not upload:
        raise Invalid("Send the image as the request body")
    row = await request.app[PROFILES_KEY].set_avatar(user_id, upload)
    return web.json_response(user_json(row))


@routes.get("/users/{id}", name="profile")
async def profile(request: web.Request) -> web.Response:
    row = await request.app[PROFILES_KEY].public(request.match_info["id"])
    return web.json_response(profile_json(row))


@routes.get("/users/{id}/avatar.jpg", name="avatar")
async def avatar(request: web.Request) -> web.Response:
    profiles = request.app[PROFILES_KEY]
    key = await profiles.avatar_key(request.match_info["id"])
    etag = f'"{key}"'
    versioned = request.query.get("v") == avatar_version(key)
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE if versioned else REVALIDATE}
    if etag_matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=await profiles.read_avatar(key), headers=headers,
                        content_type="image/jpeg")
