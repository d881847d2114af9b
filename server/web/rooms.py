"""The live rooms' pages: the list of rooms at /rooms and one room at /rooms/{id}.

Those paths are the JSON API's too (GET /rooms, GET /rooms/{id}), so what answers
depends on what the client asks for: a browser navigating there asks for HTML and
gets the page; everything else (the pages' own scripts send `Accept:
application/json`, API clients send that or nothing) gets the API. The API's
handlers ask `page` first (ROOM_PAGES_KEY), so no middleware runs on every request.

A room's page is a shell: its script reads the room, joins it (POST /rooms/{id}/join),
connects to LiveKit with the token the API issued and runs the chat, since only the
tab knows who is signed in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from server.core.errors import NotFound
from server.core.keys import CONFIG_KEY
from server.live.keys import ROOM_PAGES_KEY
from server.live.messages import BODY_MAX

from .pages import PLAIN_HOST, render

ROOM_PATH = re.compile(r"/rooms/([^/]+)")
ROOM_ID = re.compile(r"[1-9][0-9]{0,18}")
ID_MAX = 2**63 - 1  # rooms.id is a bigserial
ROOM_NAME_MAX = 100  # the rooms table's CHECK
PARTICIPANTS_MAX = 1000


@dataclass(frozen=True, slots=True)
class PageRequest:
    """A request for a room page: the list (room_id None) or one room by its raw id."""

    room_id: str | None


def asks_for_html(accept: str) -> bool:
    # A navigation asks for text/html; fetch() from the pages asks for JSON by name.
    return "text/html" in accept and "application/json" not in accept


def shared_path(path: str) -> PageRequest | None:
    """The page at a path the API answers too, or None for any other path."""
    if path == "/rooms":
        return PageRequest(None)
    match = ROOM_PATH.fullmatch(path)
    return PageRequest(match[1]) if match else None


def page_request(method: str, path: str, accept: str) -> PageRequest | None:
    """The room page a request asks for, or None when the API should answer."""
    if method != "GET" or not asks_for_html(accept):
        return None
    return shared_path(path)


def parse_room_id(raw: str) -> int | None:
    if not ROOM_ID.fullmatch(raw):
        return None
    value = int(raw)
    return value if value <= ID_MAX else None


def livekit_origins(url: str | None) -> tuple[str, ...]:
    """What a room page's connect-src must allow for LiveKit: the signalling WebSocket
    and the HTTP origin livekit-client asks why a connection was refused.

    livekit-client turns http(s) URLs into ws(s) ones and back, so each scheme
    comes with its partner. An address that cannot be named safely in a policy
    allows nothing more: the page then cannot reach LiveKit, which is visible,
    rather than loosening the policy.
    """
    if url is None:
        return ()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ()
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    if not host or not PLAIN_HOST.fullmatch(host):
        return ()
    secure = parts.scheme in {"wss", "https"}
    return (f"{'wss' if secure else 'ws'}://{host}", f"{'https' if secure else 'http'}://{host}")


async def rooms_page(request: web.Request) -> web.Response:
    return render(request, "rooms.html", {
        "name_max": ROOM_NAME_MAX,
        "participants_max": PARTICIPANTS_MAX,
    })


async def room_page(request: web.Request, raw_id: str) -> web.Response:
    room_id = parse_room_id(raw_id)
    if room_id is None:
        raise NotFound("There is no such room.")
    livekit_url = request.app[CONFIG_KEY].livekit_url
    return render(request, "room.html", {
        "room_id": room_id,
        "media": livekit_url is not None,
        "chat_max": BODY_MAX,
    }, connect=livekit_origins(livekit_url))


async def page(request: web.Request) -> web.StreamResponse | None:
    """The room page this request asks for, or None when the API should answer."""
    wanted = page_request(request.method, request.path, request.headers.get("Accept", ""))
    if wanted is None:
        return None
    response = await (rooms_page(request) if wanted.room_id is None
                      else room_page(request, wanted.room_id))
    response.headers["Vary"] = "Accept"
    return response


def setup(app: web.Application) -> None:
    app[ROOM_PAGES_KEY] = page
