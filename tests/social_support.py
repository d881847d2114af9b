"""Helpers for the social tests: members, ready videos, apps with roomy rate limits."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient

from server.app import create_app
from server.core.config import RateSpec

from .conftest import fake_mp4, login, query, register, upload_ready

ROOMY = RateSpec(10_000, 60)


@dataclass(frozen=True)
class Member:
    id: int
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def roomy_client(aiohttp_client: Any, make_config: Any, **overrides: Any) -> TestClient:
    """An app whose social rate limits never get in a test's way (unless overridden)."""
    values = {"rate_limit_comment": ROOMY, "rate_limit_reaction": ROOMY, **overrides}
    return await aiohttp_client(create_app(make_config(**values)))


async def member(client: TestClient, name: str | None = None) -> Member:
    email = f"user-{secrets.token_hex(4)}@example.com"
    resp = await client.post("/auth/register", json={
        "email": email, "password": "correct horse battery",
        "name": name or email.split("@")[0]})
    assert resp.status == 201, await resp.text()
    user = await resp.json()
    tokens = await login(client, email)
    return Member(user["id"], tokens["access_token"])


async def ready_video(client: TestClient, owner: Member, title: str = "A video",
                      description: str = "", *, visibility: str = "public",
                      tags: tuple[str, ...] = (), database_url: str | None = None,
                      ) -> dict[str, Any]:
    """A ready video; visibility and tags other than the defaults need `database_url`."""
    video = await upload_ready(client, owner.token, fake_mp4(4096, seed=secrets.randbelow(200)),
                               title=title, description=description)
    if visibility != "public" or tags:
        assert database_url is not None
        query(database_url, "UPDATE videos SET visibility = %s, tags = %s WHERE id = %s",
              (visibility, list(tags), video["id"]))
    return video


def ban(database_url: str, user_id: int, *, banned: bool = True) -> None:
    """Ban in the database only (no change announced), as the SQL filters see it."""
    query(database_url, "UPDATE users SET banned_until = CASE WHEN %s THEN 'infinity'::timestamptz"
          " END WHERE id = %s", (banned, user_id))


__all__ = ["Member", "ROOMY", "ban", "member", "ready_video", "register", "roomy_client"]
