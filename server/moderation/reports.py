"""Reports: anyone signed in flags a video, comment or user; moderators read the queue."""

from __future__ import annotations

from typing import Any

import psycopg2.errors

from server.core.db import Database
from server.core.errors import ApiError, NotFound

from .rules import EXCERPT, ReportInput

# What a reporter must be able to see to report it.
VISIBLE_QUERIES = {
    "video": "moderation_video_visible",
    "comment": "moderation_comment_visible",
    "user": "moderation_user_visible",
}
NOT_FOUND = {"video": "No such video", "comment": "No such comment", "user": "No such user"}


class AlreadyReported(ApiError):
    def __init__(self) -> None:
        super().__init__(409, "already_reported",
                         "You already have an open report on this; a moderator will review it")


def report_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "reporter_id": row["reporter_id"],
        "target_type": row["target_type"],
        "target_id": row["target_id"],
        "reason": row["reason"],
        "note": row["note"],
        "status": row["status"],
        "created_at": row["created_at"].isoformat(),
        "resolved_at": row["resolved_at"].isoformat() if row["resolved_at"] else None,
        "resolved_by": row["resolved_by"],
    }


def queue_item_json(row: dict[str, Any]) -> dict[str, Any]:
    """A report as the moderation queue shows it: with its target and the reporter."""
    return {
        **report_json(row),
        "reporter_name": row["reporter_name"],
        "target": {
            "type": row["target_type"],
            "id": row["target_id"],
            # False once the target is deleted; its label is then None.
            "exists": row["target_owner_id"] is not None,
            "label": row["target_label"],
            "owner_id": row["target_owner_id"],
            # Removed (a video or comment) or banned (a user) now.
            "hidden": bool(row["target_hidden"]),
            "video_id": row["target_video_id"],
            "open_reports": row["target_open_reports"],
        },
    }


class Reports:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, reporter_id: int, report: ReportInput) -> dict[str, Any]:
        """File a report, or 404 when the reporter cannot see the target, or 409 when
        they already have an open report on it."""
        visible = await self._db.one(VISIBLE_QUERIES[report.target_type],
                                     {"id": report.target_id, "viewer": reporter_id})
        if visible is None:
            raise NotFound(NOT_FOUND[report.target_type])
        try:
            row = await self._db.one("moderation_insert_report", {
                "reporter_id": reporter_id, "target_type": report.target_type,
                "target_id": report.target_id, "reason": report.reason, "note": report.note,
            })
        except psycopg2.errors.UniqueViolation:
            raise AlreadyReported() from None
        except psycopg2.errors.ForeignKeyViolation:
            # A valid token of an account deleted since.
            raise ApiError(401, "invalid_token", "The account no longer exists") from None
        assert row is not None
        return row

    async def page(self, *, include_resolved: bool, after: tuple[int, int] | None,
                   limit: int) -> list[dict[str, Any]]:
        after_rank, after_id = after if after is not None else (None, None)
        return await self._db.all("moderation_reports_page", {
            "all": include_resolved, "after_rank": after_rank, "after_id": after_id,
            "limit": limit, "excerpt": EXCERPT,
        })
