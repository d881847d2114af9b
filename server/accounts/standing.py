"""Who is banned, known to every process at once, and the writes that ban, unban and
set roles.

Each process keeps the set of users banned now, with when each ban ends, so
that checking a token costs no database round trip. The set is loaded at start,
again whenever the change feed brings a user change (a ban or an unban in any
process), and every RELOAD_EVERY seconds besides. A ban ends on this process's
clock, without waiting for a reload. While PostgreSQL cannot answer, the last
set loaded stays in force.

A ban or an unban records a change of the user and one of each of their videos
in the writing transaction, so that every process forgets what it cached of
those videos (their streams stop, or play again). `Announcement.announce()`,
after the commit, applies it in the writing process at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

from server.core.changes import ChangeFeed
from server.core.db import Database, Statements, fetch_all, fetch_one
from server.core.errors import ApiError, Invalid, NotFound, first_line
from server.core.loops import OUTAGES, raise_if_cancelled, stop

from .policy import Role

log = logging.getLogger(__name__)

RELOAD_EVERY = 60.0
# After a failed reload, the next try comes sooner than the regular one.
RETRY_AFTER_FAILURE = 1.0

# Called with a user id when this process learns that the user is banned.
BanListener = Callable[[int], None]


class UserNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No such user")


def ban_message(until: float) -> str:
    """What a banned user is told: until when (seconds since the epoch; inf: for good)."""
    if math.isinf(until):
        return "This account is banned"
    end = datetime.fromtimestamp(until, UTC).isoformat(timespec="seconds")
    return f"This account is banned until {end.replace('+00:00', 'Z')}"


class Banned(ApiError):
    def __init__(self, until: float) -> None:
        super().__init__(403, "banned", ban_message(until))


@dataclass(slots=True)
class Announcement:
    """Changes committed by a ban, an unban or a role change; `announce()` once the
    transaction has committed."""

    changes: ChangeFeed
    user_id: int
    user_seq: int
    video_seqs: list[tuple[int, int]] = field(default_factory=list)
    # Applies the new standing in this process before anyone hears of it.
    local: Callable[[], None] | None = None

    def announce(self) -> None:
        if self.local is not None:
            self.local()
        self.changes.applied_user(self.user_id, self.user_seq)
        for video_id, seq in self.video_seqs:
            self.changes.applied(video_id, seq)


class Standing:
    """Bans and roles: the banned set of this process, and the writes that change it."""

    def __init__(self, db: Database, changes: ChangeFeed,
                 reload_every: float = RELOAD_EVERY) -> None:
        self._db = db
        self._changes = changes
        self._reload_every = reload_every
        # Banned user -> when the ban ends, seconds since the epoch (inf: never).
        self._banned: dict[int, float] = {}
        self._listeners: list[BanListener] = []
        self._wake = asyncio.Event()
        # Bumped by every local change, so that a reload begun before it is not
        # allowed to undo it.
        self._version = 0
        self._task: asyncio.Task[None] | None = None
        changes.subscribe_users(self._user_changed)

    # --- reading ----------------------------------------------------------

    def is_banned(self, user_id: int) -> bool:
        return self.banned_until(user_id) is not None

    def banned_until(self, user_id: int) -> float | None:
        """When the user's ban ends (seconds since the epoch, inf: never); None if not banned."""
        until = self._banned.get(user_id)
        return until if until is not None and until > time.time() else None

    def check(self, user_id: int) -> None:
        """Raise Banned (403) if the user is banned."""
        until = self.banned_until(user_id)
        if until is not None:
            raise Banned(until)

    def on_banned(self, listener: BanListener) -> None:
        """Hear of each user this process learns is banned (here or in another process)."""
        self._listeners.append(listener)

    async def role(self, user_id: int) -> Role:
        """The user's role as PostgreSQL has it now; UserNotFound if there is no such user."""
        row = await self._db.one("standing_role", {"id": user_id})
        if row is None:
            raise UserNotFound()
        return Role(row["role"])

    # --- writing, inside the caller's transaction ---------------------------

    async def set_ban(self, cur: Statements, user_id: int, until: datetime | None,
                      reason: str) -> Announcement:
        """Ban until `until` (None: without end). Call last in the transaction."""
        if until is not None:
            if until.tzinfo is None:
                until = until.replace(tzinfo=UTC)
            if until.timestamp() <= time.time():
                raise Invalid("A ban must end in the future")
        row = await fetch_one(cur, self._db.queries["standing_ban"],
                              {"id": user_id, "until": until, "reason": reason})
        if row is None:
            raise UserNotFound()
        ends = float(row["banned_until"])
        announcement = await self._record(cur, user_id, "banned", videos=True)
        announcement.local = lambda: self._apply(user_id, ends)
        return announcement

    async def lift_ban(self, cur: Statements, user_id: int) -> Announcement:
        row = await fetch_one(cur, self._db.queries["standing_lift_ban"], {"id": user_id})
        if row is None:
            raise UserNotFound()
        announcement = await self._record(cur, user_id, "unbanned", videos=True)
        announcement.local = lambda: self._apply(user_id, None)
        return announcement

    async def set_role(self, cur: Statements, user_id: int, role: Role) -> Announcement:
        row = await fetch_one(cur, self._db.queries["standing_set_role"],
                              {"id": user_id, "role": role.value})
        if row is None:
            raise UserNotFound()
        return await self._record(cur, user_id, "role", videos=False)

    async def _record(self, cur: Statements, user_id: int, kind: str, *,
                      videos: bool) -> Announcement:
        video_seqs: list[tuple[int, int]] = []
        if videos:
            rows = await fetch_all(cur, self._db.queries["standing_user_videos"],
                                   {"id": user_id})
            ids = [r["id"] for r in rows]
            video_seqs = list(zip(ids, await self._changes.record_videos(cur, ids, kind),
                                  strict=True))
        seq = await self._changes.record_user(cur, user_id, kind)
        return Announcement(self._changes, user_id, seq, video_seqs)

    # --- keeping the set current -------------------------------------------

    def _apply(self, user_id: int, until: float | None) -> None:
        self._version += 1
        if until is None:
            self._banned.pop(user_id, None)
            return
        was = self.is_banned(user_id)
        self._banned[user_id] = until
        if not was and self.is_banned(user_id):
            self._tell(user_id)

    def _user_changed(self, _user_id: int | None) -> None:
        # Any change (None too: changes were missed) reloads the whole set.
        self._wake.set()

    async def reload(self) -> None:
        """Read the banned set from PostgreSQL; tell listeners of newly banned users."""
        version = self._version
        rows = await self._db.all("standing_banned_users")
        if version != self._version:
            # A local change happened meanwhile; the read may predate it.
            self._wake.set()
            return
        before = {user_id for user_id in self._banned if self.is_banned(user_id)}
        self._banned = {r["id"]: float(r["banned_until"]) for r in rows}
        for user_id in self._banned:
            if user_id not in before and self.is_banned(user_id):
                self._tell(user_id)

    def _tell(self, user_id: int) -> None:
        for listener in self._listeners:
            try:
                listener(user_id)
            except Exception:
                log.exception("ban listener failed")

    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.create_task(self._run(), name="banned-users")

    async def stop(self) -> None:
        await stop(self._task)
        self._task = None

    async def _run(self) -> None:
        wait = self._reload_every
        failing = False
        while True:
            raise_if_cancelled()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    if isinstance(exc, OUTAGES):
                        log.warning("banned users not reloaded, keeping the last known "
                                    "set: %s", first_line(exc))
                    else:
                        log.exception("banned users not reloaded, keeping the last known set")
                failing = True
                wait = RETRY_AFTER_FAILURE
                continue
            if failing:
                log.warning("banned users reloaded again")
            failing = False
            wait = self._reload_every


STANDING_KEY: web.AppKey[Standing] = web.AppKey("standing", Standing)
