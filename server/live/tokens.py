"""LiveKit access tokens: what a join gets, and what the chat accepts.

Built and checked with the `livekit-api` package's own AccessToken and
TokenVerifier, so they are exactly what a LiveKit server expects and issues.
Identities are `user-<id>` for accounts and `guest-<random>` for guests; the chat
reads the account back from the identity of a verified token.
"""

from __future__ import annotations

import datetime
import re
import secrets
from dataclasses import dataclass

import jwt
from livekit import api

USER_IDENTITY_RE = re.compile(r"user-([1-9][0-9]{0,18})")


@dataclass(frozen=True, slots=True)
class Grant:
    """Who joins a room, and what they may do there."""

    identity: str
    name: str
    can_publish: bool


@dataclass(frozen=True, slots=True)
class Holder:
    """The bearer of a verified token: a participant of one LiveKit room."""

    identity: str
    name: str
    room: str
    can_publish: bool

    @property
    def user_id(self) -> int | None:
        match = USER_IDENTITY_RE.fullmatch(self.identity)
        return int(match[1]) if match else None


def user_grant(user_id: int, name: str) -> Grant:
    """A signed-in user: may publish camera, microphone and screen."""
    return Grant(f"user-{user_id}", name, can_publish=True)


def guest_grant(name: str) -> Grant:
    """A guest: watches, listens and chats; never publishes."""
    return Grant(f"guest-{secrets.token_hex(8)}", name, can_publish=False)


def issue(api_key: str, api_secret: str, livekit_room: str, grant: Grant, ttl: int) -> str:
    grants = api.VideoGrants(room_join=True, room=livekit_room, can_publish=grant.can_publish,
                             can_subscribe=True, can_publish_data=True)
    return (api.AccessToken(api_key, api_secret)
            .with_identity(grant.identity)
            .with_name(grant.name)
            .with_grants(grants)
            .with_ttl(datetime.timedelta(seconds=ttl))
            .to_jwt())


class TokenRefused(Exception):
    """Not a valid token of ours: bad signature, expired, another key, no room grant."""


def verify(api_key: str, api_secret: str, token: str) -> Holder:
    try:
        claims = api.TokenVerifier(api_key, api_secret).verify(token)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise TokenRefused(str(exc)) from None
    video = claims.video
    if video is None or not video.room_join or not video.room or not claims.identity:
        raise TokenRefused("the token grants no room")
    return Holder(claims.identity, claims.name or claims.identity, video.room,
                  bool(video.can_publish))
