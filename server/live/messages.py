"""A room's chat messages: what a message may say, its JSON, and where it is kept.

Bodies are plain text, cleaned like every text users write (NFC, CRLF as LF,
trimmed, no control characters but line breaks and tabs), 1 to BODY_MAX
characters after cleaning. They are stored and sent exactly as written: the
server never renders them as HTML, and the page shows them as text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from server.core.db import Database
from server.core.errors import Invalid, NotFound
from server.core.validation import clean_text

from .tokens import Holder

BODY_MAX = 1000
PAGE_DEFAULT = 50
PAGE_MAX = 100


class RoomNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No such room", "room_not_found")


class RoomEnded(Exception):
    """The room ended: its chat keeps its history and takes no more messages."""


class BodyRefused(Exception):
    """A message body the chat does not take; the text says why."""


@dataclass(frozen=True, slots=True)
class ChatRoom:
    id: int
    livekit_room: str
    active: bool


def clean_body(value: Any) -> str:
    """The body to store, or BodyRefused."""
    if not isinstance(value, str):
        raise BodyRefused("'body' must be a string")
    # Cleaning cannot shorten text this far below the limit: refuse before the work.
    if len(value) > BODY_MAX * 4:
        raise BodyRefused(f"'body' must be at most {BODY_MAX} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a "\ud800" escape
        raise BodyRefused("'body' must be valid Unicode text") from None
    try:
        body = clean_text(value, "body", BODY_MAX, multiline=True)
    except Invalid as exc:
        raise BodyRefused(exc.message) from None
    if not body:
        raise BodyRefused("'body' must not be empty")
    return body


def message_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "room_id": row["room_id"],
        "identity": row["identity"],
        "name": row["name"],
        "body": row["body"],
        "created_at": row["created_at"].isoformat(),
    }


def message_frame(message: dict[str, Any]) -> str:
    return json.dumps({"type": "message", **message})


def error_frame(code: str, message: str, **extra: Any) -> str:
    return json.dumps({"type": "error", "code": code, "message": message, **extra})


class ChatStore:
    """Rooms as the chat sees them, and their messages, in PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def room(self, room_id: int | None) -> ChatRoom:
        row = None if room_id is None else await self._db.one("room_by_id", {"id": room_id})
        if row is None:
            raise RoomNotFound()
        return ChatRoom(row["id"], row["livekit_room"], row["status"] == "active")

    async def page(self, room_id: int | None, before: int | None,
                   limit: int) -> tuple[list[dict[str, Any]], int | None]:
        """Messages newest first, and the `before` of the next page (None: no more)."""
        rows = [] if room_id is None else await self._db.all(
            "chat_messages", {"room_id": room_id, "before": before, "limit": limit + 1})
        if not rows:
            await self.room(room_id)  # an empty page of a room, or no room at all
        more = len(rows) > limit
        rows = rows[:limit]
        return [message_json(row) for row in rows], rows[-1]["id"] if more else None

    async def add(self, room_id: int, holder: Holder, body: str) -> dict[str, Any]:
        """The stored message, or RoomEnded."""
        row = await self._db.one("chat_insert_message", {
            "room_id": room_id, "user_id": holder.user_id, "identity": holder.identity,
            "name": holder.name, "body": body})
        if row is None:
            raise RoomEnded()
        return message_json(row)
