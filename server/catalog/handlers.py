"""GET /videos, GET /videos/{id}, DELETE /videos/{id}."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from server.accounts.auth import authenticated_user, optional_user
from server.core.keys import CHANGES_KEY, CONFIG_KEY, DB_KEY, VIEW_TOTALS_KEY
from server.core.loops import run_every, stop
from server.core.validation import positive_int

from .records import ORPHAN_SWEEP_EVERY, Catalog, video_json

CATALOG_KEY: web.AppKey[Catalog] = web.AppKey("catalog")
routes = web.RouteTableDef()


async def with_current_views(app: web.Application,
                             rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with `views` including views counted but not yet flushed."""
    totals = await app[VIEW_TOTALS_KEY].with_pending({r["id"]: r["views"] for r in rows})
    return [{**r, "views": totals.get(r["id"], r["views"])} for r in rows]


@routes.get("/videos", name="videos")
async def list_videos(request: web.Request) -> web.Response:
    limit = positive_int(request.query.get("limit"), "limit", default=20, maximum=100)
    assert limit is not None
    cursor = request.query.get("cursor")
    before = positive_int(cursor, "cursor") if cursor else None
    # A caller with a valid token also sees their own videos still processing or failed.
    viewer = optional_user(request)
    rows = await request.app[CATALOG_KEY].page(before, limit, viewer)
    items = [video_json(r, viewer) for r in await with_current_views(request.app, rows)]
    next_cursor = str(rows[-1]["id"]) if len(rows) == limit else None
    return web.json_response({"items": items, "next_cursor": next_cursor})


@routes.get("/videos/{id}", name="video")
async def get_video(request: web.Request) -> web.Response:
    row = await request.app[CATALOG_KEY].get(request.match_info["id"])
    [row] = await with_current_views(request.app, [row])
    return web.json_response(video_json(row, optional_user(request)))


@routes.delete("/videos/{id}", name="delete_video")
async def delete_video(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    await request.app[CATALOG_KEY].delete(request.match_info["id"], user_id)
    return web.Response(status=204)


async def catalog_ctx(app: web.Application) -> AsyncIterator[None]:
    catalog = Catalog(app[DB_KEY], app[CHANGES_KEY], app[CONFIG_KEY].storage_dir)
    app[CATALOG_KEY] = catalog
    # The first sweep runs at start-up: it finds what a crash left behind.
    sweep = run_every(ORPHAN_SWEEP_EVERY, catalog.sweep_orphans, "orphan-sweep")
    try:
        yield
    finally:
        await stop(sweep)


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(catalog_ctx)
    app.add_routes(routes)
