"""Helpers for the report and moderation tests: members with roles, videos, comments."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient

from server.core.keys import CONFIG_KEY

from .conftest import fake_mp4, login, query, register, upload_ready


@dataclass(frozen=True)
class Member:
    id: int
    email: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def db_url(client: TestClient) -> str:
    return client.server.app[CONFIG_KEY].database_url


async def member(client: TestClient, role: str = "user") -> Member:
    """A registered, signed-in account with `role` (set in the database)."""
    user = await register(client, f"{role}-{secrets.token_hex(4)}@example.com")
    token = (await login(client, user["email"]))["access_token"]
    if role != "user":
        query(db_url(client), "UPDATE users SET role = %s WHERE id = %s", (role, user["id"]))
    return Member(user["id"], user["email"], token)


async def video_of(client: TestClient, owner: Member, title: str = "A video",
                   seed: int = 1) -> dict[str, Any]:
    """A ready video of `owner`."""
    return await upload_ready(client, owner.token, fake_mp4(4096, seed), title=title)


def comment_on(client: TestClient, video_id: int, author: Member,
               body: str = "A comment") -> int:
    """A comment written straight into the database (the comments API is not under test)."""
    [(comment_id,)] = query(db_url(client), "INSERT INTO comments (video_id, author_id, body)"
                            " VALUES (%s, %s, %s) RETURNING id", (video_id, author.id, body))
    return int(comment_id)


async def report(client: TestClient, reporter: Member, target_type: str, target_id: Any,
                 reason: str = "spam", **extra: Any) -> Any:
    return await client.post("/reports", headers=reporter.auth, json={
        "target_type": target_type, "target_id": target_id, "reason": reason, **extra})


def report_statuses(client: TestClient, target_type: str, target_id: int) -> list[str]:
    rows = query(db_url(client), "SELECT status FROM reports WHERE target_type = %s"
                 " AND target_id = %s ORDER BY id", (target_type, target_id))
    return [status for (status,) in rows]
