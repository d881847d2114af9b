"""The rooms API and LiveKit's webhook.

- POST /rooms, GET /rooms, GET /rooms/{id}, POST /rooms/{id}/end
- POST /rooms/{id}/join: a LiveKit access token for the room
- POST /livekit/webhook: LiveKit tells who joined and left

Creating rooms is rate limited per account and per address by RATE_LIMIT_UPLOAD,
the allowance of the other costly thing an account makes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from livekit import api

from server.accounts.auth import UNAUTHORIZED, authenticated_user
from server.catalog.handlers import page_params
from server.core.clients import hash_secret
from server.core.errors import ApiError
from server.core.ids import parse_id
from server.core.keys import CONFIG_KEY, DB_KEY, REDIS_KEY
from server.core.keyspace import Keyspace
from server.core.loops import run_every, stop
from server.core.ratelimit import ActionThrottle, RateLimiter
from server.core.validation import read_json_object, string_field

from .keys import (
    LIVEKIT_KEY,
    PARTICIPANTS_KEY,
    ROOM_PAGES_KEY,
    ROOMS_KEY,
    ROOMS_THROTTLE_KEY,
    WEBHOOKS_KEY,
)
from .participants import Participants
from .rooms import (
    GUEST_NAME_MAX,
    NAME_MAX,
    LiveKitRooms,
    Rooms,
    TokenSettings,
    clean_room_name,
    parse_max_participants,
)
from .webhooks import MAX_BODY, PRUNE_EVERY, Webhooks, verify

# Room for surrounding white space that cleaning strips.
RAW_SLACK = 200
READ_CHUNK = 16 * 1024

routes = web.RouteTableDef()


def _room_id(request: web.Request) -> int | None:
    return parse_id(request.match_info["id"])


@routes.post("/rooms", name="create_room")
async def create_room(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    body = await read_json_object(request)
    name = clean_room_name(string_field(body, "name", max_len=NAME_MAX + RAW_SLACK))
    max_participants = parse_max_participants(body.get("max_participants"))
    await request.app[ROOMS_THROTTLE_KEY].hit(request, "room", user_id,
                                              request.app[CONFIG_KEY].rate_limit_upload)
    room = await request.app[ROOMS_KEY].create(user_id, name, max_participants)
    return web.json_response(room, status=201)


async def _page(request: web.Request) -> web.StreamResponse | None:
    """The HTML page a browser navigating to this path asked for, if the app has pages."""
    pages = request.app.get(ROOM_PAGES_KEY)
    return None if pages is None else await pages(request)


# One URL, a page or JSON by what was asked for: caches must tell them apart.
VARY = {"Vary": "Accept"}


@routes.get("/rooms", name="rooms")
async def list_rooms(request: web.Request) -> web.StreamResponse:
    page = await _page(request)
    if page is not None:
        return page
    limit, before = page_params(request)
    items = await request.app[ROOMS_KEY].page(before, limit)
    next_cursor = str(items[-1]["id"]) if len(items) == limit else None
    return web.json_response({"items": items, "next_cursor": next_cursor}, headers=VARY)


@routes.get("/rooms/{id}", name="room")
async def get_room(request: web.Request) -> web.StreamResponse:
    page = await _page(request)
    if page is not None:
        return page
    return web.json_response(await request.app[ROOMS_KEY].get(_room_id(request)),
                             headers=VARY)


@routes.post("/rooms/{id}/end", name="end_room")
async def end_room(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    return web.json_response(await request.app[ROOMS_KEY].end(_room_id(request), user_id))


@routes.post("/rooms/{id}/join", name="join_room")
async def join_room(request: web.Request) -> web.Response:
    # A token that comes along must be valid (and its account not banned); without
    # one, the caller is a guest, if guests are let in.
    user_id: int | None = None
    if "Authorization" in request.headers:
        user_id = authenticated_user(request)
    elif not request.app[CONFIG_KEY].rooms_guests:
        raise ApiError(401, "unauthorized", "Sign in to join rooms", UNAUTHORIZED)
    guest_name = _guest_name(await read_json_object(request)) if request.body_exists else None
    return web.json_response(
        await request.app[ROOMS_KEY].join(_room_id(request), user_id, guest_name))


def _guest_name(body: dict[str, Any]) -> str | None:
    if body.get("name") is None:
        return None
    return string_field(body, "name", max_len=GUEST_NAME_MAX + RAW_SLACK)


@routes.post("/livekit/webhook", name="livekit_webhook")
async def livekit_webhook(request: web.Request) -> web.Response:
    body = await _read_limited(request, MAX_BODY)
    webhooks = request.app[WEBHOOKS_KEY]
    event = verify(webhooks.receiver, body, request.headers.get("Authorization"), time.time())
    await webhooks.apply(event)
    return web.json_response({"ok": True})


def _too_large() -> ApiError:
    # The rest of the body is not wanted: the connection closes instead of draining it.
    return ApiError(413, "payload_too_large", f"The body is over {MAX_BODY} bytes",
                    {"Connection": "close"})


async def _read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise _too_large()
    data = bytearray()
    while chunk := await request.content.read(READ_CHUNK):
        data += chunk
        if len(data) > limit:
            raise _too_large()
    return bytes(data)


async def live_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    client = app[REDIS_KEY]
    keys = Keyspace(config.redis_prefix)
    participants = Participants(client, keys)
    livekit = (LiveKitRooms.connect(config.livekit_url, config.livekit_api_key,
                                    config.livekit_secret)
               if config.livekit_url else None)
    if livekit is not None:
        app[LIVEKIT_KEY] = livekit
    app[PARTICIPANTS_KEY] = participants
    rooms = Rooms(app[DB_KEY], participants, livekit, TokenSettings(
        config.livekit_url, config.livekit_api_key, config.livekit_secret,
        config.livekit_token_ttl))
    app[ROOMS_KEY] = rooms
    receiver = api.WebhookReceiver(api.TokenVerifier(config.livekit_api_key,
                                                     config.livekit_secret))
    webhooks = Webhooks(app[DB_KEY], participants, receiver, rooms.notify_ended,
                        None if livekit is None else livekit.delete)
    app[WEBHOOKS_KEY] = webhooks
    app[ROOMS_THROTTLE_KEY] = ActionThrottle(RateLimiter(client, keys),
                                             hash_secret(config.jwt_secret),
                                             config.trusted_proxies)
    prune = run_every(PRUNE_EVERY, webhooks.prune, "room-events-prune",
                      first_after=PRUNE_EVERY)
    try:
        yield
    finally:
        await stop(prune)
        if livekit is not None:
            await livekit.close()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(live_ctx)
    app.add_routes(routes)
