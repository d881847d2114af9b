"""Closing the sockets of banned users, in every process (close code 4403).

Standing (server/accounts/standing.py) tells each process of every user it
learns is banned, from the change feed; the sockets signed in as that user are
closed, and so is one that finishes joining afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping

from .room import BANNED, Connection, Room

REASON = b"account banned"

IsBanned = Callable[[int], bool]


class BannedViewers:
    def __init__(self, rooms: Mapping[int, Room], is_banned: IsBanned) -> None:
        self._rooms = rooms
        self._is_banned = is_banned
        self._closers: set[asyncio.Future[None]] = set()

    def banned(self, user_id: int) -> None:
        """A ban listener: close every socket of `user_id` here."""
        self._close(conn for room in self._rooms.values()
                    for conn in room.connections.values() if conn.user_id == user_id)

    def joined(self, conn: Connection) -> None:
        """A socket has just joined: if its user was banned meanwhile, it goes."""
        if conn.user_id is not None and self._is_banned(conn.user_id):
            self._close([conn])

    def _close(self, conns: Iterable[Connection]) -> None:
        # Not awaited: a client slow to answer the close must hold up nobody.
        for conn in list(conns):
            closer = asyncio.ensure_future(conn.close(BANNED, REASON))
            self._closers.add(closer)
            closer.add_done_callback(self._closers.discard)

    def stop(self) -> None:
        for closer in list(self._closers):
            closer.cancel()
