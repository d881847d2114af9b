"""Comments with one level of replies, and the counts that go with them.

Counts change in the transaction that changes the rows: videos.comment_count
(comments not deleted, replies included) and comments.reply_count (reply rows).
Every such transaction locks the video row first, then the parent comment, then
the comment, so concurrent writers queue instead of deadlocking.

A comment deleted by its author while it has replies stays as a placeholder
(deleted, body emptied); deleting the last reply of a placeholder removes it too.
A comment removed by a moderator shows as a placeholder to everyone but its
author. Comments by banned users are hidden while the ban lasts, and a viewer
does not see the comments of users they blocked.
"""

from __future__ import annotations

from typing import Any

from server.accounts.policy import Action, Role, require
from server.catalog.records import VideoNotFound
from server.core.config import Config
from server.core.db import Database, Statements, fetch_one
from server.core.errors import Forbidden, Invalid, NotFound

from .access import lock_playable_video, require_active
from .rules import REPLY_PREVIEW, encode_cursor


class CommentNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No such comment")


def comment_json(row: dict[str, Any], viewer: int | None) -> dict[str, Any]:
    """The API's form of a comment. A deleted comment names nobody and says nothing;
    a removed one says nothing except to its author."""
    deleted = row["deleted_at"] is not None
    removed = row["removed_at"] is not None
    hide_body = deleted or (removed and viewer != row["author_id"])
    return {
        "id": row["id"],
        "video_id": row["video_id"],
        "author_id": None if deleted else row["author_id"],
        "author_name": None if deleted else row["author_name"],
        "parent_id": row["parent_id"],
        "body": "" if hide_body else row["body"],
        "created_at": row["created_at"].isoformat(),
        "edited_at": row["edited_at"].isoformat() if row["edited_at"] else None,
        "deleted": deleted,
        "removed": removed,
        "reply_count": row["reply_count"],
    }


class Comments:
    def __init__(self, db: Database, config: Config) -> None:
        self._db = db
        self._max_length = config.comment_max_length

    @property
    def max_length(self) -> int:
        return self._max_length

    async def create(self, video_id: int | None, author_id: int, body: str,
                     parent_id: int | None) -> dict[str, Any]:
        """A new comment (or reply) on a video its author may play; `body` is clean."""
        queries = self._db.queries
        async with self._db.transaction() as cur:
            await lock_playable_video(cur, queries, video_id, author_id)
            await require_active(cur, queries, author_id)
            if parent_id is not None:
                await self._lock_parent(cur, parent_id, video_id)
            row = await fetch_one(cur, queries["social_insert_comment"], {
                "video_id": video_id, "author_id": author_id, "parent_id": parent_id,
                "body": body})
            assert row is not None
            if parent_id is not None:
                await cur.execute(queries["social_add_reply_count"],
                                  {"id": parent_id, "delta": 1})
            await cur.execute(queries["social_add_comment_count"],
                              {"video_id": video_id, "delta": 1})
        return row

    async def _lock_parent(self, cur: Statements, parent_id: int,
                           video_id: int | None) -> None:
        parent = await fetch_one(cur, self._db.queries["social_lock_comment"],
                                 {"id": parent_id})
        if parent is None or parent["video_id"] != video_id:
            raise Invalid("'parent_id' names no comment on this video", "invalid_parent")
        if parent["parent_id"] is not None:
            raise Invalid("Replies cannot be replied to; reply to the comment they answer",
                          "nested_reply")
        if parent["deleted_at"] is not None or parent["removed_at"] is not None:
            raise Invalid("That comment was deleted or removed; it takes no new replies",
                          "invalid_parent")

    async def page(self, video_id: int | None, viewer: int | None, sort: str,
                   position: tuple[Any, ...] | None,
                   limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """A page of a video's top-level comments, each with its first replies."""
        await self._require_playable(video_id, viewer)
        params: dict[str, Any] = {"video_id": video_id, "viewer": viewer, "limit": limit,
                                  "before_id": None, "before_count": None}
        if sort == "top":
            if position is not None:
                params["before_count"], params["before_id"] = position
            rows = await self._db.all("social_comments_top", params)
        else:
            if position is not None:
                (params["before_id"],) = position
            rows = await self._db.all("social_comments_newest", params)
        replies: dict[int, list[dict[str, Any]]] = {row["id"]: [] for row in rows}
        if rows:
            for reply in await self._db.all("social_reply_previews", {
                    "parents": list(replies), "viewer": viewer, "per_parent": REPLY_PREVIEW}):
                replies[reply["parent_id"]].append(comment_json(reply, viewer))
        items = [{**comment_json(row, viewer), "replies": replies[row["id"]]} for row in rows]
        next_cursor = None
        if len(rows) == limit:
            last = rows[-1]
            next_cursor = encode_cursor(last["reply_count"], last["id"]) if sort == "top" \
                else encode_cursor(last["id"])
        return items, next_cursor

    async def replies(self, comment_id: int | None, viewer: int | None,
                      after_id: int | None,
                      limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """A page of a shown comment's replies, oldest first."""
        parent = None if comment_id is None else await self._db.one(
            "social_shown_comment", {"id": comment_id, "viewer": viewer})
        if parent is None:
            raise CommentNotFound()
        rows = await self._db.all("social_replies", {
            "parent_id": comment_id, "viewer": viewer, "after_id": after_id, "limit": limit})
        next_cursor = encode_cursor(rows[-1]["id"]) if len(rows) == limit else None
        return [comment_json(row, viewer) for row in rows], next_cursor

    async def edit(self, comment_id: int | None, user_id: int, body: str) -> dict[str, Any]:
        queries = self._db.queries
        async with self._db.transaction() as cur:
            current = await self._owned(cur, comment_id, user_id, Action.COMMENT_EDIT)
            if current["removed_at"] is not None:
                raise Forbidden("A moderator removed this comment; it cannot be edited",
                                "comment_removed")
            row = await fetch_one(cur, queries["social_edit_comment"],
                                  {"id": comment_id, "body": body})
        if row is None:
            raise CommentNotFound()
        return row

    async def delete(self, comment_id: int | None, user_id: int) -> None:
        """Delete a comment: its row, or a placeholder while it has replies."""
        queries = self._db.queries
        async with self._db.transaction() as cur:
            current = await self._owned(cur, comment_id, user_id, Action.COMMENT_DELETE)
            # Lock in the one order: the video, the parent, the comment.
            await cur.execute(queries["social_lock_video"], {"video_id": current["video_id"]})
            parent_id = current["parent_id"]
            if parent_id is not None:
                await cur.execute(queries["social_lock_comment"], {"id": parent_id})
            row = await fetch_one(cur, queries["social_lock_comment"], {"id": comment_id})
            if row is None or row["deleted_at"] is not None:
                raise CommentNotFound()
            if row["reply_count"] > 0:
                await cur.execute(queries["social_leave_placeholder"], {"id": comment_id})
            else:
                await cur.execute(queries["social_delete_comment_row"], {"id": comment_id})
            await cur.execute(queries["social_add_comment_count"],
                              {"video_id": row["video_id"], "delta": -1})
            if parent_id is not None:
                await self._reply_gone(cur, parent_id)

    async def _reply_gone(self, cur: Statements, parent_id: int) -> None:
        queries = self._db.queries
        parent = await fetch_one(cur, queries["social_add_reply_count"],
                                 {"id": parent_id, "delta": -1})
        if parent is not None and parent["reply_count"] == 0 \
                and parent["deleted_at"] is not None:
            # A placeholder with nothing left under it.
            await cur.execute(queries["social_delete_comment_row"], {"id": parent_id})

    async def _owned(self, cur: Statements, comment_id: int | None, user_id: int,
                     action: Action) -> dict[str, Any]:
        row = None if comment_id is None else await fetch_one(
            cur, self._db.queries["social_comment"], {"id": comment_id, "actor": user_id})
        if row is None or row["deleted_at"] is not None:
            raise CommentNotFound()
        role = Role(row["actor_role"]) if row["actor_role"] else Role.USER
        require(role, action, owner=row["author_id"] == user_id)
        return row

    async def _require_playable(self, video_id: int | None, viewer: int | None) -> None:
        row = None if video_id is None else await self._db.one(
            "social_playable_video", {"video_id": video_id, "viewer": viewer})
        if row is None:
            raise VideoNotFound()
