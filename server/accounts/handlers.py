"""Register, login, refresh, logout, me; the accounts feature's services (standing,
profiles, throttle, password hashing) are set up here."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg2
from aiohttp import web

from server.core.clients import hash_secret
from server.core.db import fetch_one
from server.core.errors import ApiError
from server.core.keys import CHANGES_KEY, CONFIG_KEY, DB_KEY, REDIS_KEY
from server.core.keyspace import Keyspace
from server.core.ratelimit import ActionThrottle, RateLimiter
from server.core.validation import (
    check_password,
    invalid,
    normalise_email,
    read_json_object,
    string_field,
)
from server.storage.keys import NODE_CACHE_KEY, STORE_KEY

from . import profiles
from .auth import authenticated_user
from .passwords import PasswordHasher, Saturated
from .profiles import PROFILES_KEY, Profiles, user_json
from .standing import STANDING_KEY, Banned, Standing
from .throttle import AuthThrottle
from .tokens import (
    hash_refresh_token,
    issue_access_token,
    new_refresh_token,
)

routes = web.RouteTableDef()
HASHER_KEY = web.AppKey("password_hasher", PasswordHasher)
THROTTLE_KEY = web.AppKey("auth_throttle", AuthThrottle)


async def _issue_pair(request: web.Request, cur: Any, user_id: int,
                      family_id: uuid.UUID) -> dict[str, Any]:
    config = request.app[CONFIG_KEY]
    refresh = new_refresh_token()
    await cur.execute(request.app[DB_KEY].queries["insert_refresh_token"], {
        "user_id": user_id,
        "family_id": str(family_id),
        "token_hash": psycopg2.Binary(hash_refresh_token(refresh)),
        "ttl": config.refresh_token_ttl,
    })
    return {
        "access_token": issue_access_token(
            user_id, config.jwt_secret, config.jwt_algorithm, config.access_token_ttl
        ),
        "refresh_token": refresh,
        "token_type": "bearer",
        "expires_in": config.access_token_ttl,
    }


@routes.post("/auth/register", name="register")
async def register(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    email = normalise_email(string_field(body, "email", max_len=254))
    password = check_password(string_field(body, "password", max_len=1024))
    name = string_field(body, "name", required=False, max_len=50).strip()
    if not name:
        name = email.split("@", 1)[0][:50]
    hit = await request.app[THROTTLE_KEY].register(request)
    try:
        hashed = await request.app[HASHER_KEY].hash(password)
    except Saturated:
        await request.app[THROTTLE_KEY].forget(hit)
        raise
    row = await request.app[DB_KEY].one("insert_user", {
        "email": email, "name": name, "password_hash": hashed.decode("ascii"),
    })
    if row is None:
        raise ApiError(409, "email_taken", "An account with this email already exists")
    return web.json_response(user_json(row), status=201)


@routes.post("/auth/login", name="login")
async def login(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    email = string_field(body, "email", max_len=254).strip()
    password = string_field(body, "password", max_len=1024).encode("utf-8", "replace")
    throttle = request.app[THROTTLE_KEY]
    attempt = await throttle.login(request, email)
    db = request.app[DB_KEY]
    # The connection goes back to the pool before bcrypt runs: a login flood must
    # not hold the connections every other request needs.
    row = await db.one("user_by_email", {"email": email})
    hashed = row["password_hash"].encode("ascii") if row else None
    try:
        ok = await request.app[HASHER_KEY].check(password, hashed)
    except Saturated:
        await throttle.forget(attempt.hit)
        raise
    if row is None or not ok:
        raise ApiError(401, "invalid_credentials", "Email or password is incorrect")
    await throttle.login_succeeded(attempt)
    # Told only to whoever knows the password.
    if row["banned"]:
        raise Banned(row["banned_until"])
    async with db.transaction() as cur:
        pair = await _issue_pair(request, cur, row["id"], uuid.uuid4())
    return web.json_response(pair)


@routes.post("/auth/refresh", name="refresh")
async def refresh(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    token = string_field(body, "refresh_token", max_len=512)
    if not token:
        raise invalid("'refresh_token' is required")
    db = request.app[DB_KEY]
    row = await db.one("refresh_token_by_hash",
                       {"token_hash": psycopg2.Binary(hash_refresh_token(token))})
    if row is None or row["revoked_at"] is not None or row["expired"]:
        raise ApiError(401, "invalid_refresh_token", "The refresh token is invalid")
    if row["banned"]:
        # Not rotated: the session may go on once the ban has ended.
        raise Banned(row["banned_until"])
    async with db.transaction() as cur:
        rotated = await fetch_one(cur, db.queries["rotate_refresh_token"], {"id": row["id"]})
        if rotated is not None:
            pair = await _issue_pair(request, cur, row["user_id"], row["family_id"])
    if rotated is None:
        # A token that was already rotated is being replayed: whoever holds
        # it may have stolen it, so the whole family stops working.
        await db.execute("revoke_family", {"family_id": str(row["family_id"])})
        raise ApiError(401, "refresh_token_reused",
                       "This refresh token was already used; its session is revoked")
    return web.json_response(pair)


@routes.post("/auth/logout", name="logout")
async def logout(request: web.Request) -> web.Response:
    user_id = authenticated_user(request)
    await request.app[DB_KEY].execute("revoke_user_tokens", {"user_id": user_id})
    return web.Response(status=204)


# The same as GET /users/me.
routes.get("/auth/me", name="me")(profiles.me)


async def accounts_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    hasher = PasswordHasher(config.bcrypt_rounds, config.bcrypt_concurrency,
                            config.bcrypt_max_waiting)
    standing = Standing(app[DB_KEY], app[CHANGES_KEY])
    try:
        await hasher.start()
        app[HASHER_KEY] = hasher
        limiter = RateLimiter(app[REDIS_KEY], Keyspace(config.redis_prefix))
        app[THROTTLE_KEY] = AuthThrottle(limiter, config)
        app[PROFILES_KEY] = Profiles(
            app[DB_KEY], app[STORE_KEY], app[NODE_CACHE_KEY],
            ActionThrottle(limiter, hash_secret(config.jwt_secret), config.trusted_proxies),
            config.rate_limit_upload)
        await standing.start()
        app[STANDING_KEY] = standing
        yield
    finally:
        await standing.stop()
        hasher.close()


def setup(app: web.Application) -> None:
    """Needs the database, the change feed and the Redis client: set up after their
    cleanup contexts are registered."""
    app.cleanup_ctx.append(accounts_ctx)
    app.add_routes(routes)
    # /users/me before /users/{id}, which would otherwise take "me" for an id.
    app.add_routes(profiles.routes)
