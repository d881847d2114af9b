"""GET /videos, GET/PATCH/DELETE /videos/{id}, GET /users/{id}/videos."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from server.accounts.auth import authenticated_user, optional_user
from server.accounts.policy import Role
from server.accounts.standing import STANDING_KEY
from server.core.keys import CHANGES_KEY, CONFIG_KEY, DB_KEY, VIEW_TOTALS_KEY
from server.core.loops import run_every, stop
from server.core.validation import positive_int, read_json_object
from server.storage.keys import NODE_CACHE_KEY, STORE_KEY

from . import records
from .edits import parse_edit
from .records import ORPHAN_SWEEP_EVERY, Catalog, RoleOf, video_json
from .signing import MediaSigner

CATALOG_KEY: web.AppKey[Catalog] = web.AppKey("catalog")
# Signs and checks the media URLs of private videos (the stream, poster and storyboard).
SIGNER_KEY: web.AppKey[MediaSigner] = web.AppKey("media_signer")
routes = web.RouteTableDef()


async def with_current_views(app: web.Application,
                             rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """records.with_current_views with this app's view totals."""
    return await records.with_current_views(app[VIEW_TOTALS_KEY], rows)


def page_params(request: web.Request) -> tuple[int, int | None]:
    """`limit` and the keyset cursor (the last id of the page before) of a list request."""
    limit = positive_int(request.query.get("limit"), "limit", default=20, maximum=100)
    assert limit is not None
    cursor = request.query.get("cursor")
    before = positive_int(cursor, "cursor") if cursor else None
    return limit, before


async def page_response(request: web.Request, rows: list[dict[str, Any]], limit: int,
                        viewer: int | None) -> web.Response:
    signer = request.app[SIGNER_KEY]
    items = [video_json(r, viewer, signer) for r in await with_current_views(request.app, rows)]
    next_cursor = str(rows[-1]["id"]) if len(rows) == limit else None
    return web.json_response({"items": items, "next_cursor": next_cursor})


@routes.get("/videos", name="videos")
async def list_videos(request: web.Request) -> web.Response:
    limit, before = page_params(request)
    # A caller with a valid token also sees their own videos of any state.
    viewer = optional_user(request)
    rows = await request.app[CATALOG_KEY].page(before, limit, viewer)
    return await page_response(request, rows, limit, viewer)


@routes.get("/users/{id}/videos", name="user_videos")
async def list_user_videos(request: web.Request) -> web.Response:
    limit, before = page_params(request)
    viewer = optional_user(request)
    rows = await request.app[CATALOG_KEY].user_page(request.match_info["id"], before, limit,
                                                    viewer)
    return await page_response(request, rows, limit, viewer)


@routes.get("/videos/{id}", name="video")
async def get_video(request: web.Request) -> web.Response:
    viewer = optional_user(request)
    row = await request.app[CATALOG_KEY].shown(request.match_info["id"], viewer)
    [row] = await with_current_views(request.app, [row])
    return web.json_response(video_json(row, viewer, request.app[SIGNER_KEY]))


@routes.patch("/videos/{id}", name="edit_video")
async def edit_video(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    edit = parse_edit(await read_json_object(request))
    row = await request.app[CATALOG_KEY].edit(request.match_info["id"], user_id, edit)
    [row] = await with_current_views(request.app, [row])
    return web.json_response(video_json(row, user_id, request.app[SIGNER_KEY]))


@routes.delete("/videos/{id}", name="delete_video")
async def delete_video(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    await request.app[CATALOG_KEY].delete(request.match_info["id"], user_id)
    return web.Response(status=204)


def role_reader(app: web.Application) -> RoleOf:
    """How the catalog learns a viewer's role, to show hidden videos to moderators.

    Standing is looked up when first needed, not at start-up: its context may be
    entered after this one.
    """
    async def role_of(user_id: int) -> Role:
        return await app[STANDING_KEY].role(user_id)

    return role_of


async def catalog_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    signer = MediaSigner.from_secret(config.jwt_secret, config.stream_url_ttl)
    app[SIGNER_KEY] = signer
    catalog = Catalog(app[DB_KEY], app[CHANGES_KEY], app[STORE_KEY], app[NODE_CACHE_KEY],
                      signer, config.search_language, role_reader(app))
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
