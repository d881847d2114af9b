"""Redis connection and a small pub/sub dispatcher shared by every module.

One pub/sub connection per process; modules register handlers for channels or
patterns before start-up, and a listener task dispatches messages to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import redis.asyncio as redis
from aiohttp import web
from redis.exceptions import RedisError

from .keys import BUS_KEY, CONFIG_KEY, REDIS_KEY
from .keyspace import Keyspace

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]


class Bus:
    def __init__(self, client: redis.Redis, keys: Keyspace) -> None:
        self.client = client
        # Channel names, namespaced like every key.
        self.key = keys
        self._channels: dict[str, MessageHandler] = {}
        self._patterns: dict[str, MessageHandler] = {}
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def on(self, channel: str, handler: MessageHandler) -> None:
        self._channels[channel] = handler

    def on_pattern(self, pattern: str, handler: MessageHandler) -> None:
        self._patterns[pattern] = handler

    async def publish(self, channel: str, data: bytes | str) -> None:
        await self.client.publish(channel, data)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="redis-bus")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._listen()
            except (RedisError, OSError) as exc:
                self.ready.clear()
                log.warning("redis pub/sub lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _listen(self) -> None:
        if not self._channels and not self._patterns:
            self.ready.set()
            await asyncio.Event().wait()
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            if self._channels:
                await pubsub.subscribe(*self._channels)
            if self._patterns:
                await pubsub.psubscribe(*self._patterns)
            self.ready.set()
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    self._dispatch(message)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    def _dispatch(self, message: dict) -> None:
        channel = _text(message["channel"])
        if message["type"] == "pmessage":
            handler = self._patterns.get(_text(message["pattern"]))
        else:
            handler = self._channels.get(channel)
        if handler is None:
            return
        try:
            handler(channel, message["data"])
        except Exception:
            log.exception("pub/sub handler for %s failed", channel)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    # A blocking pool makes a burst of commands wait for a connection instead of
    # failing with "Too many connections".
    pool = redis.BlockingConnectionPool.from_url(
        config.redis_url, max_connections=64, timeout=10, health_check_interval=30,
        socket_connect_timeout=config.db_timeout,
    )
    client = redis.Redis(connection_pool=pool)
    # A Redis that accepts connections but never answers must not hang start-up.
    async with asyncio.timeout(config.db_timeout):
        await client.ping()
    app[REDIS_KEY] = client
    app[BUS_KEY] = Bus(client, Keyspace(config.redis_prefix))
    try:
        yield
    finally:
        await client.aclose()
        await pool.aclose()


async def bus_ctx(app: web.Application) -> AsyncIterator[None]:
    """Starts the listener after every module has registered its handlers."""
    bus = app[BUS_KEY]
    bus.start()
    await asyncio.wait_for(bus.ready.wait(), timeout=10)
    try:
        yield
    finally:
        await bus.stop()
