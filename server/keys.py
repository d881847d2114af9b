"""Every application key in one place, typed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiopg
import redis.asyncio as redis
from aiohttp import web

if TYPE_CHECKING:
    pass

CONFIG_KEY = web.AppKey("config", "Config")
DB_KEY = web.AppKey("db", aiopg.Pool)
QUERIES_KEY = web.AppKey("queries", "Queries")
REDIS_KEY = web.AppKey("redis", redis.Redis)
BUS_KEY = web.AppKey("bus", "Bus")
FILE_CACHE_KEY = web.AppKey("file_cache", "VideoFileCache")
DUMMY_HASH_KEY = web.AppKey("dummy_password_hash", bytes)
PRESENCE_KEY = web.AppKey("presence", "PresenceHub")
VIEWS_KEY = web.AppKey("views", "ViewCounter")
# Renders an error page for browser routes; absent means JSON everywhere.
HTML_ERRORS_KEY = web.AppKey(
    "html_errors", Callable[[web.Request, int, str], Awaitable[web.StreamResponse | None]]
)
