"""Reports, moderators' actions, the audit log and administrators' role changes.

- POST /reports: anyone signed in; rate limited (RATE_LIMIT_REPORT).
- /moderation/*: moderators and admins (403 for others); every action takes a
  JSON body with a `reason`.
- PUT /admin/users/{id}/role: admins.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

from aiohttp import web

from server.accounts.auth import authenticated_user
from server.accounts.policy import Action
from server.accounts.standing import STANDING_KEY
from server.core.clients import hash_secret
from server.core.keys import CHANGES_KEY, CONFIG_KEY, DB_KEY, REDIS_KEY
from server.core.keyspace import Keyspace
from server.core.ratelimit import ActionThrottle, RateLimiter
from server.core.validation import positive_int, read_json_object

from .actions import Moderation, target_id
from .log import AuditLog, entry_json
from .reports import Reports, queue_item_json, report_json
from .rules import (
    action_reason,
    ban_until,
    parse_queue_cursor,
    queue_cursor,
    queue_status,
    report_input,
    role_input,
)

routes = web.RouteTableDef()

REPORTS_KEY = web.AppKey("reports", Reports)
MODERATION_KEY = web.AppKey("moderation", Moderation)
AUDIT_LOG_KEY = web.AppKey("audit_log", AuditLog)
REPORT_THROTTLE_KEY = web.AppKey("report_throttle", ActionThrottle)

PAGE_DEFAULT = 20
PAGE_MAX = 100


def _limit(request: web.Request) -> int:
    limit = positive_int(request.query.get("limit"), "limit", default=PAGE_DEFAULT,
                         maximum=PAGE_MAX)
    assert limit is not None
    return limit


# --- reports -------------------------------------------------------------------

@routes.post("/reports", name="create_report")
async def create_report(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    report = report_input(await read_json_object(request))
    await request.app[REPORT_THROTTLE_KEY].hit(request, "report", user_id,
                                               request.app[CONFIG_KEY].rate_limit_report)
    row = await request.app[REPORTS_KEY].create(user_id, report)
    return web.json_response(report_json(row), status=201)


@routes.get("/moderation/reports", name="moderation_reports")
async def list_reports(request: web.Request) -> web.Response:
    await request.app[MODERATION_KEY].actor(authenticated_user(request), Action.MODERATION_READ)
    include_resolved = queue_status(request.query.get("status"))
    after = parse_queue_cursor(request.query.get("cursor"))
    limit = _limit(request)
    rows = await request.app[REPORTS_KEY].page(include_resolved=include_resolved, after=after,
                                               limit=limit)
    next_cursor = queue_cursor(rows[-1]["rank"], rows[-1]["id"]) if len(rows) == limit \
        else None
    return web.json_response({"items": [queue_item_json(r) for r in rows],
                              "next_cursor": next_cursor})


@routes.post("/moderation/reports/{id}/dismiss", name="moderation_dismiss_report")
async def dismiss_report(request: web.Request) -> web.Response:
    moderation = request.app[MODERATION_KEY]
    actor = await moderation.actor(authenticated_user(request), Action.REPORT_DISMISS)
    reason = action_reason(await read_json_object(request))
    report_id = target_id(request.match_info["id"], "report")
    return web.json_response(await moderation.dismiss(actor, report_id, reason))


# --- videos and comments -------------------------------------------------------

async def _content_action(request: web.Request, action: Action) -> web.Response:
    moderation = request.app[MODERATION_KEY]
    actor = await moderation.actor(authenticated_user(request), action)
    reason = action_reason(await read_json_object(request))
    if action in (Action.VIDEO_REMOVE, Action.VIDEO_RESTORE):
        video_id = target_id(request.match_info["id"], "video")
        result = await (moderation.remove_video if action is Action.VIDEO_REMOVE
                        else moderation.restore_video)(actor, video_id, reason)
    else:
        comment_id = target_id(request.match_info["id"], "comment")
        result = await (moderation.remove_comment if action is Action.COMMENT_REMOVE
                        else moderation.restore_comment)(actor, comment_id, reason)
    return web.json_response(result)


@routes.post("/moderation/videos/{id}/remove", name="moderation_remove_video")
async def remove_video(request: web.Request) -> web.Response:
    return await _content_action(request, Action.VIDEO_REMOVE)


@routes.post("/moderation/videos/{id}/restore", name="moderation_restore_video")
async def restore_video(request: web.Request) -> web.Response:
    return await _content_action(request, Action.VIDEO_RESTORE)


@routes.post("/moderation/comments/{id}/remove", name="moderation_remove_comment")
async def remove_comment(request: web.Request) -> web.Response:
    return await _content_action(request, Action.COMMENT_REMOVE)


@routes.post("/moderation/comments/{id}/restore", name="moderation_restore_comment")
async def restore_comment(request: web.Request) -> web.Response:
    return await _content_action(request, Action.COMMENT_RESTORE)


# --- users -----------------------------------------------------------------------

@routes.post("/moderation/users/{id}/ban", name="moderation_ban")
async def ban(request: web.Request) -> web.Response:
    moderation = request.app[MODERATION_KEY]
    actor = await moderation.actor(authenticated_user(request), Action.USER_BAN)
    body = await read_json_object(request)
    reason = action_reason(body)
    until = ban_until(body, datetime.now(UTC))
    user_id = target_id(request.match_info["id"], "user")
    return web.json_response(await moderation.ban(actor, user_id, reason, until))


@routes.post("/moderation/users/{id}/unban", name="moderation_unban")
async def unban(request: web.Request) -> web.Response:
    moderation = request.app[MODERATION_KEY]
    actor = await moderation.actor(authenticated_user(request), Action.USER_UNBAN)
    reason = action_reason(await read_json_object(request))
    user_id = target_id(request.match_info["id"], "user")
    return web.json_response(await moderation.unban(actor, user_id, reason))


@routes.put("/admin/users/{id}/role", name="admin_set_role")
async def set_role(request: web.Request) -> web.Response:
    moderation = request.app[MODERATION_KEY]
    actor = await moderation.actor(authenticated_user(request), Action.ROLE_SET)
    body = await read_json_object(request)
    role = role_input(body)
    reason = action_reason(body, required=False)
    user_id = target_id(request.match_info["id"], "user")
    return web.json_response(await moderation.set_role(actor, user_id, role, reason))


# --- the audit log ---------------------------------------------------------------

@routes.get("/moderation/log", name="moderation_log")
async def audit_log(request: web.Request) -> web.Response:
    await request.app[MODERATION_KEY].actor(authenticated_user(request), Action.MODERATION_READ)
    before = positive_int(request.query.get("cursor"), "cursor")
    limit = _limit(request)
    rows = await request.app[AUDIT_LOG_KEY].page(before, limit)
    next_cursor = str(rows[-1]["id"]) if len(rows) == limit else None
    return web.json_response({"items": [entry_json(r) for r in rows],
                              "next_cursor": next_cursor})


async def moderation_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    db = app[DB_KEY]
    limiter = RateLimiter(app[REDIS_KEY], Keyspace(config.redis_prefix))
    app[REPORT_THROTTLE_KEY] = ActionThrottle(limiter, hash_secret(config.jwt_secret),
                                              config.trusted_proxies)
    app[REPORTS_KEY] = Reports(db)
    app[AUDIT_LOG_KEY] = AuditLog(db)
    app[MODERATION_KEY] = Moderation(db, app[CHANGES_KEY], app[STANDING_KEY])
    yield


def setup(app: web.Application) -> None:
    """Needs the database, the change feed, Redis and accounts' standing: set up after them."""
    app.cleanup_ctx.append(moderation_ctx)
    app.add_routes(routes)
