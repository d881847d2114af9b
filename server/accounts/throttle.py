"""Who may try to sign in or register now.

- Login: AUTH_RATE_LIMIT attempts per AUTH_RATE_WINDOW seconds per client address
  (an IPv6 /64 is one address), every attempt counted; and as many per account
  (the lower-cased email, existing or not), failed attempts only: a successful
  login takes its hit back, so signing in often never locks anyone out.
- Register: the same limit per client address, every attempt counted.

Addresses and emails are stored as keyed hashes, never raw.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from aiohttp import web

from server.core.clients import hash_secret, ip_key, request_ip
from server.core.config import Config
from server.core.ratelimit import Hit, Limit, RateLimiter

DAY = 24 * 3600


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    hit: Hit
    # The per-account limits, which a successful login takes its hit back from.
    account: tuple[Limit, ...]


class AuthThrottle:
    def __init__(self, limiter: RateLimiter, config: Config) -> None:
        self._limiter = limiter
        self._count = config.auth_rate_limit
        self._window = config.auth_rate_window
        self._daily = config.login_daily_limit
        self._proxies = config.trusted_proxies
        self._secret = hash_secret(config.jwt_secret)

    async def login(self, request: web.Request, email: str) -> LoginAttempt:
        """Counts a login attempt, or raises RateLimited (429)."""
        key = self._account_key(email)
        account = (self._limit("login-account", key),
                   self._limiter.limit("login-account-day", key, self._daily, DAY))
        hit = await self._limiter.hit(self._limit("login-ip", self._address_key(request)),
                                      *account)
        return LoginAttempt(hit, account)

    async def login_succeeded(self, attempt: LoginAttempt) -> None:
        await self._limiter.release(attempt.hit, *attempt.account)

    async def register(self, request: web.Request) -> Hit:
        """Counts a registration attempt, or raises RateLimited (429)."""
        return await self._limiter.hit(self._limit("register-ip", self._address_key(request)))

    async def forget(self, hit: Hit) -> None:
        """Takes back an attempt the server refused before trying it."""
        await self._limiter.release(hit)

    def _limit(self, name: str, key: str) -> Limit:
        return self._limiter.limit(name, key, self._count, self._window)

    def _address_key(self, request: web.Request) -> str:
        address = request_ip(request.remote, request.headers, self._proxies)
        return ip_key(address, self._secret)

    def _account_key(self, email: str) -> str:
        message = b"login-account\x1f" + email.strip().lower().encode("utf-8", "replace")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]
