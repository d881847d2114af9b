"""Who is watching, as views and presence count them, and from which origin."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from server.core.clients import (
    hash_secret,
    ip_key,
    is_bot,
    request_ip,
    viewer_key,
)
from server.core.keys import CONFIG_KEY


@dataclass(frozen=True, slots=True)
class Watcher:
    """Who reports playback: the viewer's key, the address bucket's key, and bot or not."""

    viewer: str
    ip: str
    bot: bool


def identify(request: web.Request, user_id: int | None) -> Watcher:
    """The viewer behind a request: views and presence both count by this."""
    config = request.app[CONFIG_KEY]
    secret = hash_secret(config.jwt_secret)
    address = request_ip(request.remote, request.headers, config.trusted_proxies)
    agent = request.headers.get("User-Agent", "")
    return Watcher(viewer_key(user_id, address, agent, secret), ip_key(address, secret),
                   is_bot(agent))


def signed_in(watcher: Watcher, user_id: int) -> Watcher:
    """The same watcher once signed in: its account is its viewer key from now on."""
    return Watcher(viewer_key(user_id, None, "", b""), watcher.ip, watcher.bot)
