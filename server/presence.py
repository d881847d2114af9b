"""Live "watching now" counts over WebSocket, shared by every process through Redis.

Presence follows Centrifugo's Redis presence: one sorted set per video,
`{prefix}:presence:{video}`, whose members are `{instance}:{connection}` scored
by the unix time they expire (Redis's clock, so processes need not agree on
time). Each process re-scores its own members every PRESENCE_TTL/3 (at most
15 s); the members of a process that dies without a goodbye age out within
PRESENCE_TTL. Counting removes expired members first.

Joins and leaves publish the video id on `{prefix}:viewers-changed`, counted
views on `{prefix}:views-changed`. A process that holds sockets for that video
marks it dirty; a ticker re-reads each dirty video once per TICK and hands one
JSON text to all its local sockets, so a burst of joins costs each socket at
most two messages a second. Every second the ticker also re-reads the count of
every local video, which is how expiries are noticed.

Each socket has a one-slot mailbox and its own sender task: a client that
stops reading only ever delays itself, and sees the latest state when it
catches up.
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

from .auth import optional_user
from .errors import ApiError
from .keys import BUS_KEY, CONFIG_KEY, PRESENCE_KEY, REDIS_KEY, VIEWS_KEY
from .streaming import parse_video_id
from .tokens import TokenError, read_access_token
from .videos import fetch_video
from .views import VIEWS_CHANGED, check_origin, identify
from .watch import ReportError, parse_report

log = logging.getLogger(__name__)

VIEWERS_CHANGED = "viewers-changed"
TICK = 0.5
# In ticks: every local count once a second, every local view total every 30 s
# (the latter only heals messages lost while pub/sub reconnected).
COUNTS_EVERY = 2
VIEWS_EVERY = 60
MAX_BEAT = 15.0
MEMBERS_PER_CALL = 1000
MAX_MESSAGE = 4096
MIN_REPORT_SPACING = 0.2
CLOSE_TIMEOUT = 5.0
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


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class Viewer:
    """One open socket: a one-slot mailbox drained by its own sender task."""

    __slots__ = ("video_id", "conn_id", "ws", "latest", "sent", "wake", "task", "joining")

    def __init__(self, video_id: int, ws: web.WebSocketResponse) -> None:
        self.video_id = video_id
        self.conn_id = secrets.token_hex(8)
        self.ws = ws
        self.latest: str | None = None
        self.sent: str | None = None
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.joining: asyncio.Future[int] | None = None

    def push(self, text: str) -> None:
        self.latest = text
        self.wake.set()


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
        self._counts: dict[int, int] = {}
        self._views: dict[int, int] = {}
        self._shown: dict[int, str] = {}
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
            self._dirty_counts.add(video_id)

    def on_views_changed(self, _channel: str, data: bytes) -> None:
        video_id = parse_video_id(data.decode("ascii", "replace"))
        if video_id in self.local:
            self._dirty_views.add(video_id)

    # --- joining and leaving ----------------------------------------------

    async def join(self, viewer: Viewer, stored_views: int) -> None:
        """Count `viewer` everywhere and send it the current numbers."""
        video_id = viewer.video_id
        self.local.setdefault(video_id, {})[viewer.conn_id] = viewer
        viewer.task = asyncio.create_task(self._send_forever(viewer), name="viewer-send")
        # Shielded, like the removal: a handler cancelled because its client
        # vanished must not leave Redis half-updated.
        viewer.joining = asyncio.ensure_future(self._add(viewer))
        count = await asyncio.shield(viewer.joining)
        views = await self._views_of(video_id, stored_views)
        viewer.push(state_text(video_id, count, views))
        self._dirty_counts.add(video_id)

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
        if viewer.task is not None:
            viewer.task.cancel()
        if self.closing:
            return  # stop() removes every member of this process at once
        video_id = viewer.video_id
        group = self.local.get(video_id)
        if group is None or group.pop(viewer.conn_id, None) is None:
            return
        if not group:
            self._forget(video_id)
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
        for table in (self.local, self._counts, self._views, self._shown):
            table.pop(video_id, None)

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
            self._dirty_views.add(video_id)
            return fallback
        if video_id in self.local:
            self._views[video_id] = views
        return views

    # --- sending ----------------------------------------------------------

    async def _send_forever(self, viewer: Viewer) -> None:
        while True:
            await viewer.wake.wait()
            viewer.wake.clear()
            text = viewer.latest
            if text is None or text == viewer.sent:
                continue
            if viewer.ws.closed:
                return
            try:
                await viewer.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return
            viewer.sent = text
            self.messages_sent += 1

    async def tick(self, *, all_counts: bool = False, all_views: bool = False) -> None:
        """Re-read what changed (or everything) and broadcast what differs from last time.

        Counts come from Redis and view totals also from PostgreSQL; either
        failing leaves its videos dirty for the next tick without holding up
        the other.
        """
        local = set(self.local)
        count_ids = local if all_counts else self._dirty_counts & local
        view_ids = local if all_views else self._dirty_views & local
        self._dirty_counts.clear()
        self._dirty_views.clear()
        counts: dict[int, int] = {}
        views: dict[int, int] = {}
        failure: Exception | None = None
        try:
            counts = await self._read_counts(sorted(count_ids))
        except Exception as exc:
            self._dirty_counts |= count_ids
            failure = exc
        try:
            views = await self._read_views(sorted(view_ids)) if view_ids else {}
        except Exception as exc:
            self._dirty_views |= view_ids
            failure = exc
        for video_id in counts.keys() | views.keys():
            group = self.local.get(video_id)
            if not group:
                continue
            if video_id in counts:
                self._counts[video_id] = counts[video_id]
            if video_id in views:
                self._views[video_id] = views[video_id]
            text = state_text(video_id, self._counts.get(video_id, 0),
                              self._views.get(video_id, 0))
            if self._shown.get(video_id) != text:
                self._shown[video_id] = text
                for viewer in group.values():
                    viewer.push(text)
        if failure is not None:
            raise failure

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
            asyncio.create_task(self._tick_forever(), name="presence-tick"),
            asyncio.create_task(self._beat_forever(), name="presence-beat"),
        ]

    async def _tick_forever(self) -> None:
        ticks = 0
        failing = False
        while True:
            await asyncio.sleep(TICK)
            ticks += 1
            try:
                await self.tick(all_counts=ticks % COUNTS_EVERY == 0,
                                all_views=ticks % VIEWS_EVERY == 0)
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

    async def _beat_forever(self) -> None:
        while True:
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
            for viewer in group.values():
                if viewer.task is not None:
                    viewer.task.cancel()
            groups[video_id] = [self.member(v) for v in group.values()]
        self.local.clear()
        if groups:
            try:
                await self._remove(groups)
            except (RedisError, OSError) as exc:
                log.warning("could not remove viewers at shutdown (they expire): %s", exc)


# --- the WebSocket -----------------------------------------------------------

async def active_viewers(request: web.Request) -> web.StreamResponse:
    """GET /videos/{id}/active-viewers: live counts; playback reports from the client."""
    app = request.app
    config = app[CONFIG_KEY]
    check_origin(request)
    row = await fetch_video(app, request.match_info["id"])
    ws = web.WebSocketResponse(heartbeat=config.heartbeat, compress=False,
                               max_msg_size=MAX_MESSAGE, timeout=CLOSE_TIMEOUT)
    if not ws.can_prepare(request).ok:
        raise ApiError(426, "upgrade_required", "Open this URL as a WebSocket",
                       {"Upgrade": "websocket", "Connection": "Upgrade"})
    hub = app[PRESENCE_KEY]
    if hub.closing:
        raise ApiError(503, "unavailable", "The server is shutting down")
    app[VIEWS_KEY].remember_duration(row["id"], row["duration"])
    await ws.prepare(request)
    viewer = Viewer(row["id"], ws)
    try:
        await hub.join(viewer, row["views"])
        await _receive(request, viewer, row["duration"])
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
    if not isinstance(token, str) or not token:
        return None
    config = request.app[CONFIG_KEY]
    try:
        return read_access_token(token.strip(), config.jwt_secret, config.jwt_algorithm)
    except TokenError:
        return None


async def _send_error(ws: web.WebSocketResponse, code: str, message: str) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_str(error_text(code, message))


# --- wiring ------------------------------------------------------------------

async def presence_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    bus = app[BUS_KEY]

    def read_views(video_ids: Iterable[int]) -> Awaitable[dict[int, int]]:
        return app[VIEWS_KEY].current(app, video_ids)

    hub = PresenceHub(app[REDIS_KEY], config.redis_prefix, config.presence_ttl, read_views)
    app[PRESENCE_KEY] = hub
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
