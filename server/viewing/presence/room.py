"""One video as this process sees it: its sockets, and what they were last sent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

from ..identity import Watcher
from .sockets import OP_TEXT, frame

if TYPE_CHECKING:
    from .sockets import ViewerSocket

# Unsent bytes past which a socket is skipped until it catches up.
BACKLOG_LIMIT = 64 * 1024
# How long closing a socket waits for the client's close frame.
CLOSE_TIMEOUT = 5.0

# Close codes of our own (RFC 6455 leaves 4000-4999 to applications), shaped
# after the HTTP statuses a browser's WebSocket API cannot show.
DELETED = 4404  # the video was deleted
BANNED = 4403  # the account signed in on the socket was banned
TOO_MANY = 4429  # the address holds PRESENCE_MAX_PER_ADDRESS sockets already


def state_text(video_id: int, active_viewers: int, views: int) -> str:
    return json.dumps({"video_id": video_id, "active_viewers": active_viewers,
                       "views": views})


def error_text(code: str, message: str) -> str:
    return json.dumps({"error": {"code": code, "message": message}})


def text_frame(text: str) -> bytes:
    """One unfragmented, unmasked WebSocket text frame (RFC 6455, 5.2), as servers send."""
    return frame(OP_TEXT, text.encode())


class Reader(Protocol):
    """Who reads a connection's messages (websocket.ViewerMessages)."""

    def message(self, conn: Connection, text: str | None) -> None: ...

    def lost(self, conn: Connection) -> None: ...


class Connection:
    """One open socket: whose it is, and the last state written to it.

    It owns its `ViewerSocket` (sockets.py) and passes its messages on to `reader`.
    """

    __slots__ = ("video_id", "conn_id", "ws", "transport", "viewer", "address", "user_id",
                 "sent", "last_step", "left", "reader", "watcher", "duration", "last_report",
                 "joined", "counted", "admitted", "pending")

    def __init__(self, video_id: int, ws: ViewerSocket | None,
                 transport: asyncio.Transport | None, *, viewer: str, address: str,
                 user_id: int | None = None) -> None:
        self.video_id = video_id
        self.conn_id = secrets.token_hex(8)
        self.ws = ws
        self.transport = transport
        self.reader: Reader | None = None
        # The watcher the socket's playback reports count for, and the video's duration.
        self.watcher: Watcher | None = None
        self.duration: float | None = None
        self.last_report = -math.inf
        # hub.join() has returned; the socket counts in hub.sockets until it leaves.
        self.joined = False
        self.counted = False
        # Whether hub.join() let it in (None while it decides), and the messages that
        # arrived meanwhile, read once it is in.
        self.admitted: bool | None = None
        self.pending: list[str | None] | None = None
        # The viewer key (changes when the socket signs in) and the address bucket's key.
        self.viewer = viewer
        self.address = address
        # The account signed in on the socket, if any: its ban closes the socket.
        self.user_id = user_id
        self.sent: str | None = None
        # This socket's Redis work runs in order: each step starts after the last.
        self.last_step: asyncio.Future[Any] | None = None
        self.left = False

    async def close(self, code: int, message: bytes) -> None:
        """Close the socket, waiting at most CLOSE_TIMEOUT for the client's answer."""
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close(code, message)

    def message(self, sock: ViewerSocket, text: str | None) -> None:
        if self.reader is not None:
            self.reader.message(self, text)

    def lost(self, sock: ViewerSocket) -> None:
        if self.reader is not None:
            self.reader.lost(self)

    def deliver(self, text: str, frame: bytes) -> bool:
        """Write `frame` (the encoding of `text`) now; False if the client is behind.

        The frame goes straight to the transport: it is complete, so it cannot
        interleave with aiohttp's own frames, and it is never awaited.
        """
        transport = self.transport
        # Not an isinstance test: uvloop's transports do not subclass asyncio.Transport.
        if self.ws is None or self.ws.closed or transport is None or transport.is_closing():
            return True
        if transport.get_write_buffer_size() > BACKLOG_LIMIT:
            return False
        transport.write(frame)
        self.sent = text
        return True


class Room:
    """One video with sockets in this process."""

    __slots__ = ("video_id", "connections", "tabs", "count", "views", "shown", "due",
                 "last_read", "last_broadcast", "dirty_count", "dirty_views", "open", "gone")

    def __init__(self, video_id: int) -> None:
        self.video_id = video_id
        # Joined sockets by connection id: broadcasts reach these.
        self.connections: dict[str, Connection] = {}
        # Sockets per viewer, joining ones included: a viewer's member leaves
        # Redis only with the last of its tabs here.
        self.tabs: Counter[str] = Counter()
        # The numbers last read (None until first read), and the text and
        # frame last broadcast.
        self.count: int | None = None
        self.views: int | None = None
        self.shown: tuple[str, bytes] | None = None
        # When the numbers are next re-read (None: not scheduled), and what is stale.
        self.due: float | None = None
        self.last_read = -math.inf
        self.last_broadcast = -math.inf
        self.dirty_count = False
        self.dirty_views = False
        # False once the hub has let go of the room; late results are dropped.
        self.open = True
        # The video was deleted: a socket that finishes joining now is closed too.
        self.gone = False

    def add_tab(self, viewer: str) -> None:
        self.tabs[viewer] += 1

    def drop_tab(self, viewer: str) -> bool:
        """One tab of `viewer` went; True if it was the last one here."""
        self.tabs[viewer] -= 1
        if self.tabs[viewer] > 0:
            return False
        del self.tabs[viewer]
        return True

    def state(self) -> str:
        return state_text(self.video_id, self.count or 0, self.views or 0)
