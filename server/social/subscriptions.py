"""Subscriptions to channels, with users.subscriber_count changed in the same statement."""

from __future__ import annotations

from typing import Any

import psycopg2.errors

from server.core.db import Database, fetch_one
from server.core.errors import Invalid

from .access import UserNotFound, require_active
from .rules import encode_cursor


def avatar_url(row: dict[str, Any]) -> str | None:
    return f"/users/{row['id']}/avatar.jpg" if row["avatar_key"] else None


def channel_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "avatar_url": avatar_url(row),
        "subscriber_count": row["subscriber_count"],
        "subscribed_at": row["subscribed_at"].isoformat(),
    }


class Subscriptions:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def set(self, subscriber_id: int, channel_id: int | None,
                  subscribed: bool) -> dict[str, Any]:
        """Subscribe to (or leave) a channel; a new subscription needs a channel not banned."""
        if channel_id == subscriber_id:
            raise Invalid("You cannot subscribe to yourself", "self_subscription")
        queries = self._db.queries
        params = {"subscriber_id": subscriber_id, "channel_id": channel_id}
        try:
            async with self._db.transaction() as cur:
                if subscribed:
                    await require_active(cur, queries, subscriber_id)
                    channel = None if channel_id is None else await fetch_one(
                        cur, queries["social_active_user"], {"id": channel_id})
                    if channel is None:
                        raise UserNotFound()
                    row = await fetch_one(cur, queries["social_subscribe"], params)
                else:
                    row = None if channel_id is None else await fetch_one(
                        cur, queries["social_unsubscribe"], params)
                if row is None:
                    raise UserNotFound()
        except psycopg2.errors.ForeignKeyViolation:
            # Deleted between the check and the insert.
            raise UserNotFound() from None
        return {"subscribed": subscribed, "subscriber_count": row["subscriber_count"]}

    async def page(self, user_id: int, position: tuple[Any, ...] | None,
                   limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """The channels a user follows, most recently followed first."""
        before_at, before_id = position if position is not None else (None, None)
        rows = await self._db.all("social_subscriptions", {
            "user_id": user_id, "before_at": before_at, "before_id": before_id,
            "limit": limit})
        next_cursor = None
        if len(rows) == limit:
            last = rows[-1]
            next_cursor = encode_cursor(last["subscribed_at"].isoformat(), last["id"])
        return [channel_json(row) for row in rows], next_cursor
