"""Video and user changes, announced through PostgreSQL so that no outage can lose one.

A write that changes what a video is (created, deleted) records a row in
`video_changes` inside its own transaction (`record`), and NOTIFYs on commit.
A write that changes a user's standing (a ban, a role) records a row naming the
user instead (`record_user`); each row goes to the subscribers of its kind.
Every process keeps one connection of its own that LISTENs, and reads the rows
past the last one it saw whenever a notification arrives and at least every
POLL seconds; each change goes to the subscribers (the file cache, the view
counter, presence). Redis plays no part, so a change made while Redis is down
still reaches every process, and a notification lost with a broken connection
is found by the next read after it reconnects. The process that made a change
also applies it at once (`applied`), without waiting for its own read.

Reading "past the last seq seen" is only sound if rows become visible in seq
order; `record` takes a transaction-scoped advisory lock before the row takes
its seq, so the writers of change rows commit one after another. Old rows are
pruned from the front of the log and the newest row is always kept, so a
process back from a long outage can tell that rows it never read are gone and
then forgets everything it cached.
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
from .errors import first_line
from .loops import raise_if_cancelled, stop

log = logging.getLogger(__name__)

CHANNEL = "tubelet_video_changes"
POLL = 1.0
RECONNECT_MIN = 0.1
# A stream of a deleted video must stop within a second or two of the link coming back.
RECONNECT_MAX = 2.0
PRUNE_EVERY = 3600.0
KEEP_HOURS = 24
# The LIMIT of video_changes_since.
READ_BATCH = 1000

# Failures of the link, not of this code: one warning line, then quiet retries.
LINK_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError, OSError, TimeoutError)

# Called with a video id (a user id, for user subscribers), or None when changes
# may have been missed and everything cached about videos (users) must be forgotten.
Subscriber = Callable[[int | None], None]


class ChangeFeed:
    def __init__(self, dsn: str, queries: Queries, poll: float = POLL,
                 connect_timeout: float = 5.0) -> None:
        self._dsn = dsn
        self._queries = queries
        self._poll = poll
        self._connect_timeout = connect_timeout
        self._subscribers: list[Subscriber] = []
        self._user_subscribers: list[Subscriber] = []
        self._seq = 0
        # Changes this process applied itself and the feed has not read yet.
        self._own: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._next_prune = 0.0
        self.connected = False
        self._failing = False

    def subscribe(self, subscriber: Subscriber) -> None:
        """Hear of every changed video."""
        self._subscribers.append(subscriber)

    def subscribe_users(self, subscriber: Subscriber) -> None:
        """Hear of every changed user (banned, unbanned, given a role)."""
        self._user_subscribers.append(subscriber)

    async def record(self, cur: Statements, video_id: int, kind: str) -> int:
        """Record a change inside the caller's transaction; its seq, for `applied`.

        The change is announced on commit. Call this last in the transaction:
        it serialises every writer of changes until commit.
        """
        return await self._insert(cur, "record_video_change",
                                  {"video_id": video_id, "kind": kind})

    async def record_user(self, cur: Statements, user_id: int, kind: str) -> int:
        """Record a change of a user inside the caller's transaction; its seq, for
        `applied_user`. Call it last, as `record`."""
        return await self._insert(cur, "record_user_change", {"user_id": user_id, "kind": kind})

    async def record_videos(self, cur: Statements, video_ids: list[int],
                            kind: str) -> list[int]:
        """Record one change per video in one statement; their seqs, in `video_ids` order."""
        if not video_ids:
            return []
        await cur.execute(self._queries["record_video_changes"],
                          {"video_ids": video_ids, "kind": kind})
        rows = await cur.fetchall()
        seqs = {_column(row, 1, "video_id"): _column(row, 0, "seq") for row in rows}
        return [seqs[video_id] for video_id in video_ids]

    async def _insert(self, cur: Statements, query: str, params: dict[str, Any]) -> int:
        await cur.execute(self._queries[query], params)
        return _column(await cur.fetchone(), 0, "seq")

    def applied(self, video_id: int, seq: int) -> None:
        """Tell this process's subscribers now, after the recording transaction committed.

        The feed then skips the change when it reads it: a second eviction
        could throw away what a request cached since the first.
        """
        self._own_change(seq)
        self._dispatch(video_id)

    def applied_user(self, user_id: int, seq: int) -> None:
        """`applied`, for a change recorded with `record_user`."""
        self._own_change(seq)
        self._dispatch_user(user_id)

    def _own_change(self, seq: int) -> None:
        if seq > self._seq:
            self._own.add(seq)

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
        await stop(self._task)
        self._task = None

    def _dispatch(self, video_id: int | None) -> None:
        _notify(self._subscribers, video_id, "video")

    def _dispatch_user(self, user_id: int | None) -> None:
        _notify(self._user_subscribers, user_id, "user")

    async def _run(self) -> None:
        delay = RECONNECT_MIN
        while True:
            raise_if_cancelled()
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Whatever went wrong, the loop must go on: a feed that stops
                # leaves every cache of this process stale for good.
                if self.connected or not self._failing:
                    if isinstance(exc, LINK_ERRORS):
                        log.warning("video change feed lost (%s); reconnecting",
                                    first_line(exc))
                    else:
                        log.exception("video change feed failed; reconnecting")
                    delay = RECONNECT_MIN
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
                    await self._catch_up(cur)
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
            for seq, video_id, user_id, _kind in rows:
                self._seq = seq
                if seq in self._own:
                    self._own.discard(seq)
                elif video_id is not None:
                    self._dispatch(video_id)
                elif user_id is not None:
                    self._dispatch_user(user_id)
            if self._own:
                # Rows pruned before this process read them are never read.
                self._own = {seq for seq in self._own if seq > self._seq}
            if len(rows) < READ_BATCH:
                return

    async def _catch_up(self, cur: Any) -> None:
        """After an outage: read what was missed; if some of it was pruned, forget everything.

        The oldest row is read after the missed ones, so a prune in between can
        only make this forget more than it had to, never less.
        """
        last_seen = self._seq
        await self._read(cur)
        await cur.execute(self._queries["oldest_video_change"])
        row = await cur.fetchone()
        oldest = row[0] if row else None
        # Sequence numbers of rolled-back writes leave holes too; forgetting
        # everything for one of those costs a few cache misses.
        if oldest is not None and oldest > last_seen + 1:
            log.warning("video changes were pruned before this process read them; "
                        "dropping caches")
            self._dispatch(None)
            self._dispatch_user(None)

    async def _maybe_prune(self, cur: Any) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY
        await cur.execute(self._queries["prune_video_changes"], {"hours": KEEP_HOURS})


def _column(row: Any, index: int, name: str) -> int:
    """One integer column of a plain or a dict row."""
    return int(row[index] if isinstance(row, tuple | list) else row[name])


def _notify(subscribers: list[Subscriber], subject: int | None, what: str) -> None:
    for subscriber in subscribers:
        try:
            subscriber(subject)
        except Exception:
            log.exception("%s change subscriber failed", what)
