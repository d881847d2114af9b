"""GET /videos/{id}/active-viewers: live counts out, playback reports in.

The handler checks the request, answers the upgrade itself and hands the connection to a
`sockets.ViewerSocket`, so an open socket keeps no aiohttp request, handler task or
reader (sockets.py says why). Its messages are read by `ViewerMessages`, one per
application: playback reports go to view counting, `auth` messages sign the socket in.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.http import SERVER_SOFTWARE
from redis.exceptions import RedisError

from server.accounts.auth import optional_user, user_from_token
from server.catalog.handlers import CATALOG_KEY
from server.core.errors import ApiError, Unavailable
from server.core.http import TakenOver, take_over
from server.core.origins import check_origin

from ..counter import VIEWS_KEY, ViewCounter
from ..identity import identify, signed_in
from ..watch_rules import ReportError, parse_report
from .hub import PresenceHub
from .room import CLOSE_TIMEOUT, TOO_MANY, Connection, error_text
from .sockets import Heartbeat, ViewerSocket, accept_value

log = logging.getLogger(__package__)  # one logger for all of presence

MAX_MESSAGE = 4096
MIN_REPORT_SPACING = 0.2
# Messages kept from a socket that is still joining; more are dropped.
MAX_PENDING = 8

PRESENCE_KEY: web.AppKey[PresenceHub] = web.AppKey("presence")
MESSAGES_KEY: web.AppKey[ViewerMessages] = web.AppKey("viewer_messages")


async def active_viewers(request: web.Request) -> web.StreamResponse:
    app = request.app
    check_origin(request)
    user_id = optional_user(request)
    # A private or removed video, or one by a banned author, has no public socket.
    row = await app[CATALOG_KEY].shown(request.match_info["id"], user_id)
    # Only these live as long as the socket; the row (with its description) does not.
    video_id, duration, stored_views = row["id"], row["duration"], row["views"]
    del row
    # aiohttp's checks of the handshake (method, Upgrade, Connection, version, key).
    try:
        ready = web.WebSocketResponse(compress=False).can_prepare(request).ok
    except ValueError:  # a key aiohttp cannot even decode (not ASCII)
        raise ApiError(400, "bad_handshake", "Sec-WebSocket-Key is not valid") from None
    if not ready:
        raise ApiError(426, "upgrade_required", "Open this URL as a WebSocket",
                       {"Upgrade": "websocket", "Connection": "Upgrade"})
    hub = app[PRESENCE_KEY]
    if hub.closing:
        raise Unavailable("The server is shutting down")
    messages = app[MESSAGES_KEY]
    app[VIEWS_KEY].remember_duration(video_id, duration)
    watcher = identify(request, user_id)
    conn = Connection(video_id, None, None, viewer=watcher.viewer, address=watcher.ip,
                      user_id=user_id)
    conn.reader = messages
    conn.watcher = watcher
    conn.duration = duration
    sock = ViewerSocket(None, conn, messages.heartbeat, MAX_MESSAGE, CLOSE_TIMEOUT)
    try:
        transport, tail = take_over(request, sock)
    except ConnectionError:
        sock.connection_lost(None)
        return TakenOver(status=499)
    sock.transport = transport
    conn.ws = sock
    conn.transport = transport
    conn.counted = True
    hub.sockets += 1
    transport.write(switching_protocols(request.headers["Sec-WebSocket-Key"]))
    if tail:
        sock.data_received(tail)
    del request
    try:
        conn.admitted = await hub.join(conn, stored_views)
        if not conn.admitted:
            # Accepted, then closed: a browser sees a close code, never an HTTP status.
            await sock.close(TOO_MANY, b"too many connections from this address")
        elif hub.closing:
            await sock.close(WSCloseCode.GOING_AWAY, b"Server shutting down")
        else:
            messages.admitted(conn)
    except (RedisError, OSError) as exc:
        conn.admitted = False
        log.warning("viewer socket failed: %r", exc)
        await sock.close(WSCloseCode.TRY_AGAIN_LATER, b"Try again later")
    except Exception:
        conn.admitted = False
        log.exception("viewer socket failed")
        await sock.close(WSCloseCode.INTERNAL_ERROR, b"Internal error")
    finally:
        conn.joined = True
        if conn.admitted is None:
            conn.admitted = False  # cancelled
        if sock.closed:
            await messages.leave(conn)
    return TakenOver(status=101)


def switching_protocols(key: str) -> bytes:
    """The 101 answer to a handshake aiohttp's checks accepted."""
    from aiohttp.helpers import rfc822_formatted_time

    return ("HTTP/1.1 101 Switching Protocols\r\n"
            "Upgrade: websocket\r\nConnection: upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_value(key)}\r\n"
            f"Date: {rfc822_formatted_time()}\r\nServer: {SERVER_SOFTWARE}\r\n"
            "X-Content-Type-Options: nosniff\r\n\r\n").encode("latin-1")


class ViewerMessages:
    """Reads every viewer socket's messages, and lets sockets go when they close."""

    def __init__(self, app: web.Application, hub: PresenceHub, counter: ViewCounter,
                 heartbeat: Heartbeat) -> None:
        self._app = app
        self._hub = hub
        self._counter = counter
        self.heartbeat = heartbeat
        self._work: set[asyncio.Future[Any]] = set()

    def _spawn(self, coro: Any) -> None:
        work = asyncio.ensure_future(coro)
        self._work.add(work)
        work.add_done_callback(self._work.discard)

    async def stop(self) -> None:
        if self._work:
            await asyncio.wait(list(self._work))

    async def close_all(self) -> None:
        """Close (1001) every open socket, those still joining included."""
        await asyncio.gather(*(sock.close(WSCloseCode.GOING_AWAY, b"Server shutting down")
                               for sock in list(self.heartbeat.sockets)))

    def admitted(self, conn: Connection) -> None:
        """The socket is in: read what it sent while it was joining."""
        pending, conn.pending = conn.pending, None
        for text in pending or ():
            self.message(conn, text)

    def lost(self, conn: Connection) -> None:
        if conn.joined:
            self._spawn(self.leave(conn))

    async def leave(self, conn: Connection) -> None:
        if conn.counted:
            conn.counted = False
            self._hub.sockets -= 1
            await self._hub.leave(conn)

    def message(self, conn: Connection, text: str | None) -> None:
        sock = conn.ws
        if sock is None or conn.admitted is False:
            return
        if conn.admitted is None:  # still joining: read once it is in (a few at most)
            if conn.pending is None:
                conn.pending = []
            if len(conn.pending) < MAX_PENDING:
                conn.pending.append(text)
            return
        if text is None:
            sock.send_text(error_text("bad_message", "Send JSON text messages"))
            return
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            sock.send_text(error_text("bad_message", "Messages must be JSON objects"))
            return
        kind = body.get("type")
        if kind == "progress":
            try:
                report = parse_report(body)
            except ReportError as exc:
                sock.send_text(error_text("bad_message", str(exc)))
                return
            # Reports closer together than this cannot earn anything; they only cost.
            now = asyncio.get_running_loop().time()
            if now - conn.last_report < MIN_REPORT_SPACING:
                return
            conn.last_report = now
            self._spawn(self._record(conn, report))
        elif kind == "auth":
            token = body.get("token")
            user_id = user_from_token(self._app, token.strip() if isinstance(token, str)
                                      else None)
            if user_id is None:
                sock.send_text(error_text("invalid_token",
                                          "The access token is invalid or expired"))
                return
            # Views and presence both follow the account from here on, and its ban.
            if conn.watcher is None:
                return
            conn.user_id = user_id
            conn.watcher = signed_in(conn.watcher, user_id)
            self._spawn(self._hub.rekey(conn, conn.watcher.viewer))
        else:
            sock.send_text(error_text("bad_message", "Unknown message type"))

    async def _record(self, conn: Connection, report: Any) -> None:
        if conn.watcher is None:
            return
        try:
            await self._counter.record(conn.video_id, conn.duration, conn.watcher,
                                       "ws-" + conn.conn_id, report)
        except RedisError as exc:
            log.warning("progress report dropped: %s", exc)
