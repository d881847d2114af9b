"""The social API: comments, reactions, subscriptions, blocks, feeds and search.

Writes are rate limited per account and per address (core.ratelimit.ActionThrottle):
comments by RATE_LIMIT_COMMENT, reactions and subscriptions each by RATE_LIMIT_REACTION.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from aiohttp import web

from server.accounts.auth import authenticated_user, optional_user
from server.core.clients import hash_secret
from server.core.config import RateSpec
from server.core.ids import parse_id
from server.core.keys import CONFIG_KEY, DB_KEY, REDIS_KEY, VIEW_TOTALS_KEY
from server.core.keyspace import Keyspace
from server.core.loops import run_every, stop
from server.core.ratelimit import ActionThrottle, RateLimiter
from server.core.validation import invalid, positive_int, read_json_object, string_field

from .blocks import Blocks
from .comments import Comments, comment_json
from .feeds import Feeds
from .reactions import Reactions
from .rules import TagSearch, clean_comment, decode_cursor, parse_kind, parse_search, parse_sort
from .search import Search
from .subscriptions import Subscriptions

COMMENTS_KEY = web.AppKey("social_comments", Comments)
REACTIONS_KEY = web.AppKey("social_reactions", Reactions)
SUBSCRIPTIONS_KEY = web.AppKey("social_subscriptions", Subscriptions)
BLOCKS_KEY = web.AppKey("social_blocks", Blocks)
FEEDS_KEY = web.AppKey("social_feeds", Feeds)
SEARCH_KEY = web.AppKey("social_search", Search)
SOCIAL_THROTTLE_KEY = web.AppKey("social_throttle", ActionThrottle)

DEFAULT_LIMIT = 20
MAX_LIMIT = 100

routes = web.RouteTableDef()


def _limit(request: web.Request) -> int:
    limit = positive_int(request.query.get("limit"), "limit", default=DEFAULT_LIMIT,
                         maximum=MAX_LIMIT)
    assert limit is not None
    return limit


def _page(items: list[dict[str, Any]], next_cursor: str | None) -> web.Response:
    return web.json_response({"items": items, "next_cursor": next_cursor})


async def _throttle(request: web.Request, action: str, user_id: int, spec: RateSpec) -> None:
    await request.app[SOCIAL_THROTTLE_KEY].hit(request, action, user_id, spec)


def _path_id(request: web.Request) -> int | None:
    """The id in the path; None for any other spelling, which names nothing (404)."""
    return parse_id(request.match_info["id"])


def _optional_id(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not int or not 0 < value < 2**63:
        raise invalid(f"'{name}' must be a comment id")
    return value


# --- comments -----------------------------------------------------------------

@routes.post("/videos/{id}/comments", name="post_comment")
async def post_comment(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    comments = request.app[COMMENTS_KEY]
    body = await read_json_object(request)
    text = clean_comment(string_field(body, "body", max_len=comments.max_length * 4),
                         comments.max_length)
    parent_id = _optional_id(body, "parent_id")
    await _throttle(request, "comment", user_id, request.app[CONFIG_KEY].rate_limit_comment)
    row = await comments.create(_path_id(request), user_id, text, parent_id)
    item = comment_json(row, user_id)
    if parent_id is None:
        item["replies"] = []
    return web.json_response(item, status=201)


@routes.get("/videos/{id}/comments", name="video_comments")
async def video_comments(request: web.Request) -> web.Response:
    sort = parse_sort(request.query.get("sort"))
    limit = _limit(request)
    shape: tuple[type, ...] = (int, int) if sort == "top" else (int,)
    position = decode_cursor(request.query.get("cursor"), *shape)
    items, next_cursor = await request.app[COMMENTS_KEY].page(
        _path_id(request), optional_user(request), sort, position, limit)
    return _page(items, next_cursor)


@routes.get("/comments/{id}/replies", name="comment_replies")
async def comment_replies(request: web.Request) -> web.Response:
    limit = _limit(request)
    position = decode_cursor(request.query.get("cursor"), int)
    items, next_cursor = await request.app[COMMENTS_KEY].replies(
        _path_id(request), optional_user(request), position[0] if position else None, limit)
    return _page(items, next_cursor)


@routes.patch("/comments/{id}", name="edit_comment")
async def edit_comment(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    comments = request.app[COMMENTS_KEY]
    body = await read_json_object(request)
    text = clean_comment(string_field(body, "body", max_len=comments.max_length * 4),
                         comments.max_length)
    # Edits have a bucket of their own, with the allowance of new comments.
    await _throttle(request, "comment-edit", user_id,
                    request.app[CONFIG_KEY].rate_limit_comment)
    row = await comments.edit(_path_id(request), user_id, text)
    return web.json_response(comment_json(row, user_id))


@routes.delete("/comments/{id}", name="delete_comment")
async def delete_comment(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    await request.app[COMMENTS_KEY].delete(_path_id(request), user_id)
    return web.Response(status=204)


# --- reactions ----------------------------------------------------------------

@routes.put("/videos/{id}/reaction", name="put_reaction")
async def put_reaction(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    kind = parse_kind((await read_json_object(request)).get("kind"))
    await _throttle(request, "reaction", user_id, request.app[CONFIG_KEY].rate_limit_reaction)
    return web.json_response(
        await request.app[REACTIONS_KEY].set(_path_id(request), user_id, kind))


@routes.delete("/videos/{id}/reaction", name="delete_reaction")
async def delete_reaction(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    await _throttle(request, "reaction", user_id, request.app[CONFIG_KEY].rate_limit_reaction)
    return web.json_response(
        await request.app[REACTIONS_KEY].set(_path_id(request), user_id, None))


# --- subscriptions and blocks ---------------------------------------------------

async def _subscription(request: web.Request, subscribed: bool) -> web.Response:
    user_id = authenticated_user(request)
    await _throttle(request, "subscription", user_id,
                    request.app[CONFIG_KEY].rate_limit_reaction)
    return web.json_response(
        await request.app[SUBSCRIPTIONS_KEY].set(user_id, _path_id(request), subscribed))


@routes.put("/users/{id}/subscription", name="subscribe")
async def subscribe(request: web.Request) -> web.Response:
    return await _subscription(request, True)


@routes.delete("/users/{id}/subscription", name="unsubscribe")
async def unsubscribe(request: web.Request) -> web.Response:
    return await _subscription(request, False)


@routes.get("/users/me/subscriptions", name="my_subscriptions")
async def my_subscriptions(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    limit = _limit(request)
    position = decode_cursor(request.query.get("cursor"), datetime, int)
    return _page(*await request.app[SUBSCRIPTIONS_KEY].page(user_id, position, limit))


async def _block(request: web.Request, blocked: bool) -> web.Response:
    user_id = authenticated_user(request)
    done = await request.app[BLOCKS_KEY].set(user_id, _path_id(request), blocked)
    return web.json_response({"blocked": done})


@routes.put("/users/{id}/block", name="block")
async def block(request: web.Request) -> web.Response:
    return await _block(request, True)


@routes.delete("/users/{id}/block", name="unblock")
async def unblock(request: web.Request) -> web.Response:
    return await _block(request, False)


# --- feeds and search -----------------------------------------------------------

def _before_id(request: web.Request) -> int | None:
    position = decode_cursor(request.query.get("cursor"), int)
    return position[0] if position else None


@routes.get("/feed/global", name="feed_global")
async def feed_global(request: web.Request) -> web.Response:
    limit = _limit(request)
    return _page(*await request.app[FEEDS_KEY].newest(
        optional_user(request), _before_id(request), limit))


@routes.get("/feed/following", name="feed_following")
async def feed_following(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    limit = _limit(request)
    return _page(*await request.app[FEEDS_KEY].newest(
        user_id, _before_id(request), limit, following=True))


@routes.get("/feed/trending", name="feed_trending")
async def feed_trending(request: web.Request) -> web.Response:
    limit = _limit(request)
    position = decode_cursor(request.query.get("cursor"), int, int)
    return _page(*await request.app[FEEDS_KEY].trending(
        optional_user(request), position, limit))


@routes.get("/search", name="search")
async def search(request: web.Request) -> web.Response:
    query = parse_search(request.query.get("q"))
    limit = _limit(request)
    viewer = optional_user(request)
    service = request.app[SEARCH_KEY]
    if isinstance(query, TagSearch):
        return _page(*await service.tag(query, viewer, _before_id(request), limit))
    position = decode_cursor(request.query.get("cursor"), float, int)
    return _page(*await service.text(query, viewer, position, limit))


async def social_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    db = app[DB_KEY]
    totals = app[VIEW_TOTALS_KEY]
    app[COMMENTS_KEY] = Comments(db, config)
    app[REACTIONS_KEY] = Reactions(db)
    app[SUBSCRIPTIONS_KEY] = Subscriptions(db)
    app[BLOCKS_KEY] = Blocks(db)
    feeds = Feeds(db, totals, config.trending_refresh)
    app[FEEDS_KEY] = feeds
    app[SEARCH_KEY] = Search(db, totals, config.search_language)
    app[SOCIAL_THROTTLE_KEY] = ActionThrottle(
        RateLimiter(app[REDIS_KEY], Keyspace(config.redis_prefix)),
        hash_secret(config.jwt_secret), config.trusted_proxies)
    # Not at start-up: the first reader computes a ranking if none exists yet.
    refresh = run_every(config.trending_refresh, feeds.refresh, "trending-refresh",
                        first_after=config.trending_refresh)
    try:
        yield
    finally:
        await stop(refresh)


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(social_ctx)
    app.add_routes(routes)
