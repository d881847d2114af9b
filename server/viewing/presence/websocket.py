"""GET /videos/{id}/active-viewers: live counts out, playback reports in."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from redis.exceptions import RedisError

from server.accounts.auth import optional_user, user_from_token
from server.catalog.handlers import CATALOG_KEY
from server.core.errors import ApiError, Unavailable
from server.core.keys import CONFIG_KEY
from server.core.origins import check_origin

from ..counter import VIEWS_KEY
from ..identity import Watcher, identify
from ..watch_rules import ReportError, parse_report
from .hub import PresenceHub
from .room import CLOSE_TIMEOUT, TOO_MANY, Connection, error_text

log = logging.getLogger(__package__)  # one logger for all of presence

MAX_MESSAGE = 4096
MIN_REPORT_SPACING = 0.2

PRESENCE_KEY: web.AppKey[PresenceHub] = web.AppKey("presence")


async def active_viewers(request: web.Request) -> web.StreamResponse:
    app = request.app
    config = app[CONFIG_KEY]
    check_origin(request)
    user_id = optional_user(request)
    # A private or removed video, or one by a banned author, has no public socket.
    row = await app[CATALOG_KEY].shown(request.match_info["id"], user_id)
    # Only these live as long as the socket; the row (with its description) does not.
    video_id, duration, stored_views = row["id"], row["duration"], row["views"]
    del row
    ws = web.WebSocketResponse(heartbeat=config.heartbeat, compress=False,
                               max_msg_size=MAX_MESSAGE, timeout=CLOSE_TIMEOUT)
    if not ws.can_prepare(request).ok:
        raise ApiError(426, "upgrade_required", "Open this URL as a WebSocket",
                       {"Upgrade": "websocket", "Connection": "Upgrade"})
    hub = app[PRESENCE_KEY]
    if hub.closing:
        raise Unavailable("The server is shutting down")
    app[VIEWS_KEY].remember_duration(video_id, duration)
    watcher = identify(request, user_id)
    await ws.prepare(request)
    conn = Connection(video_id, ws, request.transport, viewer=watcher.viewer,
                      address=watcher.ip, user_id=user_id)
    hub.sockets += 1
    try:
        if await hub.join(conn, stored_views):
            await _receive(request, hub, conn, watcher, duration)
        else:
            # Accepted, then closed: a browser sees a close code, never an HTTP status.
            await ws.close(code=TOO_MANY, message=b"too many connections from this address")
    except (RedisError, OSError) as exc:
        log.warning("viewer socket failed: %r", exc)
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"Try again later")
    except Exception:
        log.exception("viewer socket failed")
        await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"Internal error")
    finally:
        hub.sockets -= 1
        await hub.leave(conn)
    return ws


async def _receive(request: web.Request, hub: PresenceHub, conn: Connection, watcher: Watcher,
                   duration: float | None) -> None:
    ws = conn.ws
    counter = request.app[VIEWS_KEY]
    session = "ws-" + conn.conn_id
    loop = asyncio.get_running_loop()
    last_report = -math.inf
    async for msg in ws:
        if msg.type is WSMsgType.ERROR:
            break
        if msg.type is not WSMsgType.TEXT:
            await _send_error(ws, "bad_message", "Send JSON text messages")
            continue
        try:
            body = json.loads(msg.data)
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            await _send_error(ws, "bad_message", "Messages must be JSON objects")
            continue
        kind = body.get("type")
        if kind == "progress":
            try:
                report = parse_report(body)
            except ReportError as exc:
                await _send_error(ws, "bad_message", str(exc))
                continue
            # Reports closer together than this cannot earn anything; they only cost.
            if loop.time() - last_report < MIN_REPORT_SPACING:
                continue
            last_report = loop.time()
            try:
                await counter.record(conn.video_id, duration, watcher, session, report)
            except RedisError as exc:
                log.warning("progress report dropped: %s", exc)
        elif kind == "auth":
            user_id = _token_user(request, body.get("token"))
            if user_id is None:
                await _send_error(ws, "invalid_token", "The access token is invalid or expired")
                continue
            # Views and presence both follow the account from here on, and its ban.
            conn.user_id = user_id
            watcher = identify(request, user_id)
            await hub.rekey(conn, watcher.viewer)
        else:
            await _send_error(ws, "bad_message", "Unknown message type")


def _token_user(request: web.Request, token: Any) -> int | None:
    return user_from_token(request.app, token.strip() if isinstance(token, str) else None)


async def _send_error(ws: web.WebSocketResponse, code: str, message: str) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_str(error_text(code, message))
