"""The application factory: one cleanup context per resource, one setup per module."""

from __future__ import annotations

from aiohttp import web

from . import auth, health, pages, presence, streaming, videos, views
from .bus import bus_ctx, redis_ctx
from .config import Config
from .db import db_ctx
from .errors import error_middleware
from .keys import CONFIG_KEY

# JSON bodies are small; uploads are streamed and not bound by this.
CLIENT_MAX_SIZE = 1024 * 1024


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=CLIENT_MAX_SIZE)
    app[CONFIG_KEY] = config
    app.cleanup_ctx.append(db_ctx)
    app.cleanup_ctx.append(redis_ctx)
    health.setup(app)
    auth.setup(app)
    streaming.setup(app)
    videos.setup(app)
    views.setup(app)
    presence.setup(app)
    pages.setup(app)
    # Last, so every module has registered its pub/sub handlers first.
    app.cleanup_ctx.append(bus_ctx)
    return app
