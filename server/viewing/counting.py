"""Honest view counting: watch time, dedup, caps, and the batched flush to PostgreSQL.

Redis holds everything that changes often:

    {prefix}:watch:{video}:{viewer}:{session}  hash  one playback session (TTL)
    {prefix}:viewed:{video}:{viewer}           flag  a view was counted (TTL VIEW_WINDOW)
    {prefix}:ipviews:{ip hash}:{hour}          int   views one address added this hour
    {prefix}:views:pending                     hash  video id -> views not yet batched
    {prefix}:views:batch:{uuid}                hash  a batch being applied to PostgreSQL
    {prefix}:views:batches                     set   uuids of batches being applied
    {prefix}:views:epoch                       int   bumped whenever pending or batches move

A flush renames `pending` to a new batch, applies the batch and records its uuid
in `view_batches` in one transaction, then deletes it. A crash at any point
leaves either an unapplied batch (applied by the next flush, anywhere) or an
applied one (the uuid makes re-applying it a no-op).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from aiohttp import web
from redis.exceptions import RedisError

from server.accounts.auth import optional_user
from server.core.clients import (
    client_ip,
    from_trusted_proxy,
    hash_secret,
    ip_key,
    is_bot,
    viewer_key,
)
from server.core.db import Database, fetch_one
from server.core.errors import ApiError
from server.core.ids import parse_video_id
from server.core.keys import CHANGES_KEY, CONFIG_KEY, DB_KEY, REDIS_KEY, VIEW_TOTALS_KEY
from server.core.loops import raise_if_cancelled
from server.core.origins import origin_allowed, own_origin
from server.core.validation import read_json_object

from .watch_rules import (
    Report,
    ReportError,
    WatchState,
    advance,
    parse_report,
    parse_session,
    required_watch,
)

log = logging.getLogger(__name__)

VIEWS_CHANGED = "views-changed"
SESSION_TTL = 120
IP_WINDOW = 3600
# Lua's unpack() has a stack limit; larger id lists are read in chunks.
CHUNK = 500
SNAPSHOT_ATTEMPTS = 4
SHUTDOWN_FLUSH_TIMEOUT = 15.0
PRUNE_EVERY = 3600.0
PRUNE_AFTER_DAYS = 30
DURATION_CACHE_SIZE = 10_000
# The Redis client's pool refuses a 101st concurrent command; bursts wait here.
REDIS_CONCURRENCY = 32

# Dedup, the per-address cap and the pending increment happen together or not
# at all, so no crash or retry can count a view twice.
COUNT_VIEW = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'duplicate' end
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[3]) then
  return 'ip_limit'
end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[2])
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('PUBLISH', ARGV[5], ARGV[1])
return 'counted'
"""

SEAL_BATCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[3])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[4])
return 1
"""

FINISH_BATCH = """
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('INCR', KEYS[3])
return 1
"""

SNAPSHOT = """
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
local out = {redis.call('GET', KEYS[3]) or '0', redis.call('HMGET', KEYS[1], unpack(ids))}
for _, batch in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  out[#out + 1] = batch
  out[#out + 1] = redis.call('HMGET', ARGV[1] .. batch, unpack(ids))
end
return out
"""


@dataclass(frozen=True, slots=True)
class Watcher:
    """Who reports playback: the viewer's key, the address bucket's key, and bot or not."""

    viewer: str
    ip: str
    bot: bool


class ViewCounter:
    def __init__(self, client: redis.Redis, db: Database, prefix: str, *, secret: bytes,
                 window: int, ip_limit: int, min_watch: float) -> None:
        self.client = client
        self._db = db
        self.prefix = prefix
        self.secret = secret
        self.window = window
        self.ip_limit = ip_limit
        self.min_watch = min_watch
        self._count = client.register_script(COUNT_VIEW)
        self._seal = client.register_script(SEAL_BATCH)
        self._finish = client.register_script(FINISH_BATCH)
        self._snapshot = client.register_script(SNAPSHOT)
        self._durations: OrderedDict[int, float | None] = OrderedDict()
        # Bumped by every change: a read that began before one must not be cached.
        self._generation = 0
        self._slots = asyncio.Semaphore(REDIS_CONCURRENCY)
        # Views the flush at shutdown wrote; None until it ran, or if it failed.
        self.flushed_at_stop: int | None = None

    def key(self, *parts: object) -> str:
        return ":".join([self.prefix, *(str(p) for p in parts)])

    @property
    def pending_key(self) -> str:
        return self.key("views", "pending")

    @property
    def batches_key(self) -> str:
        return self.key("views", "batches")

    @property
    def epoch_key(self) -> str:
        return self.key("views", "epoch")

    def batch_key(self, batch_id: str) -> str:
        return self.key("views", "batch", batch_id)

    # --- counting ---------------------------------------------------------

    async def record(self, video_id: int, duration: float | None, watcher: Watcher,
                     session: str, report: Report) -> str:
        """Apply one playback report; the outcome is `watching`, `counted`,
        `duplicate`, `ip_limit` or `bot`."""
        if watcher.bot:
            return "bot"
        key = self.key("watch", video_id, watcher.viewer, session)
        async with self._slots:
            return await self._record(key, video_id, duration, watcher, report)

    async def _record(self, key: str, video_id: int, duration: float | None,
                      watcher: Watcher, report: Report) -> str:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.time()
            raw, (seconds, micros) = await pipe.execute()
        now = seconds + micros / 1e6
        state = advance(decode_state(raw), report, now)
        reached = state.watched >= required_watch(duration, self.min_watch)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=encode_state(state))
            pipe.expire(key, SESSION_TTL)
            if reached:
                hour = int(now // IP_WINDOW)
                await self._count(
                    keys=[self.key("viewed", video_id, watcher.viewer),
                          self.key("ipviews", watcher.ip, hour), self.pending_key],
                    args=[video_id, self.window, self.ip_limit, IP_WINDOW + 60,
                          self.key(VIEWS_CHANGED)],
                    client=pipe,
                )
            results = await pipe.execute()
        return results[-1].decode() if reached else "watching"

    async def duration(self, video_id: int) -> tuple[bool, float | None]:
        """(exists, duration) of a video; cached until the change feed reports a change."""
        if video_id in self._durations:
            self._durations.move_to_end(video_id)
            return True, self._durations[video_id]
        generation = self._generation
        row = await self._db.one("video_duration", {"id": video_id})
        if row is None:
            return False, None
        if generation == self._generation:
            self.remember_duration(video_id, row["duration"])
        return True, row["duration"]

    def changed(self, video_id: int | None) -> None:
        """A change feed subscriber: a deleted video must stop earning views at once."""
        self._generation += 1
        if video_id is None:
            self._durations.clear()
        else:
            self._durations.pop(video_id, None)

    def remember_duration(self, video_id: int, duration: float | None) -> None:
        self._durations[video_id] = duration
        self._durations.move_to_end(video_id)
        while len(self._durations) > DURATION_CACHE_SIZE:
            self._durations.popitem(last=False)

    # --- reading ----------------------------------------------------------

    async def current(self, video_ids: Iterable[int]) -> dict[int, int]:
        """Stored views plus pending ones, for each of `video_ids` that exists."""
        ids = sorted(set(video_ids))
        out: dict[int, int] = {}
        for start in range(0, len(ids), CHUNK):
            out.update(await self._current_chunk(ids[start:start + CHUNK]))
        return out

    async def _current_chunk(self, ids: list[int]) -> dict[int, int]:
        # Redis and PostgreSQL cannot be read in one snapshot. The epoch says
        # whether a batch was sealed or finished in between; if so, read again.
        # A batch applied in between is recognised by its uuid in the same
        # statement that reads the stored counts.
        totals: dict[int, int] = {}
        for _ in range(SNAPSHOT_ATTEMPTS):
            async with self._slots:
                raw = await self._snapshot(
                    keys=[self.pending_key, self.batches_key, self.epoch_key],
                    args=[self.key("views", "batch", ""), *ids],
                )
            epoch, pending, batches = raw[0], raw[1], _pairs(raw[2:])
            rows = await self._db.all("views_snapshot", {
                "ids": ids, "batches": [b.decode() for b in batches],
            })
            totals = combine(ids, rows, pending, batches)
            async with self._slots:
                unchanged = (await self.client.get(self.epoch_key) or b"0") == epoch
            if unchanged:
                break
        return totals

    # --- flushing ---------------------------------------------------------

    async def flush(self) -> int:
        """Apply leftover batches, then batch and apply what is pending.

        Returns the number of views added to PostgreSQL. Raises if PostgreSQL
        or Redis fails; whatever was not applied stays in Redis for the next try.
        """
        applied = 0
        for batch_id in sorted(await self.client.smembers(self.batches_key)):
            applied += await self._apply(batch_id.decode())
        batch_id = await self.seal()
        if batch_id is not None:
            applied += await self._apply(batch_id)
        return applied

    async def seal(self) -> str | None:
        """Move the pending views into a new in-flight batch; its uuid, or None."""
        batch_id = str(uuid.uuid4())
        sealed = await self._seal(
            keys=[self.pending_key, self.batches_key, self.batch_key(batch_id),
                  self.epoch_key],
            args=[batch_id],
        )
        return batch_id if sealed else None

    async def apply_to_database(self, batch_id: str) -> int:
        """Add one batch to videos.views unless it was added before; the views added.

        Views of a video deleted since they were counted are dropped.
        """
        raw = await self.client.hgetall(self.batch_key(batch_id))
        counts = batch_counts(raw)
        if not counts:
            return 0
        queries = self._db.queries
        async with self._db.cursor() as cur, cur.begin():
            await cur.execute(queries["lock_view_flush"])
            claimed = await fetch_one(cur, queries["claim_view_batch"], {"id": batch_id})
            if claimed is None:
                return 0
            ids = sorted(counts)
            added = await fetch_one(cur, queries["add_views"], {
                "id": batch_id, "ids": ids, "counts": [counts[i] for i in ids]})
        assert added is not None
        return int(added["views"])

    async def finish(self, batch_id: str) -> None:
        """Forget an applied batch in Redis."""
        await self._finish(
            keys=[self.batches_key, self.batch_key(batch_id), self.epoch_key],
            args=[batch_id],
        )

    async def _apply(self, batch_id: str) -> int:
        applied = await self.apply_to_database(batch_id)
        await self.finish(batch_id)
        return applied

    async def prune(self) -> None:
        await self._db.execute("prune_view_batches", {"days": PRUNE_AFTER_DAYS})

    async def with_pending(self, stored: dict[int, int]) -> dict[int, int]:
        """Views including pending ones; the stored counts if Redis cannot be read."""
        try:
            totals = await self.current(stored)
        except RedisError as exc:
            log.warning("pending views unavailable: %s", exc)
            return dict(stored)
        return {video_id: totals.get(video_id, views) for video_id, views in stored.items()}


VIEWS_KEY: web.AppKey[ViewCounter] = web.AppKey("views")


# --- pure helpers ------------------------------------------------------------

def encode_state(state: WatchState) -> dict[str, str]:
    return {"p": repr(state.position), "t": repr(state.at), "w": repr(state.watched),
            "s": "1" if state.playing else "0"}


def decode_state(raw: dict[bytes, bytes]) -> WatchState | None:
    try:
        return WatchState(float(raw[b"p"]), float(raw[b"t"]), float(raw[b"w"]),
                          raw[b"s"] == b"1")
    except (KeyError, ValueError):
        return None


def batch_counts(raw: dict[bytes, bytes]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for field, value in raw.items():
        try:
            video_id, n = int(field), int(value)
        except ValueError:
            continue
        if n > 0:
            counts[video_id] = n
    return counts


def _pairs(flat: list[Any]) -> dict[bytes, list[bytes | None]]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _int(value: bytes | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def combine(ids: list[int], rows: list[dict[str, Any]], pending: list[bytes | None],
            batches: dict[bytes, list[bytes | None]]) -> dict[int, int]:
    """Stored + pending + every in-flight batch the database has not applied yet."""
    stored = {row["id"]: row["views"] for row in rows}
    applied = {a.encode() for row in rows for a in row["applied"]}
    unapplied = [counts for batch, counts in batches.items() if batch not in applied]
    totals = {}
    for i, video_id in enumerate(ids):
        if video_id not in stored:
            continue
        totals[video_id] = (stored[video_id] + _int(pending[i])
                            + sum(_int(counts[i]) for counts in unapplied))
    return totals


# --- HTTP --------------------------------------------------------------------

def check_origin(request: web.Request) -> None:
    """Refuse requests made by pages of other origins (they would watch for their visitors)."""
    config = request.app[CONFIG_KEY]
    scheme = request.scheme
    proto = request.headers.get("X-Forwarded-Proto")
    if proto and from_trusted_proxy(request.remote, config.trusted_proxies):
        scheme = proto.split(",", 1)[0].strip().lower()
    own = own_origin(scheme, request.host)
    if not origin_allowed(request.headers.get("Origin"), own, config.allowed_origins):
        raise ApiError(403, "origin_not_allowed", "Requests from this origin are not allowed")


def identify(request: web.Request, user_id: int | None) -> Watcher:
    config = request.app[CONFIG_KEY]
    secret = request.app[VIEWS_KEY].secret
    forwarded = ", ".join(request.headers.getall("X-Forwarded-For", ())) or None
    address = client_ip(request.remote, forwarded, config.trusted_proxies)
    agent = request.headers.get("User-Agent", "")
    return Watcher(viewer_key(user_id, address, agent, secret), ip_key(address, secret),
                   is_bot(agent))


async def report_progress(request: web.Request) -> web.Response:
    """POST /videos/{id}/views: playback progress from a client without a WebSocket."""
    check_origin(request)
    # A cross-site form can send text/plain without a preflight; JSON it cannot.
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the report as application/json")
    video_id = parse_video_id(request.match_info["id"])
    counter = request.app[VIEWS_KEY]
    exists, duration = (False, None) if video_id is None \
        else await counter.duration(video_id)
    if not exists:
        raise ApiError(404, "not_found", "No such video")
    assert video_id is not None
    body = await read_json_object(request)
    try:
        report = parse_report(body)
        session = parse_session(body)
    except ReportError as exc:
        raise ApiError(422, "validation_error", str(exc)) from None
    watcher = identify(request, optional_user(request))
    try:
        await counter.record(video_id, duration, watcher, "app-" + session, report)
    except RedisError as exc:
        log.warning("progress report dropped: %s", exc)
        raise ApiError(503, "unavailable", "View counting is unavailable; retry later",
                       {"Retry-After": "5"}) from None
    return web.Response(status=204)


# --- lifecycle ---------------------------------------------------------------

async def _flush_forever(counter: ViewCounter, interval: float) -> None:
    # The first pass runs at start-up: it applies what a crashed process left.
    next_prune = time.monotonic()
    # An outage is one line when flushes start failing and one when they recover.
    failing = False
    while True:
        raise_if_cancelled()
        try:
            await counter.flush()
            if time.monotonic() >= next_prune:
                await counter.prune()
                next_prune = time.monotonic() + PRUNE_EVERY
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not failing:
                log.warning("view flush failed, will retry; counted views wait in Redis: %r", exc)
            failing = True
        else:
            if failing:
                log.warning("view flush recovered")
            failing = False
        raise_if_cancelled()
        await asyncio.sleep(interval)


async def views_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    counter = ViewCounter(
        app[REDIS_KEY], app[DB_KEY], config.redis_prefix, secret=hash_secret(config.jwt_secret),
        window=config.view_window, ip_limit=config.view_ip_limit,
        min_watch=config.view_min_watch,
    )
    app[VIEWS_KEY] = counter
    app[VIEW_TOTALS_KEY] = counter
    app[CHANGES_KEY].subscribe(counter.changed)
    task = asyncio.create_task(_flush_forever(counter, config.view_flush_interval),
                               name="view-flush")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            counter.flushed_at_stop = await asyncio.wait_for(counter.flush(),
                                                             SHUTDOWN_FLUSH_TIMEOUT)
        except Exception as exc:
            log.warning("final view flush failed; pending views stay in Redis: %r", exc)


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(views_ctx)
    app.router.add_route("POST", "/videos/{id}/views", report_progress, name="view_progress")
