"""Likes and dislikes: one reaction per user per video, counted exactly.

A change locks the video row first (social_lock_playable_video), then reads the
user's reaction, writes the new one and adds the difference to the counts, all in
one transaction. Every reaction change on a video queues on that lock, so the
reaction it reads is the latest and the counts always equal the rows.
"""

from __future__ import annotations

from typing import Any

from server.core.db import Database, fetch_one

from .access import lock_playable_video, require_active
from .rules import reaction_delta


class Reactions:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def set(self, video_id: int | None, user_id: int, kind: str | None) -> dict[str, Any]:
        """Make `kind` (None: no reaction) the user's reaction; the video's counts after."""
        queries = self._db.queries
        key = {"video_id": video_id, "user_id": user_id}
        async with self._db.transaction() as cur:
            await lock_playable_video(cur, queries, video_id, user_id)
            await require_active(cur, queries, user_id)
            old = await fetch_one(cur, queries["social_reaction"], key)
            old_kind = old["kind"] if old else None
            if kind is None:
                await cur.execute(queries["social_delete_reaction"], key)
            elif kind != old_kind:
                await cur.execute(queries["social_put_reaction"], {**key, "kind": kind})
            likes, dislikes = reaction_delta(old_kind, kind)
            counts = await fetch_one(cur, queries["social_add_reaction_counts"],
                                     {"video_id": video_id, "likes": likes,
                                      "dislikes": dislikes})
        assert counts is not None
        return {"like_count": counts["like_count"], "dislike_count": counts["dislike_count"],
                "my_reaction": kind}
