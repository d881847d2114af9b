"""Re-reading each room's numbers and pushing them to its sockets.

A room is marked when its viewers or views may have changed. A marked room is
re-read at once unless its last broadcast was less than TICK ago (then when
the TICK is up), and if the numbers changed one JSON text goes to all its
sockets: a lone change arrives without delay, and a burst of joins costs each
socket at most two messages a second.

A broadcast encodes the JSON and its WebSocket frame once and writes the same
bytes to every socket without awaiting: nothing a client does can hold up the
others. A socket whose unsent output has backed up is skipped and gets the
latest state once it has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

from server.core.cache import SingleFlight
from server.core.loops import raise_if_cancelled

from .room import Connection, Room, state_text, text_frame
from .store import PresenceStore

log = logging.getLogger(__package__)  # one logger for all of presence

# At most one broadcast per room per TICK, and one re-read per READ_GAP.
TICK = 0.5
READ_GAP = 0.1

ReadViews = Callable[[Iterable[int]], Awaitable[dict[int, int]]]


class Broadcaster:
    def __init__(self, store: PresenceStore, read_views: ReadViews) -> None:
        self._store = store
        self._read_views = read_views
        self._due: set[Room] = set()
        self._wake = asyncio.Event()
        self._behind: dict[Connection, Room] = {}
        self._views_loading: SingleFlight[int, dict[int, int]] = SingleFlight()
        self.messages_sent = 0

    # --- scheduling -------------------------------------------------------

    def mark(self, room: Room, *, views: bool = False, delay: float = 0.0) -> None:
        """Schedule a re-read of the room's count (or view total) and a broadcast."""
        if not room.open:
            return
        if views:
            room.dirty_views = True
        else:
            room.dirty_count = True
        if room.due is None:
            earliest = max(room.last_read + READ_GAP, room.last_broadcast + TICK)
            room.due = max(asyncio.get_running_loop().time() + delay, earliest)
            self._due.add(room)
            self._wake.set()

    def forget(self, room: Room) -> None:
        """The room has no sockets left here."""
        room.open = False
        room.due = None
        self._due.discard(room)

    def drop(self, conn: Connection) -> None:
        """The socket is going; never write to it again."""
        self._behind.pop(conn, None)

    async def run(self) -> None:
        """Re-read and broadcast each marked room when it is due, until cancelled."""
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            raise_if_cancelled()
            self._wake.clear()
            now = loop.time()
            ready = [room for room in self._due if room.due is not None and room.due <= now]
            if not ready:
                wait = min((room.due for room in self._due if room.due is not None),
                           default=None)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if wait is None else wait - now):
                        await self._wake.wait()
                continue
            for room in ready:
                self._due.discard(room)
                room.due = None
                room.last_read = now
            try:
                await self.refresh(ready)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.warning("presence refresh failing, will retry: %r", exc)
                failing = True
                continue
            if failing:
                log.warning("presence refresh recovered")
                failing = False

    # --- reading ----------------------------------------------------------

    async def refresh(self, rooms: Iterable[Room]) -> None:
        """Re-read what is stale about `rooms` and broadcast what changed.

        Counts come from Redis and view totals also from PostgreSQL; whichever
        fails is marked again without holding up the other.
        """
        rooms = [room for room in rooms if room.open]
        count_rooms = [room for room in rooms if room.dirty_count]
        view_rooms = [room for room in rooms if room.dirty_views]
        for room in rooms:
            room.dirty_count = room.dirty_views = False
        counts: dict[int, int] = {}
        views: dict[int, int] = {}
        failure: Exception | None = None
        if count_rooms:
            try:
                counts = await self._store.counts(room.video_id for room in count_rooms)
            except Exception as exc:
                failure = exc
                for room in count_rooms:
                    self.mark(room, delay=TICK)
        if view_rooms:
            try:
                views = await self._read_views([room.video_id for room in view_rooms])
            except Exception as exc:
                failure = exc
                for room in view_rooms:
                    self.mark(room, views=True, delay=TICK)
        self._catch_up()
        for room in count_rooms:
            if room.video_id in counts:
                room.count = counts[room.video_id]
        for room in view_rooms:
            if room.video_id in views:
                room.views = views[room.video_id]
        for room in rooms:
            if not room.open or (room.video_id not in counts and room.video_id not in views):
                continue
            text = room.state()
            if room.shown is None or room.shown[0] != text:
                self._broadcast(room, text)
        if failure is not None:
            raise failure

    async def views_of(self, room: Room, fallback: int) -> int:
        """The room's view total, read once however many sockets join at once."""
        if room.views is not None:
            return room.views
        video_id = room.video_id
        try:
            totals = await self._views_loading.run(video_id,
                                                   lambda: self._read_views([video_id]))
        except Exception as exc:
            log.warning("view total unavailable for video %s: %r", video_id, exc)
            return fallback
        views = totals.get(video_id, fallback)
        if room.views is None:
            room.views = views
        return views

    # --- sending ----------------------------------------------------------

    def welcome(self, room: Room, conn: Connection, count: int, views: int) -> None:
        """Send a socket that just joined its first numbers; it gets broadcasts from now."""
        first = not room.connections
        room.connections[conn.conn_id] = conn
        if room.count is None:
            room.count = count
        if room.views is None:
            room.views = views
        text = state_text(room.video_id, count, views)
        self._send(room, conn, text, text_frame(text))
        # A broadcast made since the join was read may be newer: the next
        # re-read sends to every socket that lacks its result.
        room.shown = None
        self.mark(room)
        if first:
            # Views announced while no socket here watched were not listened for.
            self.mark(room, views=True)

    def _send(self, room: Room, conn: Connection, text: str, frame: bytes) -> None:
        if conn.sent == text:
            return
        if not conn.deliver(text, frame):
            self._behind[conn] = room
        elif conn.sent == text:
            self.messages_sent += 1

    def _broadcast(self, room: Room, text: str) -> None:
        frame = text_frame(text)
        room.shown = (text, frame)
        room.last_broadcast = asyncio.get_running_loop().time()
        for conn in room.connections.values():
            self._send(room, conn, text, frame)

    def _catch_up(self) -> None:
        """Send the latest state to sockets that were skipped while backed up."""
        behind, self._behind = self._behind, {}
        for conn, room in behind.items():
            if room.open and room.shown is not None \
                    and room.connections.get(conn.conn_id) is conn:
                self._send(room, conn, *room.shown)
