"""Live "watching now" counts over WebSocket, shared by every process through Redis.

Presence follows Centrifugo's Redis presence: one sorted set per video,
`{prefix}:presence:{video}`, whose members are `{instance}:{connection}` scored
by the unix time they expire (Redis's clock, so processes need not agree on
time). Each process re-scores its own members every PRESENCE_TTL/3 (at most
15 s); the members of a process that dies without a goodbye age out within
PRESENCE_TTL. Counting removes expired members first.

Joins and leaves publish the video id on `{prefix}:viewers-changed`, counted
views on `{prefix}:views-changed`. A process that holds sockets for that video
marks it dirty. A dirty video is re-read at once unless its last broadcast
was less than TICK ago (then when the TICK is up), and if the numbers changed
one JSON text goes to all its local sockets: a lone change arrives without
delay, and a burst of joins costs each socket at most two messages a second.
Every second every local video is marked dirty too, which is how expiries are
noticed.

A broadcast encodes the JSON and its WebSocket frame once and writes the same
bytes to every local socket without awaiting: nothing a client does can hold
up the others. A socket whose unsent output has backed up is skipped and gets
the latest state once it has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio as redis
from aiohttp import WSCloseCode, WSMsgType, web
from redis.exceptions import RedisError

from server.accounts.auth import optional_user, user_from_token
from server.catalog.handlers import CATALOG_KEY
from server.core.errors import ApiError
from server.core.ids import parse_video_id
from server.core.keys import BUS_KEY, CONFIG_KEY, LIVE_COUNTS_KEY, REDIS_KEY
from server.core.loops import raise_if_cancelled

from .counting import VIEWS_CHANGED, VIEWS_KEY, check_origin, identify
from .watch_rules import ReportError, parse_report

log = logging.getLogger(__name__)

VIEWERS_CHANGED = "viewers-changed"
# At most one broadcast per video per TICK, and one re-read per READ_GAP.
TICK = 0.5
READ_GAP = 0.1
# Every local count is re-read each POLL seconds; every local view total every
# VIEWS_POLLS polls (that only heals messages lost while pub/sub reconnected).
POLL = 1.0
VIEWS_POLLS = 30
MAX_BEAT = 15.0
MEMBERS_PER_CALL = 1000
MAX_MESSAGE = 4096
MIN_REPORT_SPACING = 0.2
CLOSE_TIMEOUT = 5.0
# Unsent bytes past which a socket is skipped until it catches up.
BACKLOG_LIMIT = 64 * 1024
# The Redis client's pool refuses a 101st concurrent command; a burst of joins
# waits here for a slot instead.
REDIS_CONCURRENCY = 32

_NOW = "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n"

# KEYS[1] the set; ARGV: member, ttl, key ttl, channel, video id. Returns the count.
JOIN = _NOW + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PUBLISH', ARGV[4], ARGV[5])
return redis.call('ZCARD', KEYS[1])
"""

# KEYS[1] the set; ARGV: ttl, key ttl, members...
REFRESH = _NOW + """
local expires = now + tonumber(ARGV[1])
for i = 3, #ARGV do redis.call('ZADD', KEYS[1], expires, ARGV[i]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

COUNT = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""

# KEYS[1] the set; ARGV: channel, video id, members...
LEAVE = """
for i = 3, #ARGV do redis.call('ZREM', KEYS[1], ARGV[i]) end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""

ReadViews = Callable[[Iterable[int]], Awaitable[dict[int, int]]]


def state_text(video_id: int, active_viewers: int, views: int) -> str:
    return json.dumps({"video_id": video_id, "active_viewers": active_viewers,
                       "views": views})


def error_text(code: str, message: str) -> str:
    return json.dumps({"error": {"code": code, "message": message}})


def text_frame(text: str) -> bytes:
    """One unfragmented, unmasked WebSocket text frame (RFC 6455, 5.2), as servers send."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + payload


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class Viewer:
    """One open socket, and the last state written to it."""

    __slots__ = ("video_id", "conn_id", "ws", "transport", "sent", "joined", "joining")

    def __init__(self, video_id: int, ws: web.WebSocketResponse,
                 transport: asyncio.BaseTransport | None) -> None:
        self.video_id = video_id
        self.conn_id = secrets.token_hex(8)
        self.ws = ws
        self.transport = transport
        self.sent: str | None = None
        # Set once the join is sent to Redis; `joining` only until it completes.
        self.joined = False
        self.joining: asyncio.Future[int] | None = None

    def join_done(self, _: asyncio.Future[int]) -> None:
        self.joining = None

    def deliver(self, text: str, frame: bytes) -> bool:
        """Write `frame` (the encoding of `text`) now; False if the client is behind.

        The frame goes straight to the transport: it is complete, so it cannot
        interleave with aiohttp's own frames, and it is never awaited.
        """
        transport = self.transport
        if self.ws.closed or not isinstance(transport, asyncio.Transport) \
                or transport.is_closing():
            return True
        if transport.get_write_buffer_size() > BACKLOG_LIMIT:
            return False
        transport.write(frame)
        self.sent = text
        return True


class PresenceHub:
    def __init__(self, client: redis.Redis, prefix: str, ttl: float,
                 read_views: ReadViews) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl
        self.key_ttl = math.ceil(ttl * 2) + 1
        self.beat_interval = min(MAX_BEAT, ttl / 3)
        self.instance_id = secrets.token_hex(8)
        self.closing = False
        self.messages_sent = 0
        self.local: dict[int, dict[str, Viewer]] = {}
        self._read_views = read_views
        self._dirty_counts: set[int] = set()
        self._dirty_views: set[int] = set()
        self._due: dict[int, float] = {}
        self._last_read: dict[int, float] = {}
        self._last_broadcast: dict[int, float] = {}
        self._wake = asyncio.Event()
        self._counts: dict[int, int] = {}
        self._views: dict[int, int] = {}
        self._shown: dict[int, tuple[str, bytes]] = {}
        self._behind: set[Viewer] = set()
        self._views_loading: dict[int, asyncio.Future[dict[int, int]]] = {}
        self._beating = False
        self._left_while_beating: list[Viewer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._slots = asyncio.Semaphore(REDIS_CONCURRENCY)
        self._leaving: set[asyncio.Future[None]] = set()
        self._join = client.register_script(JOIN)
        self._refresh = client.register_script(REFRESH)
        self._count = client.register_script(COUNT)
        self._leave = client.register_script(LEAVE)

    def key(self, *parts: object) -> str:
        return ":".join([self.prefix, *(str(p) for p in parts)])

    def set_key(self, video_id: int) -> str:
        return self.key("presence", video_id)

    def member(self, viewer: Viewer) -> str:
        return f"{self.instance_id}:{viewer.conn_id}"

    # --- pub/sub ----------------------------------------------------------

    def on_viewers_changed(self, _channel: str, data: bytes) -> None:
        video_id = parse_video_id(data.decode("ascii", "replace"))
        if video_id in self.local:
            self.mark(video_id)

    def on_views_changed(self, _channel: str, data: bytes) -> None:
        video_id = parse_video_id(data.decode("ascii", "replace"))
        if video_id in self.local:
            self.mark(video_id, views=True)

    def mark(self, video_id: int, *, views: bool = False, delay: float = 0.0) -> None:
        """Schedule a re-read of the video's count (or view total) and a broadcast."""
        (self._dirty_views if views else self._dirty_counts).add(video_id)
        if video_id not in self._due:
            earliest = max(self._last_read.get(video_id, -math.inf) + READ_GAP,
                           self._last_broadcast.get(video_id, -math.inf) + TICK)
            self._due[video_id] = max(asyncio.get_running_loop().time() + delay, earliest)
            self._wake.set()

    # --- joining and leaving ----------------------------------------------

    async def join(self, viewer: Viewer, stored_views: int) -> None:
        """Count `viewer` everywhere and send it the current numbers."""
        video_id = viewer.video_id
        # Shielded, like the removal: a handler cancelled because its client
        # vanished must not leave Redis half-updated.
        viewer.joined = True
        joining = viewer.joining = asyncio.ensure_future(self._add(viewer))
        joining.add_done_callback(viewer.join_done)
        count = await asyncio.shield(joining)
        views = await self._views_of(video_id, stored_views)
        # Broadcasts reach the socket only from here, so its own join is the
        # first thing it hears.
        group = self.local.setdefault(video_id, {})
        if not group:
            # Changes announced while no socket here watched this video were
            # not listened for: read the total again.
            self._views[video_id] = views
            self.mark(video_id, views=True)
        group[viewer.conn_id] = viewer
        text = state_text(video_id, count, views)
        self._send(viewer, text, text_frame(text))
        # A broadcast made since the join was read may be newer: the next
        # refresh re-reads and sends to every socket that lacks its result.
        self._shown.pop(video_id, None)
        self.mark(video_id)

    async def _add(self, viewer: Viewer) -> int:
        async with self._slots:
            count = await self._join(
                keys=[self.set_key(viewer.video_id)],
                args=[self.member(viewer), self.ttl, self.key_ttl,
                      self.key(VIEWERS_CHANGED), viewer.video_id],
            )
        return int(count)

    async def leave(self, viewer: Viewer) -> None:
        """Forget `viewer` here and in Redis; the Redis part completes even if
        the caller is cancelled."""
        self._behind.discard(viewer)
        if self.closing:
            return  # stop() removes every member of this process at once
        video_id = viewer.video_id
        group = self.local.get(video_id)
        if group is not None and group.pop(viewer.conn_id, None) is not None and not group:
            self._forget(video_id)
        if not viewer.joined:
            return
        removal = asyncio.ensure_future(self._remove_viewer(viewer))
        self._leaving.add(removal)
        removal.add_done_callback(self._leaving.discard)
        await asyncio.shield(removal)

    async def _remove_viewer(self, viewer: Viewer) -> None:
        try:
            if viewer.joining is not None:
                # The removal must reach Redis after the join it undoes.
                await asyncio.wait([viewer.joining])
            if self._beating:
                self._left_while_beating.append(viewer)
            async with self._slots:
                await self._leave(
                    keys=[self.set_key(viewer.video_id)],
                    args=[self.key(VIEWERS_CHANGED), viewer.video_id, self.member(viewer)],
                )
        except (RedisError, OSError) as exc:
            log.warning("viewer left but could not be removed (it expires): %s", exc)

    def _forget(self, video_id: int) -> None:
        """Drop what this process kept about a video it no longer has sockets for."""
        self.local.pop(video_id, None)
        self._counts.pop(video_id, None)
        self._views.pop(video_id, None)
        self._shown.pop(video_id, None)
        self._due.pop(video_id, None)
        self._last_read.pop(video_id, None)
        self._last_broadcast.pop(video_id, None)

    async def _views_of(self, video_id: int, fallback: int) -> int:
        """The cached view total, read once however many sockets join at once."""
        if video_id in self._views:
            return self._views[video_id]
        loading = self._views_loading.get(video_id)
        if loading is None:
            loading = asyncio.ensure_future(self._read_views([video_id]))
            self._views_loading[video_id] = loading

            def done(future: asyncio.Future[dict[int, int]]) -> None:
                self._views_loading.pop(video_id, None)
                if not future.cancelled():
                    future.exception()  # retrieved here; each waiter handles it

            loading.add_done_callback(done)
        try:
            views = (await asyncio.shield(loading)).get(video_id, fallback)
        except Exception as exc:
            log.warning("view total unavailable for video %s: %r", video_id, exc)
            return fallback
        if video_id in self.local:
            self._views[video_id] = views
        return views

    # --- sending ----------------------------------------------------------

    def _send(self, viewer: Viewer, text: str, frame: bytes) -> None:
        if viewer.sent == text:
            return
        if not viewer.deliver(text, frame):
            self._behind.add(viewer)
        elif viewer.sent == text:
            self.messages_sent += 1

    def _broadcast(self, video_id: int, text: str) -> None:
        frame = text_frame(text)
        self._shown[video_id] = (text, frame)
        self._last_broadcast[video_id] = asyncio.get_running_loop().time()
        for viewer in self.local.get(video_id, {}).values():
            self._send(viewer, text, frame)

    def _catch_up(self) -> None:
        """Send the latest state to sockets that were skipped while backed up."""
        behind, self._behind = self._behind, set()
        for viewer in behind:
            shown = self._shown.get(viewer.video_id)
            if shown is not None and viewer.conn_id in self.local.get(viewer.video_id, {}):
                self._send(viewer, *shown)

    async def refresh(self, video_ids: Iterable[int]) -> None:
        """Re-read what is dirty about `video_ids` and broadcast what changed.

        Counts come from Redis and view totals also from PostgreSQL; whichever
        fails is marked dirty again without holding up the other.
        """
        ids = [v for v in video_ids if v in self.local]
        count_ids = sorted(self._dirty_counts.intersection(ids))
        view_ids = sorted(self._dirty_views.intersection(ids))
        self._dirty_counts.difference_update(ids)
        self._dirty_views.difference_update(ids)
        counts: dict[int, int] = {}
        views: dict[int, int] = {}
        failure: Exception | None = None
        try:
            counts = await self._read_counts(count_ids)
        except Exception as exc:
            failure = exc
            for video_id in count_ids:
                self.mark(video_id, delay=TICK)
        try:
            views = await self._read_views(view_ids) if view_ids else {}
        except Exception as exc:
            failure = exc
            for video_id in view_ids:
                self.mark(video_id, views=True, delay=TICK)
        self._catch_up()
        for video_id in counts.keys() | views.keys():
            if video_id not in self.local:
                continue
            if video_id in counts:
                self._counts[video_id] = counts[video_id]
            if video_id in views:
                self._views[video_id] = views[video_id]
            text = state_text(video_id, self._counts.get(video_id, 0),
                              self._views.get(video_id, 0))
            shown = self._shown.get(video_id)
            if shown is None or shown[0] != text:
                self._broadcast(video_id, text)
        if failure is not None:
            raise failure

    async def counts(self, video_ids: Iterable[int]) -> dict[int, int]:
        """How many watch each video now, across every process (for pages and lists)."""
        async with self._slots:
            return await self._read_counts(sorted(set(video_ids)))

    async def _read_counts(self, video_ids: list[int]) -> dict[int, int]:
        if not video_ids:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for video_id in video_ids:
                await self._count(keys=[self.set_key(video_id)], client=pipe)
            results = await pipe.execute()
        return {video_id: int(n) for video_id, n in zip(video_ids, results, strict=True)}

    # --- keeping members alive --------------------------------------------

    async def refresh_members(self) -> None:
        """Push the expiry of every member of this process PRESENCE_TTL ahead."""
        groups = {video_id: [self.member(v) for v in group.values()]
                  for video_id, group in self.local.items()}
        if not groups:
            return
        self._beating = True
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for video_id, members in groups.items():
                    for chunk in _chunks(members, MEMBERS_PER_CALL):
                        await self._refresh(keys=[self.set_key(video_id)],
                                            args=[self.ttl, self.key_ttl, *chunk],
                                            client=pipe)
                await pipe.execute()
        finally:
            self._beating = False
            left, self._left_while_beating = self._left_while_beating, []
        # A leave that overtook the refresh on another connection was undone by it.
        if left:
            await self._remove({v.video_id: [self.member(v)] for v in left})

    async def _remove(self, groups: dict[int, list[str]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for video_id, members in groups.items():
                for chunk in _chunks(members, MEMBERS_PER_CALL):
                    await self._leave(keys=[self.set_key(video_id)],
                                      args=[self.key(VIEWERS_CHANGED), video_id, *chunk],
                                      client=pipe)
            await pipe.execute()

    # --- lifecycle --------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._refresh_forever(), name="presence-refresh"),
            asyncio.create_task(self._poll_forever(), name="presence-poll"),
            asyncio.create_task(self._beat_forever(), name="presence-beat"),
        ]

    async def _refresh_forever(self) -> None:
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            raise_if_cancelled()
            self._wake.clear()
            now = loop.time()
            ready = [video_id for video_id, due in self._due.items() if due <= now]
            if not ready:
                wait = min(self._due.values(), default=None)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if wait is None else wait - now):
                        await self._wake.wait()
                continue
            for video_id in ready:
                del self._due[video_id]
                self._last_read[video_id] = now
            try:
                await self.refresh(ready)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.warning("presence refresh failing: %r", exc)
                failing = True
                continue
            if failing:
                log.warning("presence refresh recovered")
                failing = False

    async def _poll_forever(self) -> None:
        polls = 0
        while True:
            raise_if_cancelled()
            await asyncio.sleep(POLL)
            polls += 1
            for video_id in list(self.local):
                self.mark(video_id)
                if polls % VIEWS_POLLS == 0:
                    self.mark(video_id, views=True)

    async def _beat_forever(self) -> None:
        while True:
            raise_if_cancelled()
            await asyncio.sleep(self.beat_interval)
            try:
                await self.refresh_members()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("presence heartbeat failed: %r", exc)

    async def close_all(self) -> None:
        """Close every socket (1001 Going Away) so clients reconnect elsewhere."""
        self.closing = True
        viewers = [v for group in self.local.values() for v in group.values()]
        await asyncio.gather(*(self._close(v.ws) for v in viewers))

    @staticmethod
    async def _close(ws: web.WebSocketResponse) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                ws.close(code=WSCloseCode.GOING_AWAY, message=b"Server shutting down"),
                CLOSE_TIMEOUT,
            )

    async def stop(self) -> None:
        """Stop the background tasks and take this process's members out of Redis."""
        self.closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._leaving:
            await asyncio.wait(self._leaving)
        groups = {}
        for video_id, group in self.local.items():
            groups[video_id] = [self.member(v) for v in group.values()]
        self.local.clear()
        if groups:
            try:
                await self._remove(groups)
            except (RedisError, OSError) as exc:
                log.warning("could not remove viewers at shutdown (they expire): %s", exc)


PRESENCE_KEY: web.AppKey[PresenceHub] = web.AppKey("presence")


# --- the WebSocket -----------------------------------------------------------

async def active_viewers(request: web.Request) -> web.StreamResponse:
    """GET /videos/{id}/active-viewers: live counts; playback reports from the client."""
    app = request.app
    config = app[CONFIG_KEY]
    check_origin(request)
    row = await app[CATALOG_KEY].get(request.match_info["id"])
    # Only these live as long as the socket; the row (with its description) does not.
    video_id, duration, stored_views = row["id"], row["duration"], row["views"]
    del row
    ws = web.WebSocketResponse(heartbeat=config.heartbeat, compress=False,
                               max_msg_size=MAX_MESSAGE, timeout=CLOSE_TIMEOUT)
    if not ws.can_prepare(request).ok:
        raise ApiError(426, "upgrade_required", "Open this URL as a WebSocket",
                       {"Upgrade": "websocket", "Connection": "Upgrade"})
    hub = app[PRESENCE_KEY]
    if hub.closing:
        raise ApiError(503, "unavailable", "The server is shutting down")
    app[VIEWS_KEY].remember_duration(video_id, duration)
    await ws.prepare(request)
    viewer = Viewer(video_id, ws, request.transport)
    try:
        await hub.join(viewer, stored_views)
        await _receive(request, viewer, duration)
    except (RedisError, OSError) as exc:
        log.warning("viewer socket failed: %r", exc)
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"Try again later")
    except Exception:
        log.exception("viewer socket failed")
        await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"Internal error")
    finally:
        await hub.leave(viewer)
    return ws


async def _receive(request: web.Request, viewer: Viewer, duration: float | None) -> None:
    ws = viewer.ws
    counter = request.app[VIEWS_KEY]
    watcher = identify(request, optional_user(request))
    session = "ws-" + viewer.conn_id
    loop = asyncio.get_running_loop()
    last_report = -math.inf
    async for msg in ws:
        if msg.type is WSMsgType.ERROR:
            break
        if msg.type is not WSMsgType.TEXT:
            await _send_error(ws, "bad_message", "Send JSON text messages")
            continue
        try:
            body = json.loads(msg.data)
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            await _send_error(ws, "bad_message", "Messages must be JSON objects")
            continue
        kind = body.get("type")
        if kind == "progress":
            try:
                report = parse_report(body)
            except ReportError as exc:
                await _send_error(ws, "bad_message", str(exc))
                continue
            # Reports closer together than this cannot earn anything; they only cost.
            if loop.time() - last_report < MIN_REPORT_SPACING:
                continue
            last_report = loop.time()
            try:
                await counter.record(viewer.video_id, duration, watcher, session, report)
            except RedisError as exc:
                log.warning("progress report dropped: %s", exc)
        elif kind == "auth":
            user_id = _token_user(request, body.get("token"))
            if user_id is None:
                await _send_error(ws, "invalid_token", "The access token is invalid or expired")
                continue
            watcher = identify(request, user_id)
        else:
            await _send_error(ws, "bad_message", "Unknown message type")


def _token_user(request: web.Request, token: Any) -> int | None:
    return user_from_token(request.app, token.strip() if isinstance(token, str) else None)


async def _send_error(ws: web.WebSocketResponse, code: str, message: str) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_str(error_text(code, message))


# --- wiring ------------------------------------------------------------------

async def presence_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    bus = app[BUS_KEY]

    read_views = app[VIEWS_KEY].current

    hub = PresenceHub(app[REDIS_KEY], config.redis_prefix, config.presence_ttl, read_views)
    app[PRESENCE_KEY] = hub
    app[LIVE_COUNTS_KEY] = hub
    bus.on(bus.key(VIEWERS_CHANGED), hub.on_viewers_changed)
    bus.on(bus.key(VIEWS_CHANGED), hub.on_views_changed)
    hub.start()
    try:
        yield
    finally:
        await hub.stop()


async def close_sockets(app: web.Application) -> None:
    await app[PRESENCE_KEY].close_all()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(presence_ctx)
    app.on_shutdown.append(close_sockets)
    app.router.add_route("GET", "/videos/{id}/active-viewers", active_viewers,
                         name="active_viewers")
