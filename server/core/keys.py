"""Every application key in one place, typed.

Features hang their services here; core names the types it knows and the
features' own types by name only, so core imports no feature.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import redis.asyncio as redis
from aiohttp import web

if TYPE_CHECKING:
    from .changes import ChangeFeed
    from .config import Config
    from .db import Database
    from .redis_client import Bus


class ViewTotals(Protocol):
    """Views of videos including those counted but not yet stored."""

    async def with_pending(self, stored: dict[int, int]) -> dict[int, int]: ...


class LiveCounts(Protocol):
    """How many watch each video now, across every process."""

    async def counts(self, video_ids: list[int]) -> dict[int, int]: ...


CONFIG_KEY: web.AppKey[Config] = web.AppKey("config")
DB_KEY: web.AppKey[Database] = web.AppKey("db")
REDIS_KEY = web.AppKey("redis", redis.Redis)
BUS_KEY: web.AppKey[Bus] = web.AppKey("bus")
CHANGES_KEY: web.AppKey[ChangeFeed] = web.AppKey("changes")
VIEW_TOTALS_KEY: web.AppKey[ViewTotals] = web.AppKey("view_totals")
LIVE_COUNTS_KEY: web.AppKey[LiveCounts] = web.AppKey("live_counts")
# Renders an error page for browser routes; absent means JSON everywhere.
HtmlErrors = Callable[[web.Request, int, str], Awaitable[web.StreamResponse | None]]
HTML_ERRORS_KEY: web.AppKey[HtmlErrors] = web.AppKey("html_errors")
