"""Signed URLs for the media of private videos. Pure: the clock is passed in.

A `<video>` or `<img>` element cannot send a Bearer header, so the author's
video JSON carries URLs with `?expires=<unix seconds>&sig=<HMAC>`: an HMAC-SHA256
of the video id and the expiry, under a key derived from JWT_SECRET with a label
of its own (a signature is never a valid token, nor the reverse). Whoever holds
the URL may fetch that video's stream, poster and storyboard until it expires;
nothing is looked up to check it.

Expiries are rounded up to a step, so the URLs handed out within one step are
the same and the browser's cache of a private stream keeps working across
page loads.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from dataclasses import dataclass
from enum import Enum

LABEL = b"tubelet signed media url v1"
# base64url of a SHA-256 digest, without padding.
SIG_LENGTH = 43
# Long enough for any expiry a TTL could produce, short enough to bound the work.
MAX_EXPIRES_DIGITS = 12
MAX_STEP = 300


class Verdict(Enum):
    VALID = "valid"
    MISSING = "missing"
    MALFORMED = "malformed"
    EXPIRED = "expired"
    BAD_SIGNATURE = "bad_signature"


def derive_key(secret: str) -> bytes:
    """The signing key: HMAC of a fixed label under the server's secret."""
    return hmac.new(secret.encode("utf-8"), LABEL, hashlib.sha256).digest()


def signature(key: bytes, video_id: int, expires: int) -> str:
    mac = hmac.new(key, f"{video_id}:{expires}".encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def expiry(now: float, ttl: int) -> int:
    """When a URL signed at `now` expires: at least `ttl` seconds on, rounded up to a step."""
    step = max(1, min(MAX_STEP, ttl // 10))
    end = math.ceil(now) + ttl
    return -(-end // step) * step


def verify(key: bytes, video_id: int, expires: str | None, sig: str | None,
           now: float) -> Verdict:
    """Whether `expires` and `sig` (raw query values) let the holder fetch this video now."""
    if not expires or not sig:
        return Verdict.MISSING
    # One spelling of each expiry: ASCII digits without a leading zero.
    if (len(expires) > MAX_EXPIRES_DIGITS or not expires.isascii() or not expires.isdigit()
            or expires[0] == "0" or len(sig) != SIG_LENGTH or not sig.isascii()):
        return Verdict.MALFORMED
    when = int(expires)
    # Checked before the time, so a forged URL learns nothing from the answer.
    if not hmac.compare_digest(signature(key, video_id, when), sig):
        return Verdict.BAD_SIGNATURE
    if when <= now:
        return Verdict.EXPIRED
    return Verdict.VALID


@dataclass(frozen=True, slots=True)
class MediaSigner:
    """Signs and checks the media URLs of private videos with one key and lifetime."""

    key: bytes
    ttl: int

    @classmethod
    def from_secret(cls, secret: str, ttl: int) -> MediaSigner:
        return cls(derive_key(secret), ttl)

    def query(self, video_id: int, now: float) -> str:
        """The query string (without '?') that lets its holder fetch the video's media."""
        expires = expiry(now, self.ttl)
        return f"expires={expires}&sig={signature(self.key, video_id, expires)}"

    def verify(self, video_id: int, expires: str | None, sig: str | None,
               now: float) -> Verdict:
        return verify(self.key, video_id, expires, sig, now)
