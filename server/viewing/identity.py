"""Who is watching, as views and presence count them, and from which origin."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from server.core.clients import (
    from_trusted_proxy,
    hash_secret,
    ip_key,
    is_bot,
    request_ip,
    viewer_key,
)
from server.core.errors import Forbidden
from server.core.keys import CONFIG_KEY
from server.core.origins import origin_allowed, own_origin


@dataclass(frozen=True, slots=True)
class Watcher:
    """Who reports playback: the viewer's key, the address bucket's key, and bot or not."""

    viewer: str
    ip: str
    bot: bool


def check_origin(request: web.Request) -> None:
    """Refuse requests made by pages of other origins (they would watch for their visitors)."""
    config = request.app[CONFIG_KEY]
    scheme = request.scheme
    proto = request.headers.get("X-Forwarded-Proto")
    if proto and from_trusted_proxy(request.remote, config.trusted_proxies):
        scheme = proto.split(",", 1)[0].strip().lower()
    own = own_origin(scheme, request.host)
    if not origin_allowed(request.headers.get("Origin"), own, config.allowed_origins):
        raise Forbidden("Requests from this origin are not allowed", "origin_not_allowed")


def identify(request: web.Request, user_id: int | None) -> Watcher:
    """The viewer behind a request: views and presence both count by this."""
    config = request.app[CONFIG_KEY]
    secret = hash_secret(config.jwt_secret)
    address = request_ip(request.remote, request.headers, config.trusted_proxies)
    agent = request.headers.get("User-Agent", "")
    return Watcher(viewer_key(user_id, address, agent, secret), ip_key(address, secret),
                   is_bot(agent))
