"""Who is watching: client address, viewer identity and bot detection. Pure functions.

Raw addresses are never stored: the viewer and the per-address cap are keyed by
HMACs under a secret derived from JWT_SECRET.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable

from multidict import MultiMapping

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

HASH_LABEL = b"tubelet view hash v1"
# One household or one attacker usually owns a whole IPv6 /64, so the per-address
# cap treats the /64 as one address.
IPV6_BUCKET_PREFIX = 64

# Crawlers, link previewers, monitors, headless browsers and HTTP libraries.
# Matched case-insensitively anywhere in the User-Agent.
BOT_PATTERN = re.compile(
    r"(?<!cu)bot\b|crawl|spider|slurp|scrap|archiver|facebookexternalhit|facebookcatalog"
    r"|embedly|preview|whatsapp|mediapartners|feedfetcher|apis-google|yandex"
    r"|semrush|ahrefs|mj12|gptbot|ccbot|headless|phantomjs|puppeteer|selenium|webdriver"
    r"|lighthouse|pingdom|uptime|statuscake|\+https?://|curl/|wget/|httpie|python-requests"
    r"|python-urllib|aiohttp|httpx|go-http-client|java/|libwww|lwp-|node-fetch|undici"
    r"|axios/|postmanruntime|insomnia|httpclient|winhttp|guzzle|php/",
    re.IGNORECASE,
)


def hash_secret(jwt_secret: str) -> bytes:
    """The key for viewer hashes, derived so it differs from the token-signing key."""
    return hmac.new(jwt_secret.encode(), HASH_LABEL, hashlib.sha256).digest()


def parse_address(raw: str) -> Address | None:
    """An IP address from a peer or X-Forwarded-For entry (ports and brackets allowed)."""
    value = raw.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        value = value[1:end]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]  # IPv4 with a port
    try:
        address = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, proxies: Iterable[Network]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def from_trusted_proxy(remote: str | None, trusted_proxies: Iterable[Network]) -> bool:
    """Whether the peer is one of the proxies whose forwarding headers are believed."""
    address = parse_address(remote) if remote else None
    return address is not None and _trusted(address, trusted_proxies)


def request_ip(remote: str | None, headers: MultiMapping[str],
               trusted_proxies: Iterable[Network]) -> Address | None:
    """The client's address behind the request: `client_ip` over every X-Forwarded-For line.

    Proxies may append a header line of their own rather than extend the last one,
    so all lines are read, in order, as one list.
    """
    forwarded = ", ".join(headers.getall("X-Forwarded-For", ())) or None
    return client_ip(remote, forwarded, trusted_proxies)


def client_ip(remote: str | None, forwarded_for: str | None,
              trusted_proxies: Iterable[Network]) -> Address | None:
    """The client's address.

    X-Forwarded-For is read right to left and believed only while the hop that
    wrote the next entry is a trusted proxy; the first untrusted hop is the
    client. A garbled entry stops the walk at the proxy that passed it on.
    """
    proxies = tuple(trusted_proxies)
    current = parse_address(remote) if remote else None
    if current is None or not forwarded_for or not _trusted(current, proxies):
        return current
    for entry in reversed(forwarded_for.split(",")):
        if not entry.strip():
            continue
        hop = parse_address(entry)
        if hop is None:
            return current
        current = hop
        if not _trusted(current, proxies):
            return current
    return current


def ip_bucket(address: Address | None) -> str:
    """The unit the per-address cap counts: the IPv4 address, or the IPv6 /64."""
    if address is None:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network((address, IPV6_BUCKET_PREFIX), strict=False)
        return str(network)
    return str(address)


def _digest(secret: bytes, *parts: str) -> str:
    message = "\x1f".join(parts).encode("utf-8", "replace")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:32]


def viewer_key(user_id: int | None, address: Address | None, user_agent: str,
               secret: bytes) -> str:
    """One viewer: the account when signed in, else a keyed hash of address and agent."""
    if user_id is not None:
        return f"u{user_id}"
    return "a" + _digest(secret, "viewer", str(address), user_agent)


def ip_key(address: Address | None, secret: bytes) -> str:
    return _digest(secret, "ip", ip_bucket(address))


def is_bot(user_agent: str | None) -> bool:
    """Known crawlers and tools never count; neither does a request with no User-Agent."""
    if not user_agent or not user_agent.strip():
        return True
    return BOT_PATTERN.search(user_agent) is not None
