"""The presence hub: this process's rooms, and Redis kept in step with them.

- A socket's Redis work (join, sign-in, leave) runs in order, each step after
  the last and shielded from the handler's cancellation, so a client that
  vanishes mid-join cannot leave Redis half-updated. A viewer's member is added
  with its first tab in this process and removed with its last. A step that
  adds a member waits for a removal of the same member still in flight, and
  removals wait for a heartbeat in flight: neither can undo the other.
- The heartbeat re-scores every member of this process every PRESENCE_TTL/3
  (at most 15 s); the members of a process that dies without a goodbye age out
  within PRESENCE_TTL.
- Every second every room is marked for a re-read, which is how expiries are
  noticed; every VIEWS_POLLS seconds its view total too (that only heals
  messages lost while pub/sub reconnected).
- Sockets of deleted videos are closed by DeletedVideos (deletions.py), those
  of banned users by BannedViewers (bans.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, TypeVar

from aiohttp import WSCloseCode
from redis.exceptions import RedisError

from server.core.ids import parse_video_id
from server.core.loops import run_every, stop

from .bans import BannedViewers, IsBanned
from .broadcaster import Broadcaster
from .deletions import CHECK_INTERVAL, DeletedVideos, VideoExists
from .room import Connection, Room
from .store import PresenceStore

log = logging.getLogger(__package__)  # one logger for all of presence

POLL = 1.0
VIEWS_POLLS = 30
MAX_BEAT = 15.0

T = TypeVar("T")


def beat_interval(ttl: float) -> float:
    return min(MAX_BEAT, ttl / 3)


class PresenceHub:
    def __init__(self, store: PresenceStore, broadcaster: Broadcaster,
                 video_exists: VideoExists, is_banned: IsBanned) -> None:
        self.store = store
        self.broadcaster = broadcaster
        self.beat_interval = beat_interval(store.ttl)
        self.rooms: dict[int, Room] = {}
        self.deletions = DeletedVideos(self.rooms, video_exists)
        self.bans = BannedViewers(self.rooms, is_banned)
        self.closing = False
        # Viewer sockets open now (upgraded, not yet closed).
        self.sockets = 0
        self._steps: set[asyncio.Future[Any]] = set()
        # Removals of a (video, viewer) member in flight; a re-add waits for them.
        self._removing: dict[tuple[int, str], asyncio.Future[Any]] = {}
        self._beat_over = asyncio.Event()
        self._beat_over.set()
        self._polls = 0
        self._tasks: list[asyncio.Task[None]] = []

    # --- one socket -------------------------------------------------------

    async def join(self, conn: Connection, stored_views: int) -> bool:
        """Count the socket's viewer everywhere and send it the current numbers.

        False, with nothing counted, when its address holds as many sockets as
        it may. Whatever the outcome, leave() must follow.
        """
        room = self.rooms.get(conn.video_id)
        if room is None:
            room = self.rooms[conn.video_id] = Room(conn.video_id)
        room.add_tab(conn.viewer)
        after = self._removing.get((conn.video_id, conn.viewer))
        step = self._step(conn, partial(self._admit, room, conn, stored_views, after))
        return await asyncio.shield(step)

    async def _admit(self, room: Room, conn: Connection, stored_views: int,
                     after: asyncio.Future[Any] | None) -> bool:
        if after is not None:
            await asyncio.wait([after])
        count = await self.store.join(room.video_id, conn.viewer, conn.address, conn.conn_id)
        if count is None:
            return False
        views = await self.broadcaster.views_of(room, stored_views)
        # Broadcasts reach the socket only from here, so its own join is the
        # first thing it hears.
        if not conn.left:
            self.broadcaster.welcome(room, conn, count, views)
            self.deletions.joined(room, conn)
            self.bans.joined(conn)
        return True

    async def rekey(self, conn: Connection, viewer: str) -> None:
        """The socket signed in: it is `viewer` from now on, here and in Redis."""
        if viewer == conn.viewer or conn.left or self.closing:
            return
        room = self.rooms[conn.video_id]
        old = conn.viewer
        conn.viewer = viewer
        room.add_tab(viewer)
        last = room.drop_tab(old)
        after = self._removing.get((conn.video_id, viewer))
        step = self._step(conn, partial(self._switch, conn.video_id, viewer,
                                        old if last else None, after))
        if last:
            self._track_removal(conn.video_id, old, step)
        await asyncio.shield(step)

    async def _switch(self, video_id: int, viewer: str, old: str | None,
                      after: asyncio.Future[Any] | None) -> None:
        if after is not None:
            await asyncio.wait([after])
        if old is not None:
            await self._beat_over.wait()
        try:
            await self.store.rekey(video_id, viewer, old)
        except (RedisError, OSError) as exc:
            # The heartbeat adds the new member; the old one expires.
            log.warning("viewer signed in but presence could not follow yet: %s", exc)

    async def leave(self, conn: Connection) -> None:
        """Forget the socket here and in Redis; the Redis part completes even if
        the caller is cancelled."""
        self.broadcaster.drop(conn)
        if self.closing or conn.left:
            return  # stop() removes every member of this process at once
        conn.left = True
        room = self.rooms[conn.video_id]
        room.connections.pop(conn.conn_id, None)
        last = room.drop_tab(conn.viewer)
        if not room.tabs:
            del self.rooms[conn.video_id]
            self.broadcaster.forget(room)
        viewer = conn.viewer if last else None
        step = self._step(conn, partial(self._remove, conn, viewer))
        if viewer is not None:
            self._track_removal(conn.video_id, viewer, step)
        await asyncio.shield(step)

    async def _remove(self, conn: Connection, viewer: str | None) -> None:
        await self._beat_over.wait()
        try:
            await self.store.leave(conn.video_id, viewer, conn.address, conn.conn_id)
        except (RedisError, OSError) as exc:
            log.warning("viewer left but could not be removed (it expires): %s", exc)

    def _step(self, conn: Connection, work: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        """Run `work` after the socket's previous step, as a task of its own, so
        that cancelling the handler (await it shielded) does not stop it."""
        previous = conn.last_step

        async def run() -> T:
            if previous is not None:
                await asyncio.wait([previous])
            return await work()

        task = asyncio.create_task(run())
        conn.last_step = task
        self._steps.add(task)
        task.add_done_callback(partial(self._step_done, conn))
        return task

    def _step_done(self, conn: Connection, task: asyncio.Future[Any]) -> None:
        self._steps.discard(task)
        if conn.last_step is task:
            conn.last_step = None  # a finished task is not worth keeping per socket
        if not task.cancelled():
            task.exception()  # retrieved here: the handler that awaited it may be gone

    def _track_removal(self, video_id: int, viewer: str, step: asyncio.Future[Any]) -> None:
        key = (video_id, viewer)
        self._removing[key] = step

        def done(_: asyncio.Future[Any]) -> None:
            if self._removing.get(key) is step:
                del self._removing[key]

        step.add_done_callback(done)

    # --- keeping members alive --------------------------------------------

    async def refresh_members(self) -> None:
        """Push the expiry of every member of this process PRESENCE_TTL ahead."""
        viewers: dict[int, list[str]] = {}
        sockets: dict[str, list[str]] = defaultdict(list)
        for room in self.rooms.values():
            if not room.connections:
                continue
            viewers[room.video_id] = sorted({c.viewer for c in room.connections.values()})
            for conn in room.connections.values():
                sockets[conn.address].append(conn.conn_id)
        if not viewers:
            return
        self._beat_over.clear()
        try:
            await self.store.refresh(viewers, sockets)
        finally:
            self._beat_over.set()

    async def _poll(self) -> None:
        self._polls += 1
        views = self._polls % VIEWS_POLLS == 0
        for room in self.rooms.values():
            self.broadcaster.mark(room)
            if views:
                self.broadcaster.mark(room, views=True)

    # --- what others announce ---------------------------------------------

    def on_viewers_changed(self, _channel: str, data: bytes) -> None:
        room = self._room_named(data)
        if room is not None:
            self.broadcaster.mark(room)

    def on_views_changed(self, _channel: str, data: bytes) -> None:
        room = self._room_named(data)
        if room is not None:
            self.broadcaster.mark(room, views=True)

    def _room_named(self, data: bytes) -> Room | None:
        video_id = parse_video_id(data.decode("ascii", "replace"))
        return None if video_id is None else self.rooms.get(video_id)

    # --- reading ----------------------------------------------------------

    async def counts(self, video_ids: Iterable[int]) -> dict[int, int]:
        """How many distinct viewers watch each video now, across every process."""
        return await self.store.counts(video_ids)

    # --- lifecycle --------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.broadcaster.run(), name="presence-refresh"),
            run_every(POLL, self._poll, "presence-poll"),
            run_every(self.beat_interval, self.refresh_members, "presence-heartbeat"),
            run_every(CHECK_INTERVAL, self.deletions.check, "presence-deleted-videos"),
        ]

    async def close_all(self) -> None:
        """Close every socket (1001 Going Away) so clients reconnect elsewhere."""
        self.closing = True
        conns = [c for room in self.rooms.values() for c in room.connections.values()]
        await asyncio.gather(*(c.close(WSCloseCode.GOING_AWAY, b"Server shutting down")
                               for c in conns))

    async def stop(self) -> None:
        """Stop the background work and take this process's members out of Redis."""
        self.closing = True
        for task in self._tasks:
            await stop(task)
        if self._steps:
            await asyncio.wait(self._steps)
        self.deletions.stop()
        self.bans.stop()
        viewers: dict[int, list[str]] = {}
        sockets: dict[str, list[str]] = defaultdict(list)
        for room in self.rooms.values():
            if room.tabs:
                viewers[room.video_id] = sorted(room.tabs)
            for conn in room.connections.values():
                sockets[conn.address].append(conn.conn_id)
            self.broadcaster.forget(room)
        self.rooms.clear()
        if viewers or sockets:
            try:
                await self.store.remove(viewers, sockets)
            except (RedisError, OSError) as exc:
                log.warning("could not remove viewers at shutdown (they expire): %s", exc)
