"""Which page origins may open a WebSocket here. Pure functions.

Browsers send `Origin` on every WebSocket handshake and cookies or cached
credentials ride along, so a socket opened by a foreign page must be refused
(cross-site WebSocket hijacking). Clients that are not browsers send no Origin.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp import web

from .clients import from_trusted_proxy
from .errors import Forbidden
from .keys import CONFIG_KEY

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalise_origin(value: str) -> str | None:
    """`scheme://host[:port]` in lower case without a default port, or None if malformed."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in DEFAULT_PORTS or not host or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username is not None:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def own_origin(scheme: str, host: str) -> str | None:
    """The origin of this server as the request reached it."""
    if not host:
        return None
    return normalise_origin(f"{scheme}://{host}")


def origin_allowed(origin: str | None, own: str | None, allowed: Iterable[str]) -> bool:
    """No Origin, our own origin, or one of `allowed` ("*" allows any)."""
    if origin is None:
        return True
    allowed = tuple(allowed)
    if "*" in allowed:
        return True
    candidate = normalise_origin(origin)
    if candidate is None:
        return False
    if candidate == own:
        return True
    return candidate in {normalise_origin(item) for item in allowed}


def check_origin(request: web.Request) -> None:
    """Refuse requests made by pages of other origins (a viewer socket, a progress report,
    a room's chat): they would act for their visitors."""
    config = request.app[CONFIG_KEY]
    scheme = request.scheme
    proto = request.headers.get("X-Forwarded-Proto")
    if proto and from_trusted_proxy(request.remote, config.trusted_proxies):
        scheme = proto.split(",", 1)[0].strip().lower()
    own = own_origin(scheme, request.host)
    if not origin_allowed(request.headers.get("Origin"), own, config.allowed_origins):
        raise Forbidden("Requests from this origin are not allowed", "origin_not_allowed")
