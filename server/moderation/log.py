"""The audit log: one row per moderation or administration action, written in the
action's own transaction, so no action happens unlogged and no log row describes
an action that rolled back."""

from __future__ import annotations

import json
from typing import Any

from server.core.db import Database, Queries, Statements

from .rules import EXCERPT


async def write(cur: Statements, queries: Queries, *, actor_id: int | None, action: str,
                target_type: str, target_id: int, reason: str,
                details: dict[str, Any] | None = None) -> None:
    """Add a row inside the caller's transaction; `actor_id` None is the command line."""
    await cur.execute(queries["moderation_log_insert"], {
        "actor_id": actor_id, "action": str(action), "target_type": target_type,
        "target_id": target_id, "reason": reason, "details": json.dumps(details or {}),
    })


def entry_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "actor_id": row["actor_id"],
        # None for the command line, or an actor whose account is gone.
        "actor_name": row["actor_name"],
        "action": row["action"],
        "target_type": row["target_type"],
        "target_id": row["target_id"],
        "target_label": row["target_label"],
        "reason": row["reason"],
        "details": row["details"],
        "at": row["at"].isoformat(),
    }


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def page(self, before: int | None, limit: int) -> list[dict[str, Any]]:
        """Newest first, from before the entry `before`."""
        return await self._db.all("moderation_log_page", {"before": before, "limit": limit,
                                                          "excerpt": EXCERPT})
