"""Honest view counting: watch time, dedup, caps, and the batched flush to PostgreSQL.

The pure parts are in `watch_rules` and `tally`; the Lua scripts beside this file.

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
import logging
import uuid
from collections.abc import Iterable
from pathlib import Path

import redis.asyncio as redis
from aiohttp import web
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from server.core.cache import LRU
from server.core.db import Database, fetch_one
from server.core.keyspace import Keyspace

from .identity import Watcher
from .tally import batch_counts, combine, decode_state, encode_state, pairs
from .watch_rules import Report, advance, required_watch

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
VIEWS_CHANGED = "views-changed"
SESSION_TTL = 120
IP_WINDOW = 3600
# Lua's unpack() has a stack limit; larger id lists are read in chunks.
CHUNK = 500
SNAPSHOT_ATTEMPTS = 4
PRUNE_AFTER_DAYS = 30
DURATION_CACHE_SIZE = 10_000
# The Redis client's pool refuses a 101st concurrent command; bursts wait here.
REDIS_CONCURRENCY = 32


def _lua(name: str) -> str:
    return (HERE / f"{name}.lua").read_text(encoding="utf-8")


class ViewCounter:
    def __init__(self, client: redis.Redis, db: Database, keys: Keyspace, *, secret: bytes,
                 window: int, ip_limit: int, min_watch: float) -> None:
        self.client = client
        self._db = db
        self.key = keys
        self.secret = secret
        self.window = window
        self.ip_limit = ip_limit
        self.min_watch = min_watch
        self._count = client.register_script(_lua("count_view"))
        self._seal = client.register_script(_lua("seal_batch"))
        self._finish = client.register_script(_lua("finish_batch"))
        self._snapshot = client.register_script(_lua("snapshot"))
        self._durations: LRU[int, float | None] = LRU(DURATION_CACHE_SIZE)
        # Bumped by every change: a read that began before one must not be cached.
        self._generation = 0
        self._slots = asyncio.Semaphore(REDIS_CONCURRENCY)
        # Views the flush at shutdown wrote; None until it ran, or if it failed.
        self.flushed_at_stop: int | None = None
        # Since start: views this process counted, and views its flushes wrote.
        self.counted = 0
        self.flushed = 0

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
            outcome = await self._record(key, video_id, duration, watcher, report)
        if outcome == "counted":
            self.counted += 1
        return outcome

    async def _record(self, key: str, video_id: int, duration: float | None,
                      watcher: Watcher, report: Report) -> str:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.time()
            raw, (seconds, micros) = await pipe.execute()
        now = seconds + micros / 1e6
        state = advance(decode_state(raw), report, now)
        reached = state.watched >= required_watch(duration, self.min_watch)
        fields: dict[FieldT, EncodableT] = {k: v for k, v in encode_state(state).items()}
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
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
            return True, self._durations.get(video_id)
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
            self._durations.pop(video_id)

    def remember_duration(self, video_id: int, duration: float | None) -> None:
        self._durations.put(video_id, duration)

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
            epoch, pending, batches = raw[0], raw[1], pairs(raw[2:])
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
        leftovers: set[bytes] = await self.client.smembers(self.batches_key)  # type: ignore[assignment]
        for leftover in sorted(leftovers):
            applied += await self._apply(leftover.decode())
        sealed = await self.seal()
        if sealed is not None:
            applied += await self._apply(sealed)
        self.flushed += applied
        return applied

    async def pending(self) -> int:
        """Views counted by every process and not yet batched for PostgreSQL."""
        values: list[bytes | str] = await self.client.hvals(self.pending_key)
        return sum(int(value) for value in values)

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
        raw: dict[bytes, bytes] = await self.client.hgetall(  # type: ignore[assignment]
            self.batch_key(batch_id))
        counts = batch_counts(raw)
        if not counts:
            return 0
        queries = self._db.queries
        async with self._db.transaction() as cur:
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
