"""Blocks: a user no longer sees the comments of those they blocked."""

from __future__ import annotations

import psycopg2.errors

from server.core.db import Database
from server.core.errors import Invalid

from .access import UserNotFound


class Blocks:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def set(self, blocker_id: int, blocked_id: int | None, blocked: bool) -> bool:
        if blocked_id == blocker_id:
            raise Invalid("You cannot block yourself", "self_block")
        if blocked_id is None or await self._db.one("social_user_exists",
                                                    {"id": blocked_id}) is None:
            raise UserNotFound()
        params = {"blocker_id": blocker_id, "blocked_id": blocked_id}
        try:
            await self._db.execute("social_block" if blocked else "social_unblock", params)
        except psycopg2.errors.ForeignKeyViolation:
            raise UserNotFound() from None
        return blocked
