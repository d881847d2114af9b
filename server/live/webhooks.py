"""LiveKit's webhooks: verified, deduplicated, applied to PostgreSQL and Redis.

LiveKit POSTs each event as JSON with `Authorization: <JWT>`, a token signed
with the API secret whose `sha256` claim is the base64 SHA-256 of the body.
`livekit-api`'s WebhookReceiver checks the signature, the issuer (our API key),
the expiry and the hash. On top of it, an event whose created_at is more than
REPLAY_WINDOW away from now is refused: a captured request cannot be replayed
later, even by whoever could still pass the token's expiry.

An event is applied once: its id goes into room_events (ON CONFLICT DO NOTHING)
in the transaction that writes the room's history; only when that insert
happened does Redis change. Should Redis then fail, the id is taken back and
the answer is 503, so LiveKit's retry applies the event. Events for rooms that
are not ours, and kinds we do not follow, are answered 200 and ignored: a non-2xx
answer would only make LiveKit send them again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from livekit import api
from livekit.protocol.webhook import WebhookEvent
from redis.exceptions import RedisError

from server.core.db import Database, fetch_one
from server.core.errors import ApiError, Unavailable

from .participants import Event, Participants

log = logging.getLogger(__name__)

# LiveKit's events are a few kilobytes.
MAX_BODY = 64 * 1024
# Seconds an event's created_at may be away from now.
REPLAY_WINDOW = 600
PARTICIPANT_EVENTS = {"participant_joined": "joined", "participant_left": "left",
                      "participant_connection_aborted": "left"}
ROOM_EVENTS = frozenset({"room_started", "room_finished"})
# Events that show a room alive in LiveKit.
REVIVING = frozenset({"room_started", "participant_joined"})
# Event ids are kept past the replay window (older events are refused anyway), then dropped.
KEEP_EVENTS = 24 * 3600
PRUNE_EVERY = 3600.0


class WebhookRefused(ApiError):
    def __init__(self, reason: str) -> None:
        super().__init__(401, "invalid_webhook", f"Webhook refused: {reason}")


def auth_token(header: str | None) -> str:
    """The JWT of the Authorization header: LiveKit sends it bare; `Bearer` is accepted."""
    token = (header or "").strip()
    scheme, _, rest = token.partition(" ")
    if scheme.lower() == "bearer":
        token = rest.strip()
    if not token:
        raise WebhookRefused("no Authorization header")
    return token


def is_stale(created_at: int, now: float, window: int = REPLAY_WINDOW) -> bool:
    return abs(now - created_at) > window


def verify(receiver: api.WebhookReceiver, body: bytes, authorization: str | None,
           now: float) -> WebhookEvent:
    """The event, if LiveKit sent it and it is fresh; WebhookRefused otherwise."""
    token = auth_token(authorization)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRefused("the body is not UTF-8") from None
    try:
        event = receiver.receive(text, token)
    except Exception as exc:  # the receiver raises bare Exception for a hash mismatch
        raise WebhookRefused(type(exc).__name__) from None
    if not event.id or not event.event:
        raise WebhookRefused("the event has no id")
    if is_stale(event.created_at, now):
        raise WebhookRefused("the event is too old")
    return event


def participant_event(event: WebhookEvent) -> Event | None:
    info = event.participant
    kind = PARTICIPANT_EVENTS.get(event.event)
    if kind is None or not info.identity or not info.sid:
        return None
    joined_ms = info.joined_at_ms or info.joined_at * 1000 or event.created_at * 1000
    return Event("joined" if kind == "joined" else "left", info.identity, info.sid,
                 info.name or info.identity, joined_ms, event.created_at)


class Webhooks:
    def __init__(self, db: Database, participants: Participants,
                 receiver: api.WebhookReceiver,
                 room_ended: Callable[[int], Awaitable[None]],
                 close_in_livekit: Callable[[str], Awaitable[bool]] | None = None) -> None:
        self._db = db
        self._queries = db.queries
        self._participants = participants
        self._room_ended = room_ended
        # Deletes a room in LiveKit (None without LIVEKIT_URL).
        self._close_in_livekit = close_in_livekit
        self.receiver = receiver

    async def apply(self, event: WebhookEvent) -> bool:
        """Apply a verified event; False if it was not ours, not followed, or a duplicate."""
        person = participant_event(event)
        if person is None and event.event not in ROOM_EVENTS:
            return False
        room = await self._db.one("room_by_livekit_room", {"livekit_room": event.room.name})
        if room is None:
            return False
        room_id = room["id"]
        if not await self._record(event, room_id, person):
            return False
        try:
            if event.event == "room_finished":
                await self._participants.clear(room_id)
            elif person is not None and room["status"] == "active":
                await self._participants.record(room_id, person)
            else:
                await self._participants.touch(room_id)
        except (RedisError, OSError, RuntimeError) as exc:
            # Not applied: forget the id, so that LiveKit's retry is not a duplicate.
            await self._db.execute("room_event_forget", {"event_id": event.id})
            raise Unavailable("The room's participants could not be updated") from exc
        if event.event == "room_finished":
            await self._room_ended(room_id)
        elif room["status"] != "active" and event.event in REVIVING \
                and self._close_in_livekit is not None:
            # LiveKit makes a room on join: a token issued before the room ended would
            # bring it back, so an ended room seen alive is closed again.
            await self._close_in_livekit(event.room.name)
        return True

    async def prune(self) -> None:
        """Forget event ids too old to come back (a replay would be refused as stale)."""
        await self._db.execute("room_events_prune", {"keep": KEEP_EVENTS})

    async def _record(self, event: WebhookEvent, room_id: int, person: Event | None) -> bool:
        """The event's id and the room's history, in one transaction; False if the id
        was seen before."""
        at = event.created_at
        q = self._queries
        async with self._db.transaction() as cur:
            new = await fetch_one(cur, q["room_event_insert"], {
                "event_id": event.id, "room_id": room_id, "kind": event.event, "at": at})
            if new is None:
                return False
            if event.event == "room_started":
                await cur.execute(q["room_started"], {"id": room_id, "at": at})
            elif event.event == "room_finished":
                await cur.execute(q["room_finished"], {"id": room_id, "at": at})
                await cur.execute(q["room_sessions_close"], {"room_id": room_id, "at": at})
            elif person is not None:
                params = {"room_id": room_id, "identity": person.identity, "name": person.name,
                          "sid": person.sid, "joined_at": person.joined_ms / 1000, "at": at}
                name = "room_session_joined" if person.kind == "joined" else "room_session_left"
                await cur.execute(q[name], params)
        return True
