"""Who makes a request: the user behind a Bearer access token.

A banned user's tokens stop working the moment this process knows of the ban
(standing.py), not when they expire.
"""

from __future__ import annotations

from aiohttp import web

from server.core.errors import ApiError
from server.core.keys import CONFIG_KEY

from .standing import STANDING_KEY
from .tokens import TokenError, bearer_token, read_access_token

UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="tubelet"'}


def authenticated_user(request: web.Request) -> int:
    """The user id of a valid Bearer access token, or a 401 ApiError (403 if banned)."""
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise ApiError(401, "unauthorized", "A Bearer access token is required", UNAUTHORIZED)
    config = request.app[CONFIG_KEY]
    try:
        user_id = read_access_token(token, config.jwt_secret, config.jwt_algorithm)
    except TokenError:
        raise ApiError(401, "invalid_token", "The access token is invalid or expired",
                       UNAUTHORIZED) from None
    request.app[STANDING_KEY].check(user_id)
    return user_id


def user_from_token(app: web.Application, token: str | None) -> int | None:
    """The user id of a valid access token of a user not banned, else None."""
    if not token:
        return None
    config = app[CONFIG_KEY]
    try:
        user_id = read_access_token(token, config.jwt_secret, config.jwt_algorithm)
    except TokenError:
        return None
    return None if app[STANDING_KEY].is_banned(user_id) else user_id


def optional_user(request: web.Request) -> int | None:
    """The user id when a valid token comes with the request, else None."""
    return user_from_token(request.app, bearer_token(request.headers.get("Authorization")))


