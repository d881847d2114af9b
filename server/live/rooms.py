"""Rooms: rows in PostgreSQL, participants in Redis, the media room in LiveKit.

A room is created, listed, read, ended and joined here. When LIVEKIT_URL is
set, creating and ending a room also create and delete it in LiveKit through
its RoomService. Those calls are made after the commit, without a database
connection held, and are best-effort: LiveKit creates a room by itself when the
first participant joins, and deletes an empty one after its empty timeout, so a
failed call is logged and the API answers as if it had worked.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from livekit import api
from redis.exceptions import RedisError

from server.accounts.policy import Action, Role, allowed
from server.core.db import Database, fetch_one
from server.core.errors import ApiError, Forbidden, Invalid, NotFound
from server.core.validation import clean_text

from . import tokens
from .participants import Participant, Participants

log = logging.getLogger(__name__)

NAME_MAX = 100
MAX_PARTICIPANTS = 1000
GUEST_NAME_MAX = 50
DEFAULT_GUEST_NAME = "Guest"
# LiveKit closes a room nobody joined after this many seconds, and with it, through
# the room_finished webhook, the Tubelet room: an hour gives a shared link time to be
# followed. Once people have come and gone, LiveKit's departure timeout applies.
EMPTY_TIMEOUT = 3600
# A RoomService call must not hold a request for long when LiveKit is unreachable.
LIVEKIT_TIMEOUT = 5.0


class RoomNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No such room")


class RoomEnded(ApiError):
    def __init__(self) -> None:
        super().__init__(409, "room_ended", "The room has ended")


class RoomFull(ApiError):
    def __init__(self) -> None:
        super().__init__(409, "room_full", "The room is full")


# --- pure rules --------------------------------------------------------------

def clean_room_name(value: str) -> str:
    name = clean_text(value, "name", NAME_MAX, multiline=False)
    if not name:
        raise Invalid("'name' must not be empty")
    return name


def parse_max_participants(value: Any) -> int | None:
    if value is None:
        return None
    # bool is an int in Python, never a count in JSON.
    if type(value) is not int or not 1 <= value <= MAX_PARTICIPANTS:
        raise Invalid(f"'max_participants' must be an integer from 1 to {MAX_PARTICIPANTS}")
    return value


def clean_guest_name(value: str | None) -> str:
    if value is None:
        return DEFAULT_GUEST_NAME
    return clean_text(value, "name", GUEST_NAME_MAX, multiline=False) or DEFAULT_GUEST_NAME


def is_full(max_participants: int | None, present: int, already_in: bool) -> bool:
    """Whether a join is refused for room: one already in may always come back."""
    return max_participants is not None and present >= max_participants and not already_in


def http_url(url: str) -> str:
    """The RoomService speaks HTTP at the address clients reach over WebSocket."""
    if url.startswith("ws://"):
        return "http://" + url[len("ws://"):]
    if url.startswith("wss://"):
        return "https://" + url[len("wss://"):]
    return url


def iso(value: datetime) -> str:
    return value.isoformat()


def room_json(row: dict[str, Any], livekit_url: str | None,
              participant_count: int | None = None) -> dict[str, Any]:
    out = {
        "id": row["id"],
        "name": row["name"],
        "owner_id": row["owner_id"],
        "status": row["status"],
        "created_at": iso(row["created_at"]),
        "livekit_url": livekit_url,
        "livekit_room": row["livekit_room"],
        "max_participants": row["max_participants"],
    }
    if participant_count is not None:
        out["participant_count"] = participant_count
    return out


def participant_json(person: Participant) -> dict[str, Any]:
    joined = datetime.fromtimestamp(person.joined_ms / 1000, tz=UTC)
    return {"identity": person.identity, "name": person.name, "joined_at": iso(joined)}


# --- LiveKit -----------------------------------------------------------------

class LiveKitRooms:
    """LiveKit's RoomService, best-effort: failures are logged, never raised."""

    def __init__(self, client: api.LiveKitAPI) -> None:
        self._client = client

    @classmethod
    def connect(cls, url: str, key: str, secret: str) -> LiveKitRooms:
        return cls(api.LiveKitAPI(http_url(url), key, secret,
                                  timeout=aiohttp.ClientTimeout(total=LIVEKIT_TIMEOUT)))

    async def create(self, livekit_room: str, max_participants: int | None) -> bool:
        request = api.CreateRoomRequest(name=livekit_room, empty_timeout=EMPTY_TIMEOUT,
                                        max_participants=max_participants or 0)
        return await self._call("create", livekit_room, self._client.room.create_room(request))

    async def delete(self, livekit_room: str) -> bool:
        request = api.DeleteRoomRequest(room=livekit_room)
        return await self._call("delete", livekit_room, self._client.room.delete_room(request))

    async def _call(self, what: str, livekit_room: str, call: Any) -> bool:
        try:
            async with asyncio.timeout(LIVEKIT_TIMEOUT):
                await call
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of a best-effort call: logged, not fatal
            log.warning("LiveKit: could not %s room %s: %s: %s", what, livekit_room,
                        type(exc).__name__, exc)
            return False
        return True

    async def close(self) -> None:
        await self._client.aclose()


# --- the service -------------------------------------------------------------

# Told the id of each room this process learns has ended (the chat closes its sockets).
EndedListener = Callable[[int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class TokenSettings:
    livekit_url: str | None
    api_key: str
    api_secret: str
    ttl: int


class Rooms:
    def __init__(self, db: Database, participants: Participants,
                 livekit: LiveKitRooms | None, settings: TokenSettings) -> None:
        self._db = db
        self._participants = participants
        self._livekit = livekit
        self._settings = settings
        self._listeners: list[EndedListener] = []

    def on_ended(self, listener: EndedListener) -> None:
        """Hear of each room ended here: by its owner or a moderator, or by LiveKit."""
        self._listeners.append(listener)

    async def notify_ended(self, room_id: int) -> None:
        for listener in self._listeners:
            try:
                await listener(room_id)
            except Exception:  # one listener failing must not stop the others
                log.exception("a listener failed on the end of room %s", room_id)

    @property
    def livekit_url(self) -> str | None:
        return self._settings.livekit_url

    async def row(self, room_id: int | None) -> dict[str, Any]:
        """The room's row, or RoomNotFound; `None` (an id of another spelling) names none."""
        row = None if room_id is None else await self._db.one("room_by_id", {"id": room_id})
        if row is None:
            raise RoomNotFound()
        return row

    async def create(self, owner_id: int, name: str,
                     max_participants: int | None) -> dict[str, Any]:
        row = await self._db.one("room_insert", {
            "owner_id": owner_id, "name": name, "max_participants": max_participants,
            "suffix": secrets.token_hex(8)})
        if row is None:
            raise ApiError(401, "invalid_token", "The account no longer exists")
        if self._livekit is not None:
            await self._livekit.create(row["livekit_room"], max_participants)
        return room_json(row, self.livekit_url, 0)

    async def page(self, before: int | None, limit: int) -> list[dict[str, Any]]:
        rows = await self._db.all("rooms_active_page", {"before": before, "limit": limit})
        counts = await self._participants.counts(r["id"] for r in rows)
        return [room_json(r, self.livekit_url, counts.get(r["id"], 0)) for r in rows]

    async def get(self, room_id: int | None) -> dict[str, Any]:
        row = await self.row(room_id)
        # An ended room has nobody in it, whatever a late webhook may have left.
        people = await self._participants.people(row["id"]) if row["status"] == "active" else []
        out = room_json(row, self.livekit_url, len(people))
        out["participants"] = [participant_json(p) for p in people]
        return out

    async def end(self, room_id: int | None, user_id: int) -> dict[str, Any]:
        if room_id is None:
            raise RoomNotFound()
        async with self._db.transaction() as cur:
            found = await fetch_one(cur, self._db.queries["room_lock_for_end"],
                                    {"id": room_id, "user_id": user_id})
            if found is None:
                raise RoomNotFound()
            if found["actor_role"] is None:
                raise ApiError(401, "invalid_token", "The account no longer exists")
            if not allowed(Role(found["actor_role"]), Action.ROOM_END,
                           owner=found["owner_id"] == user_id):
                raise Forbidden("Only the room's owner or a moderator may end it")
            if found["status"] != "active":
                raise RoomEnded()
            row = await fetch_one(cur, self._db.queries["room_end"], {"id": room_id})
        assert row is not None
        await self.forget_participants(row["id"])
        await self.notify_ended(row["id"])
        if self._livekit is not None:
            await self._livekit.delete(row["livekit_room"])
        return room_json(row, self.livekit_url, 0)

    async def forget_participants(self, room_id: int) -> None:
        """After the room ended: its participants go. The room is ended whatever Redis
        says, and an ended room shows nobody, so an outage here is only logged."""
        try:
            await self._participants.clear(room_id)
        except (RedisError, OSError) as exc:  # the keys expire by themselves
            log.warning("participants of ended room %s not cleared: %s", room_id, exc)

    async def join(self, room_id: int | None, user_id: int | None,
                   guest_name: str | None) -> dict[str, Any]:
        """A LiveKit token for the room: an account's (publishes), or a guest's
        (subscribes only). The caller has already decided guests may join."""
        row = await self.row(room_id)
        if row["status"] != "active":
            raise RoomEnded()
        if user_id is not None:
            member = await self._db.one("room_member_name", {"id": user_id})
            if member is None:
                raise ApiError(401, "invalid_token", "The account no longer exists")
            grant = tokens.user_grant(user_id, member["name"])
        else:
            grant = tokens.guest_grant(clean_guest_name(guest_name))
        limit = row["max_participants"]
        if limit is not None:
            present = await self._participants.count(row["id"])
            already_in = await self._participants.present(row["id"], grant.identity)
            if is_full(limit, present, already_in):
                raise RoomFull()
        settings = self._settings
        token = tokens.issue(settings.api_key, settings.api_secret, row["livekit_room"], grant,
                             settings.ttl)
        return {"token": token, "livekit_url": settings.livekit_url,
                "identity": grant.identity}
