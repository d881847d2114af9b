"""Moderators' and administrators' actions.

Each action is one transaction: the change itself, its audit log row, and the
open reports on its target closed ('actioned'; a dismissal closes them as
'dismissed'). Announcements to other processes (a video change, a ban) are
recorded last in that transaction and applied in this process after the commit.

Acting twice (removing a removed video, restoring one that is not removed,
unbanning someone not banned, dismissing a closed report) is a 409: two
moderators working the same queue learn that the other was first, and the log
holds one row per change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from server.accounts.policy import Action, Role, require
from server.accounts.standing import Standing, UserNotFound
from server.core.changes import ChangeFeed
from server.core.db import Database, Statements, fetch_one
from server.core.errors import ApiError, NotFound
from server.core.ids import parse_id

from . import log


@dataclass(frozen=True, slots=True)
class Actor:
    id: int
    role: Role


class Conflict(ApiError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(409, code, message)


def target_id(raw: str, what: str) -> int:
    """A target's id from a path segment; 404 for any other spelling."""
    value = parse_id(raw)
    if value is None:
        raise NotFound(f"No such {what}")
    return value


class Moderation:
    def __init__(self, db: Database, changes: ChangeFeed, standing: Standing) -> None:
        self._db = db
        self._queries = db.queries
        self._changes = changes
        self._standing = standing

    async def actor(self, user_id: int, action: Action) -> Actor:
        """Who acts, if their role allows `action` at all (403 otherwise)."""
        try:
            role = await self._standing.role(user_id)
        except UserNotFound:
            # A valid token of an account deleted since.
            raise ApiError(401, "invalid_token", "The account no longer exists") from None
        require(role, action)
        return Actor(user_id, role)

    # --- videos -------------------------------------------------------------

    async def remove_video(self, actor: Actor, video_id: int, reason: str) -> dict[str, Any]:
        return await self._video(actor, video_id, reason, remove=True)

    async def restore_video(self, actor: Actor, video_id: int, reason: str) -> dict[str, Any]:
        return await self._video(actor, video_id, reason, remove=False)

    async def _video(self, actor: Actor, video_id: int, reason: str, *,
                     remove: bool) -> dict[str, Any]:
        action = Action.VIDEO_REMOVE if remove else Action.VIDEO_RESTORE
        async with self._db.transaction() as cur:
            video = await self._lock(cur, "moderation_lock_video", video_id, "video")
            self._check(actor, action, video)
            if remove and video["removed_at"] is not None:
                raise Conflict("already_removed", "This video is already removed")
            if not remove and video["removed_at"] is None:
                raise Conflict("not_removed", "This video is not removed")
            await cur.execute(self._queries["moderation_remove_video" if remove
                                             else "moderation_restore_video"],
                              {"id": video_id, "reason": reason})
            result = await self._close(cur, actor, action, "video", video_id, reason,
                                       {"author_id": video["author_id"]})
            # Last: it serialises writers of changes until the commit.
            seq = await self._changes.record(cur, video_id, "removed" if remove else "restored")
        self._changes.applied(video_id, seq)
        return {**result, "removed": remove}

    # --- comments -----------------------------------------------------------

    async def remove_comment(self, actor: Actor, comment_id: int,
                             reason: str) -> dict[str, Any]:
        return await self._comment(actor, comment_id, reason, remove=True)

    async def restore_comment(self, actor: Actor, comment_id: int,
                              reason: str) -> dict[str, Any]:
        return await self._comment(actor, comment_id, reason, remove=False)

    async def _comment(self, actor: Actor, comment_id: int, reason: str, *,
                       remove: bool) -> dict[str, Any]:
        action = Action.COMMENT_REMOVE if remove else Action.COMMENT_RESTORE
        async with self._db.transaction() as cur:
            comment = await self._lock(cur, "moderation_lock_comment", comment_id, "comment")
            self._check(actor, action, comment)
            if remove and comment["removed_at"] is not None:
                raise Conflict("already_removed", "This comment is already removed")
            if not remove and comment["removed_at"] is None:
                raise Conflict("not_removed", "This comment is not removed")
            await cur.execute(self._queries["moderation_remove_comment" if remove
                                             else "moderation_restore_comment"],
                              {"id": comment_id, "reason": reason})
            result = await self._close(cur, actor, action, "comment", comment_id, reason,
                                       {"author_id": comment["author_id"],
                                        "video_id": comment["video_id"]})
        return {**result, "removed": remove}

    # --- users --------------------------------------------------------------

    async def ban(self, actor: Actor, user_id: int, reason: str,
                  until: datetime | None) -> dict[str, Any]:
        async with self._db.transaction() as cur:
            user = await self._lock(cur, "moderation_lock_user", user_id, "user")
            self._check(actor, Action.USER_BAN, user)
            details = {"until": until.isoformat() if until else None,
                       "previous_until": _iso(user["banned_until"]) if user["banned"] else None}
            result = await self._close(cur, actor, Action.USER_BAN, "user", user_id, reason,
                                       details)
            announcement = await self._standing.set_ban(cur, user_id, until, reason)
        announcement.announce()
        return {**result, "banned": True, "banned_until": details["until"]}

    async def unban(self, actor: Actor, user_id: int, reason: str) -> dict[str, Any]:
        async with self._db.transaction() as cur:
            user = await self._lock(cur, "moderation_lock_user", user_id, "user")
            self._check(actor, Action.USER_UNBAN, user)
            if not user["banned"]:
                raise Conflict("not_banned", "This user is not banned")
            result = await self._close(cur, actor, Action.USER_UNBAN, "user", user_id, reason,
                                       {"previous_until": _iso(user["banned_until"])})
            announcement = await self._standing.lift_ban(cur, user_id)
        announcement.announce()
        return {**result, "banned": False, "banned_until": None}

    async def set_role(self, actor: Actor, user_id: int, role: Role,
                       reason: str) -> dict[str, Any]:
        """An admin sets another user's role; setting the role they have changes nothing."""
        async with self._db.transaction() as cur:
            user = await self._lock(cur, "moderation_lock_user", user_id, "user")
            require(actor.role, Action.ROLE_SET, owner=actor.id == user_id)
            previous = Role(user["owner_role"])
            if previous is role:
                return {"id": user_id, "role": role.value, "changed": False}
            await log.write(cur, self._queries, actor_id=actor.id, action=Action.ROLE_SET,
                            target_type="user", target_id=user_id, reason=reason,
                            details={"from": previous.value, "to": role.value})
            announcement = await self._standing.set_role(cur, user_id, role)
        announcement.announce()
        return {"id": user_id, "role": role.value, "changed": True}

    # --- reports ------------------------------------------------------------

    async def dismiss(self, actor: Actor, report_id: int, reason: str) -> dict[str, Any]:
        """Dismiss a report, and with it every open report on the same target."""
        async with self._db.transaction() as cur:
            report = await self._lock(cur, "moderation_lock_report", report_id, "report")
            owner = await fetch_one(cur, self._queries["moderation_report_owner"],
                                    {"target_type": report["target_type"],
                                     "target_id": report["target_id"]})
            if owner is None:  # the target is gone: nobody's report to bury
                require(actor.role, Action.REPORT_DISMISS)
            else:
                self._check(actor, Action.REPORT_DISMISS, owner)
            if report["status"] != "open":
                raise Conflict("report_closed", f"This report is already {report['status']}")
            closed = await self._resolve(cur, actor, report["target_type"],
                                         report["target_id"], "dismissed")
            await log.write(cur, self._queries, actor_id=actor.id,
                            action=Action.REPORT_DISMISS, target_type="report",
                            target_id=report_id, reason=reason,
                            details={"target_type": report["target_type"],
                                     "target_id": report["target_id"],
                                     "reports_closed": closed})
        return {"action": Action.REPORT_DISMISS.value, "target_type": "report",
                "target_id": report_id, "reason": reason, "reports_closed": closed}

    # --- shared steps -------------------------------------------------------

    async def _lock(self, cur: Statements, query: str, row_id: int,
                    what: str) -> dict[str, Any]:
        row = await fetch_one(cur, self._queries[query], {"id": row_id})
        if row is None:
            raise NotFound(f"No such {what}")
        return row

    @staticmethod
    def _check(actor: Actor, action: Action, target: dict[str, Any]) -> None:
        """The policy on a target whose owner (author, or the user themself) has a role."""
        owner_id = target.get("author_id", target["id"])
        require(actor.role, action, owner=owner_id == actor.id,
                target_role=Role(target["owner_role"]))

    async def _resolve(self, cur: Statements, actor: Actor, target_type: str,
                       target_id: int, status: str) -> int:
        await cur.execute(self._queries["moderation_resolve_reports"], {
            "status": status, "actor_id": actor.id, "target_type": target_type,
            "target_id": target_id,
        })
        return len(await cur.fetchall())

    async def _close(self, cur: Statements, actor: Actor, action: Action, target_type: str,
                     target_id: int, reason: str, details: dict[str, Any]) -> dict[str, Any]:
        """Close the target's open reports as actioned and log the action."""
        closed = await self._resolve(cur, actor, target_type, target_id, "actioned")
        await log.write(cur, self._queries, actor_id=actor.id, action=action,
                        target_type=target_type, target_id=target_id, reason=reason,
                        details={**details, "reports_closed": closed})
        return {"action": action.value, "target_type": target_type, "target_id": target_id,
                "reason": reason, "reports_closed": closed}


def _iso(value: datetime | None) -> str | None:
    # 'infinity' comes back from psycopg2 as datetime.max.
    if value is None:
        return None
    return None if value.year >= 9999 else value.isoformat()
