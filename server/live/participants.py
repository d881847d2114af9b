"""Who is in each room now, in Redis, as LiveKit's webhooks tell it.

    {prefix}:room:{id}:participants   hash  identity -> {"sid", "name", "joined_ms", "at"}
    {prefix}:room:{id}:left           hash  participant sid -> created_at of its left event

Every instance reads and writes the same keys, so a webhook delivered to one
is seen by all. LiveKit may deliver an event twice or out of order; the rules
below (`apply`, pure) keep the result right whatever the order:

- a session (participant sid) that has left never comes back: a joined for a
  sid with a recorded left is ignored, so a left overtaking its joined leaves
  the participant out;
- a left ends the identity's session only if it is that session's left: a
  reconnect under the same identity is a new sid, and the old sid's late left
  must not remove it;
- of two sessions of one identity, the later joined wins (joined_ms, then the
  event's created_at), so a late joined of an older session changes nothing.

Both keys expire QUIET_TTL after the room's last webhook: a LiveKit that went
silent (crashed, or its webhooks lost) leaves nothing behind for good. A room
that finishes or is ended is cleared at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import redis.asyncio as redis
from redis.exceptions import WatchError

from server.core.keyspace import Keyspace

# Twelve hours without a webhook for a room: its participants are forgotten.
QUIET_TTL = 12 * 3600
# Writers of one room race only on simultaneous webhooks; a few retries suffice.
WATCH_RETRIES = 20


@dataclass(frozen=True, slots=True)
class Session:
    """The participant of one identity in a room now."""

    sid: str
    name: str
    joined_ms: int
    # created_at (seconds) of the event that put it there.
    at: int

    def encode(self) -> str:
        return json.dumps({"sid": self.sid, "name": self.name, "joined_ms": self.joined_ms,
                           "at": self.at}, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> Session:
        data = json.loads(raw)
        return cls(str(data["sid"]), str(data["name"]), int(data["joined_ms"]), int(data["at"]))


@dataclass(frozen=True, slots=True)
class Event:
    """A participant's joined, or left (aborted counts as left), from a webhook."""

    kind: Literal["joined", "left"]
    identity: str
    sid: str
    name: str
    joined_ms: int
    at: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an event does: the identity's session afterwards, and whether it changed."""

    session: Session | None
    changed: bool


def apply(current: Session | None, sid_left: bool, event: Event) -> Outcome:
    """The identity's session after `event`, given its session now and whether the
    event's sid has a recorded left. Pure."""
    if event.kind == "left":
        if current is not None and current.sid == event.sid:
            return Outcome(None, True)
        return Outcome(current, False)
    if sid_left:
        return Outcome(current, False)
    if current is not None:
        if current.sid == event.sid:
            return Outcome(current, False)
        if (event.joined_ms, event.at) < (current.joined_ms, current.at):
            return Outcome(current, False)
    return Outcome(Session(event.sid, event.name, event.joined_ms, event.at), True)


@dataclass(frozen=True, slots=True)
class Participant:
    identity: str
    name: str
    joined_ms: int


class Participants:
    """The participants hashes of every room, shared by all instances."""

    def __init__(self, client: redis.Redis, keys: Keyspace, *,
                 quiet_ttl: int = QUIET_TTL) -> None:
        self._client = client
        self._keys = keys
        self._ttl = quiet_ttl

    def _present_key(self, room_id: int) -> str:
        return self._keys("room", room_id, "participants")

    def _left_key(self, room_id: int) -> str:
        return self._keys("room", room_id, "left")

    async def record(self, room_id: int, event: Event) -> bool:
        """Apply one event atomically (WATCH/MULTI); whether the participants changed."""
        present, left = self._present_key(room_id), self._left_key(room_id)
        for _ in range(WATCH_RETRIES):
            try:
                async with self._client.pipeline(transaction=True) as pipe:
                    await pipe.watch(present, left)
                    raw = await pipe.hget(present, event.identity)
                    sid_left = bool(await pipe.hexists(left, event.sid))
                    current = Session.decode(raw) if raw is not None else None
                    outcome = apply(current, sid_left, event)
                    pipe.multi()
                    if event.kind == "left":
                        pipe.hset(left, event.sid, event.at)
                    if outcome.changed:
                        if outcome.session is None:
                            pipe.hdel(present, event.identity)
                        else:
                            pipe.hset(present, event.identity, outcome.session.encode())
                    # Any webhook for the room restarts its quiet period.
                    pipe.expire(present, self._ttl)
                    pipe.expire(left, self._ttl)
                    await pipe.execute()
                    return outcome.changed
            except WatchError:
                continue
        raise RuntimeError(f"participants of room {room_id} kept changing")

    async def touch(self, room_id: int) -> None:
        """A webhook for the room that changes no participant still shows LiveKit is alive."""
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.expire(self._present_key(room_id), self._ttl)
            pipe.expire(self._left_key(room_id), self._ttl)
            await pipe.execute()

    async def clear(self, room_id: int) -> None:
        await self._client.delete(self._present_key(room_id), self._left_key(room_id))

    async def people(self, room_id: int) -> list[Participant]:
        """Who is in the room, earliest joined first."""
        raw = await self._client.hgetall(self._present_key(room_id))
        people = []
        for identity, value in raw.items():
            session = Session.decode(value)
            name = identity.decode() if isinstance(identity, bytes) else str(identity)
            people.append(Participant(name, session.name, session.joined_ms))
        people.sort(key=lambda p: (p.joined_ms, p.identity))
        return people

    async def present(self, room_id: int, identity: str) -> bool:
        return bool(await self._client.hexists(self._present_key(room_id), identity))

    async def count(self, room_id: int) -> int:
        return int(await self._client.hlen(self._present_key(room_id)))

    async def counts(self, room_ids: Iterable[int]) -> dict[int, int]:
        ids = list(room_ids)
        if not ids:
            return {}
        async with self._client.pipeline(transaction=False) as pipe:
            for room_id in ids:
                pipe.hlen(self._present_key(room_id))
            answers = await pipe.execute()
        return {room_id: int(n) for room_id, n in zip(ids, answers, strict=True)}
