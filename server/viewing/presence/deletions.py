"""Closing the sockets of videos gone from view, in every process (close code 4404).

A video is gone when it is deleted, made private, removed by a moderator, or
hidden with its banned author. Every process hears of every video change through
the change feed. A changed video with sockets here is looked up in the catalog;
if it is gone its sockets
are closed, and so is any socket that finishes joining it afterwards. A lookup
that fails (PostgreSQL away) is retried every CHECK_INTERVAL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping

from server.core.errors import DEPENDENCY_ERRORS

from .room import DELETED, Connection, Room

log = logging.getLogger(__package__)  # one logger for all of presence

CHECK_INTERVAL = 0.25
CHECK_FAILURES: tuple[type[BaseException], ...] = (*DEPENDENCY_ERRORS, OSError)
REASON = b"video deleted"

VideoExists = Callable[[int], Awaitable[bool]]


class DeletedVideos:
    def __init__(self, rooms: Mapping[int, Room], video_exists: VideoExists) -> None:
        self._rooms = rooms
        self._video_exists = video_exists
        self._suspects: set[int] = set()
        self._closers: set[asyncio.Future[None]] = set()
        self._failing = False

    def changed(self, video_id: int | None) -> None:
        """A change-feed subscriber: a changed video with sockets here may be gone.

        None means changes may have been missed: every video here is suspect.
        """
        if video_id is None:
            self._suspects.update(self._rooms)
        elif video_id in self._rooms:
            self._suspects.add(video_id)

    async def check(self) -> None:
        """Close the sockets of suspect videos that are gone; an outage is logged once."""
        for video_id in sorted(self._suspects):
            try:
                gone = video_id in self._rooms and not await self._video_exists(video_id)
            except CHECK_FAILURES as exc:
                if not self._failing:
                    log.warning("deleted-video check failing, will retry: %r", exc)
                self._failing = True
                return
            if self._failing:
                log.warning("deleted-video check recovered")
                self._failing = False
            room = self._rooms.get(video_id)
            if gone and room is not None:
                room.gone = True
                self._close(room.connections.values())
            self._suspects.discard(video_id)

    def joined(self, room: Room, conn: Connection) -> None:
        """A socket has just joined: if its video went meanwhile, it goes too."""
        if room.gone:
            self._close([conn])

    def _close(self, conns: Iterable[Connection]) -> None:
        # Not awaited: a client slow to answer the close must not hold up the checks.
        for conn in list(conns):
            closer = asyncio.ensure_future(conn.close(DELETED, REASON))
            self._closers.add(closer)
            closer.add_done_callback(self._closers.discard)

    def stop(self) -> None:
        for closer in list(self._closers):
            closer.cancel()
