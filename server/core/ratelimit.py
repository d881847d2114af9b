"""Rate limits shared by every process: sliding-window logs in Redis, on Redis's clock.

Each limit is a sorted set of the hits inside its window. One script checks and
records a hit on several limits atomically, so a request counted against both its
address and its account is refused or recorded on both, never on one. A refused
hit is not recorded, so hammering a full limit does not push its end further away.

When Redis cannot answer, limits are not enforced (one warning per outage): a
login outage would be worse than an unthrottled minute, and password checks stay
bounded by their own executor.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as redis
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .clients import Network, ip_key, request_ip
from .config import RateSpec
from .errors import ApiError
from .keyspace import Keyspace

log = logging.getLogger(__name__)

HIT_SCRIPT = (Path(__file__).with_name("ratelimit.lua")).read_text(encoding="utf-8")
# A limit check must not become the slow part of a request when Redis hangs.
REDIS_TIMEOUT = 1.0
OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Limit:
    """At most `count` hits in any `window` seconds on one Redis key."""

    key: str
    count: int
    window: int


@dataclass(frozen=True, slots=True)
class Hit:
    """One recorded hit; `limits` is empty when Redis could not record it."""

    member: str
    limits: tuple[Limit, ...]


class RateLimited(ApiError):
    def __init__(self, retry_after: int) -> None:
        super().__init__(429, "rate_limited", "Too many attempts; retry later",
                         {"Retry-After": str(retry_after)})


class RateLimiter:
    def __init__(self, client: redis.Redis, keys: Keyspace) -> None:
        self._client = client
        self._keys = keys
        self._script = client.register_script(HIT_SCRIPT)
        self._failing = False

    def limit(self, name: str, key: str, count: int, window: int) -> Limit:
        """Limit `name` for one subject (an address hash, an account hash)."""
        return Limit(self._keys("ratelimit", name, key), count, window)

    async def hit(self, *limits: Limit) -> Hit:
        """Records a hit on every limit, or raises RateLimited if any of them is full."""
        member = secrets.token_hex(8)
        args: list[str | int] = [member]
        for limit in limits:
            args += [limit.count, limit.window * 1000]
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                wait_ms = int(await self._script(keys=[lim.key for lim in limits], args=args))
        except OUTAGE_ERRORS as exc:
            self._outage(exc)
            return Hit(member, ())
        self._recovered()
        if wait_ms > 0:
            raise RateLimited(max(1, math.ceil(wait_ms / 1000)))
        return Hit(member, limits)

    async def release(self, hit: Hit, *limits: Limit) -> None:
        """Takes a hit back from `limits` (from all it was recorded on when none are named)."""
        keys = [lim.key for lim in (limits or hit.limits) if lim in hit.limits]
        if not keys:
            return
        try:
            async with asyncio.timeout(REDIS_TIMEOUT), self._client.pipeline(
                transaction=False
            ) as pipe:
                for key in keys:
                    pipe.zrem(key, hit.member)
                await pipe.execute()
        except OUTAGE_ERRORS as exc:
            # The hit stays counted until its window ends: stricter, never looser.
            self._outage(exc)

    def _outage(self, exc: BaseException) -> None:
        if not self._failing:
            self._failing = True
            log.warning("rate limits not enforced: Redis unavailable (%s)",
                        type(exc).__name__)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.info("rate limits enforced again: Redis answers")


class ActionThrottle:
    """Limits on one kind of action (comment, reaction, report, upload), per account and
    per client address at once. An address may carry several accounts (a household, an
    office behind NAT), so its limit is ADDRESS_FACTOR times the account's.
    """

    ADDRESS_FACTOR = 3

    def __init__(self, limiter: RateLimiter, secret: bytes,
                 proxies: Iterable[Network]) -> None:
        self._limiter = limiter
        self._secret = secret
        self._proxies = tuple(proxies)

    async def hit(self, request: web.Request, action: str, user_id: int,
                  spec: RateSpec) -> Hit:
        """Count one `action` by `user_id` from this request, or raise RateLimited (429)."""
        address = ip_key(request_ip(request.remote, request.headers, self._proxies),
                         self._secret)
        return await self._limiter.hit(
            self._limiter.limit(f"{action}-account", str(user_id), spec.count, spec.window),
            self._limiter.limit(f"{action}-ip", address, spec.count * self.ADDRESS_FACTOR,
                                spec.window),
        )

    async def forget(self, hit: Hit) -> None:
        """Take back a hit for an action the server refused before doing it."""
        await self._limiter.release(hit)
