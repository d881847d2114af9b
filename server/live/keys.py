"""The live feature's application keys, typed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from server.core.ratelimit import ActionThrottle

from .participants import Participants
from .rooms import LiveKitRooms, Rooms
from .webhooks import Webhooks

ROOMS_KEY: web.AppKey[Rooms] = web.AppKey("live_rooms")
PARTICIPANTS_KEY: web.AppKey[Participants] = web.AppKey("live_participants")
WEBHOOKS_KEY: web.AppKey[Webhooks] = web.AppKey("live_webhooks")
# Present only when LIVEKIT_URL is set: one RoomService client for the app.
LIVEKIT_KEY: web.AppKey[LiveKitRooms] = web.AppKey("live_livekit")
ROOMS_THROTTLE_KEY: web.AppKey[ActionThrottle] = web.AppKey("live_rooms_throttle")

# The HTML pages at the API's own GET /rooms and /rooms/{id} (server/web/rooms.py):
# given a request, the page when the client asked for one, else None for the JSON.
RoomPage = Callable[[web.Request], Awaitable[web.StreamResponse | None]]
ROOM_PAGES_KEY: web.AppKey[RoomPage] = web.AppKey("live_room_pages")
