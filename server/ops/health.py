"""GET /healthz: the process answers and can reach PostgreSQL and Redis.

Both are asked at once, each for at most CHECK_TIMEOUT seconds (never longer than
DB_TIMEOUT for PostgreSQL), so a load balancer's probe gets its 503 quickly
even when a link hangs. The 503 names what failed, not why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import psycopg2
from aiohttp import web
from redis.exceptions import RedisError

from server.core.errors import Unavailable
from server.core.keys import CONFIG_KEY, DB_KEY, REDIS_KEY

routes = web.RouteTableDef()

CHECK_TIMEOUT = 2.0


async def _postgres(app: web.Application) -> None:
    async with app[DB_KEY].cursor() as cur:
        await cur.execute("SELECT 1")


async def _redis(app: web.Application) -> None:
    await app[REDIS_KEY].ping()


async def _answers(check: Awaitable[None], seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await check
    except (TimeoutError, RedisError, OSError, psycopg2.Error):
        return False
    return True


@routes.get("/healthz", name="health")
async def health(request: web.Request) -> web.Response:
    app = request.app
    timeout = min(CHECK_TIMEOUT, app[CONFIG_KEY].db_timeout)
    postgres, redis = await asyncio.gather(_answers(_postgres(app), timeout),
                                           _answers(_redis(app), CHECK_TIMEOUT))
    failed = [name for name, ok in (("PostgreSQL", postgres), ("Redis", redis)) if not ok]
    if failed:
        raise Unavailable(f"{' and '.join(failed)} unavailable")
    return web.json_response({"status": "ok"})


def setup(app: web.Application) -> None:
    app.add_routes(routes)
