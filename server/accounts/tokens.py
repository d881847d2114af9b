"""Access tokens (JWT, algorithm pinned) and opaque refresh tokens. Pure functions."""

from __future__ import annotations

import hashlib
import secrets
import time

import jwt

from server.core.ids import parse_id


class TokenError(Exception):
    """The token is missing, malformed, expired, tampered with or of the wrong kind."""


def issue_access_token(user_id: int, secret: str, algorithm: str, ttl: int,
                       now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    claims = {"sub": str(user_id), "iat": issued, "exp": issued + ttl, "typ": "access"}
    return jwt.encode(claims, secret, algorithm=algorithm)


def read_access_token(token: str, secret: str, algorithm: str) -> int:
    """The user id carried by a valid access token; TokenError otherwise.

    Only `algorithm` is accepted, so `alg: none` and algorithm-confusion tokens fail.
    """
    if not token.isascii():
        raise TokenError("not a JWT")  # base64url and dots only; PyJWT would fail to encode it
    try:
        claims = jwt.decode(
            token, secret, algorithms=[algorithm],
            options={"require": ["exp", "iat", "sub"]},
        )
    except jwt.PyJWTError as exc:
        raise TokenError(str(exc)) from None
    if claims.get("typ") != "access":
        raise TokenError("not an access token")
    # One spelling only: str.isdigit() also takes "²" (int() fails) and "١" (int() reads 1).
    user_id = parse_id(claims["sub"]) if isinstance(claims["sub"], str) else None
    if user_id is None:
        raise TokenError("malformed subject")
    return user_id


def bearer_token(header: str | None) -> str | None:
    """The credentials of an `Authorization: Bearer x` header, else None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()
