"""Which videos and users a social action may touch; shared by comments and reactions."""

from __future__ import annotations

from typing import Any

from server.catalog.records import UserNotFound, VideoNotFound
from server.core.db import Queries, Statements, fetch_one
from server.core.errors import Forbidden

__all__ = ["UserNotFound", "VideoNotFound", "lock_playable_video", "require_active"]


async def lock_playable_video(cur: Statements, queries: Queries, video_id: int | None,
                              viewer: int) -> dict[str, Any]:
    """Lock the row of a video `viewer` may play (listed, unlisted, or private and
    theirs) for a change of its counters; VideoNotFound for any other."""
    row = None if video_id is None else await fetch_one(
        cur, queries["social_lock_playable_video"], {"video_id": video_id, "viewer": viewer})
    if row is None:
        raise VideoNotFound()
    return row


async def require_active(cur: Statements, queries: Queries, user_id: int) -> dict[str, Any]:
    """The acting user, who must exist and not be banned (403 `banned`)."""
    row = await fetch_one(cur, queries["social_active_user"], {"id": user_id})
    if row is None:
        raise Forbidden("This account is banned", "banned")
    return row
