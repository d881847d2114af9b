"""bcrypt on its own few threads, with a bounded queue in front of them.

bcrypt keeps a core busy for its whole run. On the default executor a login flood
would starve the file work (fsync, rename, unlink) that uploads and deletes put
there; on the event loop it would stall everything. Past `max_waiting` queued
checks a request is refused at once with 503 and Retry-After: a client would
give up on a longer queue anyway, and the work it left behind would still run.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import bcrypt

from server.core.errors import ApiError

log = logging.getLogger(__name__)

T = TypeVar("T")
BCRYPT_MAX_BYTES = 72


class Saturated(ApiError):
    """Every bcrypt worker is busy and the queue is full.

    Not an Unavailable, which is logged once per request: this is load being shed
    on purpose, logged once per overload.
    """

    def __init__(self, retry_after: int) -> None:
        super().__init__(503, "unavailable", "Too many sign-ins in progress; retry shortly",
                         {"Retry-After": str(retry_after)})


class PasswordHasher:
    def __init__(self, rounds: int, workers: int, max_waiting: int) -> None:
        self._rounds = rounds
        self._workers = workers
        self._capacity = workers + max_waiting
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bcrypt")
        self._pending = 0
        self._shedding = False
        self._seconds_per_hash = 0.0
        self._dummy = b""

    async def start(self) -> None:
        """Hashes the stand-in for unknown accounts, timing one hash on the way."""
        started = time.perf_counter()
        self._dummy = await self.hash(b"timing-equaliser-password")
        self._seconds_per_hash = time.perf_counter() - started

    def close(self) -> None:
        # Queued checks belong to requests that are gone; a running one finishes alone.
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def hash(self, password: bytes) -> bytes:
        return await self._run(bcrypt.hashpw, password, bcrypt.gensalt(self._rounds))

    async def check(self, password: bytes, hashed: bytes | None) -> bool:
        """Whether `password` matches `hashed`.

        With no hash (an unknown email) it still pays for one check, so response
        time does not tell which emails have accounts.
        """
        if len(password) > BCRYPT_MAX_BYTES:
            return False  # no account can have it: registration refuses such passwords
        ok = await self._run(bcrypt.checkpw, password, hashed or self._dummy)
        return ok and hashed is not None

    async def _run(self, work: Callable[..., T], *args: bytes) -> T:
        if self._pending >= self._capacity:
            self._shed()
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, work, *args)
        finally:
            self._pending -= 1
            if self._pending == 0 and self._shedding:
                self._shedding = False
                log.info("password checks keep up again")

    def _shed(self) -> None:
        if not self._shedding:
            # Once per overload, not once per refused request.
            self._shedding = True
            log.warning("password checks saturated (%d running or queued); refusing more",
                        self._pending)
        drain = self._pending * self._seconds_per_hash / self._workers
        raise Saturated(max(1, math.ceil(drain)))
