"""POST /videos/{id}/views, and the view counter's life in the app: the flush loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

from aiohttp import web
from redis.exceptions import RedisError

from server.accounts.auth import optional_user
from server.catalog.records import VideoNotFound
from server.core.clients import hash_secret
from server.core.errors import Invalid, Unavailable
from server.core.ids import parse_video_id
from server.core.keys import CHANGES_KEY, CONFIG_KEY, DB_KEY, REDIS_KEY, VIEW_TOTALS_KEY
from server.core.keyspace import Keyspace
from server.core.loops import run_every, stop
from server.core.metrics import METRICS_KEY
from server.core.origins import check_origin
from server.core.validation import read_json_object

from .counter import VIEWS_KEY, ViewCounter
from .identity import identify
from .metrics import view_families
from .watch_rules import ReportError, parse_report, parse_session

log = logging.getLogger(__name__)

SHUTDOWN_FLUSH_TIMEOUT = 15.0
PRUNE_EVERY = 3600.0


async def report_progress(request: web.Request) -> web.Response:
    """POST /videos/{id}/views: playback progress from a client without a WebSocket."""
    check_origin(request)
    video_id = parse_video_id(request.match_info["id"])
    counter = request.app[VIEWS_KEY]
    exists, duration = (False, None) if video_id is None \
        else await counter.duration(video_id)
    if video_id is None or not exists:
        raise VideoNotFound()
    # JSON only: a cross-site form can send text/plain without a preflight.
    body = await read_json_object(request)
    try:
        report = parse_report(body)
        session = parse_session(body)
    except ReportError as exc:
        raise Invalid(str(exc)) from None
    watcher = identify(request, optional_user(request))
    try:
        await counter.record(video_id, duration, watcher, "app-" + session, report)
    except RedisError as exc:
        raise Unavailable("View counting is unavailable; retry later") from exc
    return web.Response(status=204)


def flush_rounds(counter: ViewCounter) -> Callable[[], Awaitable[None]]:
    """The flush loop's round. The first runs at start-up: it applies what a crashed
    process left. Old batch records are pruned once an hour."""
    next_prune = 0.0

    async def flush_round() -> None:
        nonlocal next_prune
        await counter.flush()
        now = time.monotonic()
        if now >= next_prune:
            await counter.prune()
            next_prune = now + PRUNE_EVERY

    return flush_round


async def views_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    counter = ViewCounter(
        app[REDIS_KEY], app[DB_KEY], Keyspace(config.redis_prefix),
        secret=hash_secret(config.jwt_secret),
        window=config.view_window, ip_limit=config.view_ip_limit,
        min_watch=config.view_min_watch,
    )
    app[VIEWS_KEY] = counter
    app[VIEW_TOTALS_KEY] = counter
    app[CHANGES_KEY].subscribe(counter.changed)
    app[METRICS_KEY].add("views", partial(view_families, counter))
    task = run_every(config.view_flush_interval, flush_rounds(counter), "view flush")
    try:
        yield
    finally:
        await stop(task)
        try:
            counter.flushed_at_stop = await asyncio.wait_for(counter.flush(),
                                                             SHUTDOWN_FLUSH_TIMEOUT)
        except Exception as exc:
            log.warning("final view flush failed; pending views stay in Redis: %r", exc)


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(views_ctx)
    app.router.add_route("POST", "/videos/{id}/views", report_progress, name="view_progress")
