"""Feeds of listed videos: global (newest), following (newest from subscriptions), trending.

Trending ranks listed videos by

    engagement = views + 4 * likes - 2 * dislikes + 6 * comments   (at least 0)
    score      = (engagement + 1) / (age_hours + 2) ** 1.5

(Hacker News' gravity: a video needs ever more engagement to stay up as it ages).
The ranking is a snapshot, recomputed every TRENDING_REFRESH seconds by one
process at a time (an advisory lock; the others then find it fresh) and stored
in trending_ranks. A cursor names its snapshot and the last rank it showed, so a
reader pages through one fixed order while scores move. The newest KEEP_SNAPSHOTS
are kept: a cursor lives for at least two refresh intervals, after which it
answers 410 `cursor_expired` and the reader starts again.
"""

from __future__ import annotations

from typing import Any

from server.catalog.records import video_json, with_current_views
from server.core.db import Database, fetch_one
from server.core.keys import ViewTotals

from .rules import CursorExpired, encode_cursor

# Arbitrary constant naming the trending refresh among advisory locks.
TRENDING_LOCK_ID = 0x7472_656E
TRENDING_SIZE = 1000
KEEP_SNAPSHOTS = 3
# A snapshot younger than this share of the interval counts as fresh, so the
# processes' loops, started at different moments, do not each compute one.
FRESH_SHARE = 0.9

Page = tuple[list[dict[str, Any]], str | None]


class Feeds:
    def __init__(self, db: Database, totals: ViewTotals, refresh_every: float) -> None:
        self._db = db
        self._totals = totals
        self._refresh_every = refresh_every

    async def _items(self, rows: list[dict[str, Any]],
                     viewer: int | None) -> list[dict[str, Any]]:
        return [video_json(row, viewer) for row in await with_current_views(self._totals, rows)]

    async def newest(self, viewer: int | None, before_id: int | None, limit: int, *,
                     following: bool = False) -> Page:
        """Listed videos newest first: all of them, or those of the viewer's channels."""
        rows = await self._db.all("social_feed_following" if following else "social_feed_global",
                                  {"viewer": viewer, "before_id": before_id, "limit": limit})
        next_cursor = encode_cursor(rows[-1]["id"]) if len(rows) == limit else None
        return await self._items(rows, viewer), next_cursor

    async def trending(self, viewer: int | None, position: tuple[Any, ...] | None,
                       limit: int) -> Page:
        """A page of the trending ranking: the newest snapshot, or the cursor's."""
        if position is None:
            snapshot_id, after_rank = await self._latest(), 0
        else:
            snapshot_id, after_rank = position
            if await self._db.one("social_trending_exists", {"id": snapshot_id}) is None:
                raise CursorExpired()
        rows = await self._db.all("social_feed_trending", {
            "viewer": viewer, "snapshot_id": snapshot_id, "after_rank": after_rank,
            "limit": limit})
        next_cursor = None
        if len(rows) == limit:
            next_cursor = encode_cursor(snapshot_id, rows[-1]["trending_rank"])
        return await self._items(rows, viewer), next_cursor

    async def _latest(self) -> int:
        row = await self._db.one("social_trending_latest")
        if row is None:
            # Before the first refresh has run anywhere.
            return await self.refresh()
        return int(row["id"])

    async def refresh(self, *, force: bool = False) -> int:
        """Compute a new ranking snapshot unless a fresh one exists (or `force`); its id."""
        queries = self._db.queries
        async with self._db.transaction() as cur:
            await cur.execute(queries["social_trending_lock"], {"key": TRENDING_LOCK_ID})
            if not force:
                fresh = await fetch_one(cur, queries["social_trending_fresh"],
                                        {"max_age": self._refresh_every * FRESH_SHARE})
                if fresh is not None:
                    return int(fresh["id"])
            snapshot = await fetch_one(cur, queries["social_trending_new_snapshot"])
            assert snapshot is not None
            await cur.execute(queries["social_trending_rank"],
                              {"snapshot_id": snapshot["id"], "size": TRENDING_SIZE})
            await cur.execute(queries["social_trending_prune"], {"keep": KEEP_SNAPSHOTS})
        return int(snapshot["id"])
