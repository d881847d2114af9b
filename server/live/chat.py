"""A room's text chat: its history over HTTP, live messages over a WebSocket.

    GET /rooms/{id}/messages?before=&limit=   history, newest first; public, like the rooms
    GET /rooms/{id}/chat                      WebSocket: authenticate, then send and receive

Messages are stored in PostgreSQL first, then published on one Redis channel;
every process forwards them to its sockets of that room, the sender's own
included (the echo confirms the message was stored). History needs no sign-in,
since rooms are listed publicly; posting needs a LiveKit token of that room,
guests' included.

Protocol. The first frames a client sends must include, within AUTH_DEADLINE
seconds, `{"type": "auth", "token": <token from POST /rooms/{id}/join>}` (not in
the URL, which access logs keep). The server answers `{"type": "ready", ...}`
and from then on sends every new message of the room as `{"type": "message",
id, room_id, identity, name, body, created_at}`. A client posts with
`{"type": "message", "body": "..."}`. A refused frame gets `{"type": "error",
code, message}` (`retry_after` with `rate_limited`) and the socket stays open.
The token is checked once, when it arrives. When a room ends (a post finds it
ended, or `ChatHub.end` is called), its sockets everywhere get `{"type":
"ended", room_id}` and are closed (4409).

Close codes: 1001 server shutting down; 1011 internal error; 4401 no valid
token in time; 4403 a token of another room, or a banned account; 4408 the
client read too slowly and fell SEND_QUEUE frames behind; 4409 the room ended;
4429 too many sockets in this room on this server.

Outages: PostgreSQL down, a post gets `unavailable` and nothing is published.
Redis down, a stored message still reaches this process's sockets, and the
sender also gets `{"type": "warning", "code": "not_shared", ...}`: sockets on
other servers see it only in the history. A client merges live messages and
history by id, and reloads the history when it reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import psycopg2
from aiohttp import WSCloseCode, WSMsgType, web
from redis.exceptions import RedisError

from server.accounts.standing import STANDING_KEY, Standing
from server.core.clients import hash_secret, ip_key, request_ip
from server.core.config import RateSpec
from server.core.errors import DEPENDENCY_ERRORS, ApiError, Unavailable
from server.core.ids import parse_id
from server.core.keys import BUS_KEY, CONFIG_KEY, DB_KEY, REDIS_KEY
from server.core.keyspace import Keyspace
from server.core.origins import check_origin
from server.core.ratelimit import ActionThrottle, Limit, RateLimited, RateLimiter
from server.core.redis_client import Bus
from server.core.validation import positive_int

from . import tokens
from .keys import ROOMS_KEY
from .messages import (
    PAGE_DEFAULT,
    PAGE_MAX,
    BodyRefused,
    ChatRoom,
    ChatStore,
    RoomEnded,
    clean_body,
    error_frame,
    message_frame,
)

log = logging.getLogger(__name__)

CHANNEL = "room-chat"
# Seconds a new socket has to send its token.
AUTH_DEADLINE = 10.0
# Frames waiting for one socket; a client this far behind is closed (4408), not waited for.
SEND_QUEUE = 256
# Sockets of one room in one process, signed in or still authenticating.
MAX_ROOM_SOCKETS = 1000
# Chat sockets one address (an IPv6 /64) may hold open in this process, across rooms,
# so that one client cannot fill a room's MAX_ROOM_SOCKETS with idle sockets.
MAX_ADDRESS_SOCKETS = 32
# Largest frame a client may send: a token, or a body of BODY_MAX characters JSON-escaped.
MAX_FRAME = 16 * 1024
CLOSE_TIMEOUT = 5.0
PUBLISH_TIMEOUT = 1.0
# What PostgreSQL failing to store a message may raise.
STORE_ERRORS: tuple[type[BaseException], ...] = (*DEPENDENCY_ERRORS, psycopg2.Error)

NO_TOKEN = 4401
WRONG_ROOM = 4403
TOO_SLOW = 4408
ENDED = 4409
TOO_MANY = 4429

CHAT_KEY: web.AppKey[ChatHub] = web.AppKey("room_chat")
CHAT_STORE_KEY = web.AppKey("room_chat_store", ChatStore)


class ChatSocket:
    """One chat socket: its room, its participant once authenticated, and its outbox.

    Every frame to the client goes through the outbox and one writer task, in
    order; adding to it never waits, so a slow client holds up nobody else.
    """

    __slots__ = ("room_id", "ws", "address", "holder", "_outbox", "_writer")

    def __init__(self, room_id: int, ws: web.WebSocketResponse, address: str) -> None:
        self.room_id = room_id
        self.ws = ws
        # The keyed hash of the client's address, for the per-address rate limit.
        self.address = address
        self.holder: tokens.Holder | None = None
        self._outbox: asyncio.Queue[str] = asyncio.Queue(SEND_QUEUE)
        self._writer = asyncio.create_task(self._write(), name="room-chat-writer")

    def send(self, text: str) -> bool:
        """Queue a frame; False if the client is SEND_QUEUE frames behind."""
        try:
            self._outbox.put_nowait(text)
        except asyncio.QueueFull:
            return False
        return True

    async def close(self, code: int, reason: str) -> None:
        """Send what is queued (briefly), then close the socket."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._outbox.join()
        await self.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()),
                                   CLOSE_TIMEOUT)

    async def stop(self) -> None:
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    async def _write(self) -> None:
        while True:
            text = await self._outbox.get()
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                pass  # closing: the handler sees it and ends the socket
            finally:
                self._outbox.task_done()


class ChatHub:
    """This process's chat sockets by room, and the posts and deliveries between them."""

    def __init__(self, store: ChatStore, bus: Bus, limiter: RateLimiter,
                 limits: RateSpec, standing: Standing) -> None:
        self.store = store
        self._bus = bus
        self._channel = bus.key(CHANNEL)
        self._limiter = limiter
        self._limits = limits
        self._standing = standing
        self.auth_deadline = AUTH_DEADLINE
        self.rooms: dict[int, set[ChatSocket]] = {}
        self._per_address: Counter[str] = Counter()
        self.closing = False
        self._closing_tasks: set[asyncio.Task[None]] = set()
        bus.on(self._channel, self.on_published)

    # --- sockets ------------------------------------------------------------

    def admit(self, sock: ChatSocket) -> bool:
        sockets = self.rooms.setdefault(sock.room_id, set())
        if len(sockets) >= MAX_ROOM_SOCKETS \
                or self._per_address[sock.address] >= MAX_ADDRESS_SOCKETS:
            if not sockets:
                del self.rooms[sock.room_id]
            return False
        sockets.add(sock)
        self._per_address[sock.address] += 1
        return True

    def leave(self, sock: ChatSocket) -> None:
        sockets = self.rooms.get(sock.room_id)
        if sockets is not None and sock in sockets:
            sockets.discard(sock)
            if not sockets:
                del self.rooms[sock.room_id]
            self._per_address[sock.address] -= 1
            if self._per_address[sock.address] <= 0:
                del self._per_address[sock.address]

    def banned(self, holder: tokens.Holder) -> bool:
        user_id = holder.user_id
        return user_id is not None and self._standing.is_banned(user_id)

    async def close_all(self) -> None:
        """Close every socket (1001 Going Away) so clients reconnect elsewhere."""
        self.closing = True
        await asyncio.gather(*(sock.close(WSCloseCode.GOING_AWAY, "Server shutting down")
                               for sockets in self.rooms.values() for sock in sockets))

    # --- posting --------------------------------------------------------------

    async def post(self, sock: ChatSocket, holder: tokens.Holder, body: str) -> None:
        """Store a cleaned body and deliver it everywhere; refusals go to `sock` only."""
        if self.banned(holder):
            sock.send(error_frame("banned", "This account may not post now"))
            return
        try:
            hit = await self._limiter.hit(*self._rate_limits(holder, sock))
        except RateLimited as exc:
            retry_after = int(exc.headers.get("Retry-After", "1"))
            sock.send(error_frame("rate_limited", "Too many messages; retry later",
                                  retry_after=retry_after))
            return
        try:
            message = await self.store.add(sock.room_id, holder, body)
        except RoomEnded:
            sock.send(error_frame("room_ended", "The room has ended"))
            await self.end(sock.room_id)  # closes this socket too
            return
        except STORE_ERRORS as exc:
            log.warning("chat message not stored: %s", type(exc).__name__)
            await self._limiter.release(hit)
            sock.send(error_frame("unavailable", "The message could not be saved; retry later"))
            return
        frame = message_frame(message)
        if not await self._publish(frame):
            self.deliver(sock.room_id, frame)
            sock.send(json.dumps({
                "type": "warning", "code": "not_shared",
                "message": "Saved, but participants on other servers see it only in the history"}))

    def _rate_limits(self, holder: tokens.Holder, sock: ChatSocket) -> tuple[Limit, Limit]:
        # Per participant (guests have no account) and per address, as ActionThrottle counts.
        spec, limiter = self._limits, self._limiter
        return (limiter.limit("chat-participant", holder.identity, spec.count, spec.window),
                limiter.limit("chat-ip", sock.address,
                              spec.count * ActionThrottle.ADDRESS_FACTOR, spec.window))

    async def end(self, room_id: int) -> None:
        """Tell every process the room ended: its sockets are closed (4409).

        Called when a post finds the room ended; the code that ends rooms may call it too.
        """
        frame = json.dumps({"type": "ended", "room_id": room_id})
        if not await self._publish(frame):
            self._end_here(room_id, frame)

    async def _publish(self, frame: str) -> bool:
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await self._bus.publish(self._channel, frame)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("chat frame not published: %s", type(exc).__name__)
            return False
        return True

    # --- delivering -----------------------------------------------------------

    def on_published(self, _channel: str, data: bytes) -> None:
        try:
            frame = data.decode()
            event = json.loads(frame)
            room_id = event["room_id"]
            kind = event["type"]
        except (ValueError, KeyError, TypeError):
            log.warning("malformed chat frame on the bus")
            return
        if kind == "message":
            self.deliver(room_id, frame)
        elif kind == "ended":
            self._end_here(room_id, frame)

    def deliver(self, room_id: int, frame: str) -> None:
        """Queue `frame` for every authenticated socket of the room in this process."""
        for sock in list(self.rooms.get(room_id, ())):
            if sock.holder is not None and not sock.send(frame):
                self.leave(sock)  # hears nothing more; the client reloads history
                self._close_later(sock, TOO_SLOW, "too far behind")

    def _end_here(self, room_id: int, frame: str) -> None:
        for sock in list(self.rooms.get(room_id, ())):
            self.leave(sock)
            sock.send(frame)
            self._close_later(sock, ENDED, "room ended")

    def _close_later(self, sock: ChatSocket, code: int, reason: str) -> None:
        task = asyncio.create_task(sock.close(code, reason))
        self._closing_tasks.add(task)
        task.add_done_callback(self._closing_tasks.discard)


# --- HTTP ----------------------------------------------------------------------

async def room_messages(request: web.Request) -> web.Response:
    limit = positive_int(request.query.get("limit"), "limit", default=PAGE_DEFAULT,
                         maximum=PAGE_MAX)
    assert limit is not None
    before = positive_int(request.query.get("before"), "before")
    messages, next_before = await request.app[CHAT_STORE_KEY].page(
        parse_id(request.match_info["id"]), before, limit)
    return web.json_response({"messages": messages, "next": next_before})


async def room_chat(request: web.Request) -> web.StreamResponse:
    app = request.app
    config = app[CONFIG_KEY]
    hub = app[CHAT_KEY]
    check_origin(request)
    room = await hub.store.room(parse_id(request.match_info["id"]))
    ws = web.WebSocketResponse(heartbeat=config.heartbeat, compress=False,
                               max_msg_size=MAX_FRAME, timeout=CLOSE_TIMEOUT)
    if not ws.can_prepare(request).ok:
        raise ApiError(426, "upgrade_required", "Open this URL as a WebSocket",
                       {"Upgrade": "websocket", "Connection": "Upgrade"})
    if hub.closing:
        raise Unavailable("The server is shutting down")
    address = ip_key(request_ip(request.remote, request.headers, config.trusted_proxies),
                     hash_secret(config.jwt_secret))
    # Refusals come after the upgrade: a browser sees close codes, never a status.
    await ws.prepare(request)
    sock = ChatSocket(room.id, ws, address)
    try:
        if not room.active:
            await sock.close(ENDED, "room ended")
        elif not hub.admit(sock):
            await sock.close(TOO_MANY, "too many connections to this room")
        else:
            await _converse(app, hub, sock, room)
    except Exception:
        log.exception("room chat socket failed")
        await sock.close(WSCloseCode.INTERNAL_ERROR, "Internal error")
    finally:
        hub.leave(sock)
        await sock.stop()
    return ws


async def _converse(app: web.Application, hub: ChatHub, sock: ChatSocket,
                    room: ChatRoom) -> None:
    holder = await _authenticate(app, hub, sock, room)
    if holder is None:
        return
    async for msg in sock.ws:
        frame = _frame(sock, msg)
        if frame is None:
            if msg.type is WSMsgType.ERROR:
                break
            continue
        kind = frame.get("type")
        if kind == "message":
            try:
                body = clean_body(frame.get("body"))
            except BodyRefused as exc:
                sock.send(error_frame("invalid_body", str(exc)))
                continue
            await hub.post(sock, holder, body)
        elif kind == "auth":
            sock.send(error_frame("bad_message", "Already authenticated"))
        else:
            sock.send(error_frame("bad_message", "Unknown message type"))


async def _authenticate(app: web.Application, hub: ChatHub, sock: ChatSocket,
                        room: ChatRoom) -> tokens.Holder | None:
    """The participant once a valid token arrives; None once the socket is closed."""
    config = app[CONFIG_KEY]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + hub.auth_deadline
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            await sock.close(NO_TOKEN, "no token")
            return None
        try:
            msg = await sock.ws.receive(timeout=remaining)
        except TimeoutError:
            continue
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                        WSMsgType.ERROR):
            return None
        frame = _frame(sock, msg)
        if frame is None:
            continue
        kind = frame.get("type")
        if kind != "auth":
            code = "auth_required" if kind == "message" else "bad_message"
            sock.send(error_frame(code, "Authenticate first: {\"type\": \"auth\", \"token\": ...}"))
            continue
        token = frame.get("token")
        try:
            if not isinstance(token, str):
                raise tokens.TokenRefused("no token")
            holder = tokens.verify(config.livekit_api_key, config.livekit_secret, token.strip())
        except tokens.TokenRefused:
            await sock.close(NO_TOKEN, "invalid token")
            return None
        if holder.room != room.livekit_room:
            await sock.close(WRONG_ROOM, "token of another room")
            return None
        if hub.banned(holder):
            await sock.close(WRONG_ROOM, "account banned")
            return None
        # Queued before the socket is marked: "ready" comes before any message.
        sock.send(json.dumps({"type": "ready", "room_id": room.id,
                              "identity": holder.identity, "name": holder.name}))
        sock.holder = holder
        return holder


def _frame(sock: ChatSocket, msg: Any) -> dict[str, Any] | None:
    """A client frame as a JSON object; None (after telling the client) otherwise."""
    if msg.type is not WSMsgType.TEXT:
        if msg.type is WSMsgType.BINARY:
            sock.send(error_frame("bad_message", "Send JSON text messages"))
        return None
    try:
        frame = json.loads(msg.data)
    except (ValueError, RecursionError):
        frame = None
    if not isinstance(frame, dict):
        sock.send(error_frame("bad_message", "Messages must be JSON objects"))
        return None
    return frame


# --- wiring --------------------------------------------------------------------

async def chat_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    store = ChatStore(app[DB_KEY])
    limiter = RateLimiter(app[REDIS_KEY], Keyspace(config.redis_prefix))
    app[CHAT_STORE_KEY] = store
    hub = app[CHAT_KEY] = ChatHub(store, app[BUS_KEY], limiter, config.rate_limit_chat,
                                  app[STANDING_KEY])
    # A room ended here (the API, a room_finished webhook) closes its chat sockets at once.
    app[ROOMS_KEY].on_ended(hub.end)
    yield


async def close_sockets(app: web.Application) -> None:
    await app[CHAT_KEY].close_all()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(chat_ctx)
    app.on_shutdown.append(close_sockets)
    app.router.add_route("GET", "/rooms/{id}/messages", room_messages, name="room_messages")
    app.router.add_route("GET", "/rooms/{id}/chat", room_chat, name="room_chat")
