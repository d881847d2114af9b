"""Video changes, announced through PostgreSQL so that no outage can lose one.

A write that changes what a video is (created, deleted) records a row in
`video_changes` inside its own transaction (`record`), and NOTIFYs on commit.
Every process keeps one connection of its own that LISTENs, and reads the rows
past the last one it saw whenever a notification arrives and at least every
POLL seconds; each change goes to the subscribers (the file cache, the view
counter, presence). Redis plays no part, so a change made while Redis is down
still reaches every process, and a notification lost with a broken connection
is found by the next read after it reconnects. The process that made a change
also applies it at once (`applied`), without waiting for its own read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiopg
import psycopg2

from .db import Queries, Statements
from .loops import raise_if_cancelled

log = logging.getLogger(__name__)

CHANNEL = "tubelet_video_changes"
POLL = 1.0
RECONNECT_MAX = 5.0
PRUNE_EVERY = 3600.0
KEEP_HOURS = 24

# Called with a video id, or None when changes may have been missed and every
# cached video must be forgotten.
Subscriber = Callable[[int | None], None]


class ChangeFeed:
    def __init__(self, dsn: str, queries: Queries, poll: float = POLL,
                 connect_timeout: float = 5.0) -> None:
        self._dsn = dsn
        self._queries = queries
        self._poll = poll
        self._connect_timeout = connect_timeout
        self._subscribers: list[Subscriber] = []
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._next_prune = 0.0
        self.connected = False
        self._failing = False

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    async def record(self, cur: Statements, video_id: int, kind: str) -> None:
        """Record a change inside the caller's transaction; it is announced on commit."""
        await cur.execute(self._queries["record_video_change"],
                          {"video_id": video_id, "kind": kind})

    def applied(self, video_id: int) -> None:
        """Tell this process's subscribers now, after the recording transaction committed."""
        self._dispatch(video_id)

    async def start(self) -> None:
        """Begin after the changes made so far: caches start empty anyway."""
        async with asyncio.timeout(self._connect_timeout), \
                aiopg.connect(self._dsn, timeout=self._connect_timeout) as conn, \
                conn.cursor() as cur:
            await cur.execute(self._queries["last_video_change"])
            row = await cur.fetchone()
        self._seq = int(row[0]) if row else 0
        self._task = asyncio.create_task(self._run(), name="video-changes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _dispatch(self, video_id: int | None) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(video_id)
            except Exception:
                log.exception("video change subscriber failed")

    async def _run(self) -> None:
        delay = 0.1
        while True:
            raise_if_cancelled()
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except (psycopg2.Error, OSError, TimeoutError) as exc:
                if self.connected or not self._failing:
                    log.warning("video change feed lost (%s); reconnecting", _first_line(exc))
                    delay = 0.1
                self.connected = False
                self._failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)

    async def _listen(self) -> None:
        async with asyncio.timeout(self._connect_timeout):
            conn = await aiopg.connect(self._dsn, timeout=self._connect_timeout)
        try:
            async with conn.cursor() as cur:
                await cur.execute(f"LISTEN {CHANNEL}")
                if self._failing:
                    await self._check_gap(cur)
                    log.warning("video change feed recovered")
                    self._failing = False
                self.connected = True
                while True:
                    raise_if_cancelled()
                    await self._read(cur)
                    await self._maybe_prune(cur)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._poll):
                            await conn.notifies.get()
                    while not conn.notifies.empty():
                        conn.notifies.get_nowait()
        finally:
            conn.close()

    async def _read(self, cur: Any) -> None:
        while True:
            await cur.execute(self._queries["video_changes_since"], {"seq": self._seq})
            rows = await cur.fetchall()
            for seq, video_id, _kind in rows:
                self._seq = seq
                self._dispatch(video_id)
            if len(rows) < 1000:
                return

    async def _check_gap(self, cur: Any) -> None:
        """After an outage: if rows we never read were pruned, forget everything."""
        await cur.execute(self._queries["oldest_video_change"])
        row = await cur.fetchone()
        oldest = row[0] if row else None
        if oldest is not None and oldest > self._seq + 1:
            log.warning("video changes were missed while disconnected; dropping caches")
            self._dispatch(None)

    async def _maybe_prune(self, cur: Any) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY
        await cur.execute(self._queries["prune_video_changes"], {"hours": KEEP_HOURS})


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
