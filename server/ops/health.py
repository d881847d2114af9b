"""GET /healthz: the process answers and can reach PostgreSQL and Redis."""

from __future__ import annotations

import asyncio

import psycopg2
from aiohttp import web
from redis.exceptions import RedisError

from server.core.errors import Unavailable
from server.core.keys import DB_KEY, REDIS_KEY

routes = web.RouteTableDef()


@routes.get("/healthz", name="health")
async def health(request: web.Request) -> web.Response:
    try:
        async with asyncio.timeout(2):
            async with request.app[DB_KEY].cursor() as cur:
                await cur.execute("SELECT 1")
            await request.app[REDIS_KEY].ping()
    except (TimeoutError, RedisError, OSError, psycopg2.Error) as exc:
        raise Unavailable(f"dependency check failed: {type(exc).__name__}") from None
    return web.json_response({"status": "ok"})


def setup(app: web.Application) -> None:
    app.add_routes(routes)
