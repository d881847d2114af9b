"""Live "watching now" counts over WebSocket, shared by every process through Redis.

    store.py        Redis: each video's viewers, each address's sockets (scripts in *.lua)
    room.py         one video's sockets in this process, and the frames they are sent
    broadcaster.py  re-reading a room's numbers and pushing them, at most twice a second
    hub.py          the rooms, each socket's Redis work in order, the heartbeat
    deletions.py    closing the sockets of deleted videos, in every process
    bans.py         closing the sockets of banned users, in every process
    sockets.py      an open socket after the upgrade: its frames and the heartbeat sweep
    websocket.py    GET /videos/{id}/active-viewers, and the sockets' messages

Active viewers are distinct viewers: the viewer key of view counting (the
account, else a keyed hash of address and User-Agent), so the tabs of one person
count once. A socket that signs in with an `auth` message counts as its account
from then on. Each address (an IPv6 /64 is one) may hold PRESENCE_MAX_PER_ADDRESS
sockets across every process.

Close codes: 1001 server shutting down; 1013 Redis unavailable, try again later;
4403 "account banned" (the account signed in on the socket); 4404 "video
deleted"; 4429 "too many connections from this address" (the
upgrade is accepted first, since a browser never sees the status of a refused
handshake, only a close code).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import partial

from aiohttp import web

from server.accounts.standing import STANDING_KEY
from server.catalog.handlers import CATALOG_KEY
from server.catalog.records import Catalog, VideoNotFound, hidden
from server.core.keys import BUS_KEY, CHANGES_KEY, CONFIG_KEY, LIVE_COUNTS_KEY, REDIS_KEY
from server.core.keyspace import Keyspace
from server.core.metrics import METRICS_KEY

from ..counter import VIEWS_CHANGED, VIEWS_KEY
from ..metrics import socket_families
from .broadcaster import TICK, Broadcaster
from .deletions import VideoExists
from .hub import PresenceHub
from .room import BANNED, DELETED, TOO_MANY, Connection, state_text, text_frame
from .sockets import Heartbeat
from .store import VIEWERS_CHANGED, PresenceStore
from .websocket import MESSAGES_KEY, PRESENCE_KEY, ViewerMessages, active_viewers

__all__ = ["BANNED", "DELETED", "PRESENCE_KEY", "TICK", "TOO_MANY", "Connection", "PresenceHub",
           "setup", "state_text", "text_frame"]


def video_exists(catalog: Catalog) -> VideoExists:
    async def exists(video_id: int) -> bool:
        """Whether the video may still be watched by anyone: not deleted, nor made
        private, removed, or hidden with its banned author."""
        try:
            row = await catalog.get(str(video_id))
        except VideoNotFound:
            return False
        return not hidden(row)

    return exists


async def presence_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    store = PresenceStore(app[REDIS_KEY], Keyspace(config.redis_prefix), ttl=config.presence_ttl,
                          max_per_address=config.presence_max_per_address)
    standing = app[STANDING_KEY]
    hub = PresenceHub(store, Broadcaster(store, app[VIEWS_KEY].current),
                      video_exists(app[CATALOG_KEY]), standing.is_banned)
    app[PRESENCE_KEY] = hub
    app[LIVE_COUNTS_KEY] = hub
    bus = app[BUS_KEY]
    bus.on(bus.key(VIEWERS_CHANGED), hub.on_viewers_changed)
    bus.on(bus.key(VIEWS_CHANGED), hub.on_views_changed)
    app[CHANGES_KEY].subscribe(hub.deletions.changed)
    standing.on_banned(hub.bans.banned)
    app[METRICS_KEY].add("viewer sockets", partial(socket_families, hub))
    heartbeat = Heartbeat(config.heartbeat)
    messages = app[MESSAGES_KEY] = ViewerMessages(app, hub, app[VIEWS_KEY], heartbeat)
    hub.start()
    beat = asyncio.create_task(heartbeat.run(), name="viewer-socket-heartbeat")
    try:
        yield
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        await hub.stop()
        await messages.stop()


async def close_sockets(app: web.Application) -> None:
    # The hub closes the sockets in rooms; the rest are still joining.
    await asyncio.gather(app[PRESENCE_KEY].close_all(), app[MESSAGES_KEY].close_all())


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(presence_ctx)
    app.on_shutdown.append(close_sockets)
    app.router.add_route("GET", "/videos/{id}/active-viewers", active_viewers,
                         name="active_viewers")
