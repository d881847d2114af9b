"""The application factory: one cleanup context per resource, one setup per feature."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from server.accounts import handlers as accounts
from server.catalog import handlers as catalog
from server.core import http
from server.core.changes import ChangeFeed
from server.core.config import Config
from server.core.db import db_ctx
from server.core.errors import error_middleware
from server.core.keys import CHANGES_KEY, CONFIG_KEY, DB_KEY
from server.core.redis_client import bus_ctx, redis_ctx
from server.delivery import handler as delivery
from server.ingest import tus
from server.ingest import upload as ingest
from server.live import chat as room_chat
from server.live import handlers as rooms
from server.moderation import handlers as moderation
from server.ops import health, metrics, openapi
from server.social import handlers as social
from server.storage import keys as storage
from server.viewing import presence, reports
from server.web import pages

# JSON bodies are small; uploads are streamed and not bound by this.
CLIENT_MAX_SIZE = 1024 * 1024


async def changes_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    feed = ChangeFeed(config.database_url, app[DB_KEY].queries,
                      connect_timeout=config.db_timeout)
    app[CHANGES_KEY] = feed
    await feed.start()
    try:
        yield
    finally:
        await feed.stop()


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=CLIENT_MAX_SIZE)
    app[CONFIG_KEY] = config
    app.cleanup_ctx.append(db_ctx)
    app.cleanup_ctx.append(changes_ctx)
    app.cleanup_ctx.append(redis_ctx)
    storage.setup(app)
    http.setup(app)
    metrics.setup(app)
    health.setup(app)
    openapi.setup(app)
    accounts.setup(app)
    catalog.setup(app)
    delivery.setup(app)
    ingest.setup(app)
    tus.setup(app)
    reports.setup(app)
    social.setup(app)
    moderation.setup(app)
    presence.setup(app)
    rooms.setup(app)
    room_chat.setup(app)
    pages.setup(app)
    # Last, so every feature has registered its pub/sub handlers first.
    app.cleanup_ctx.append(bus_ctx)
    return app
