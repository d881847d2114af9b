"""Bans and roles (server/accounts/standing.py) across processes sharing one database:
tokens, login and refresh refused at once, ban expiry, viewer sockets closed,
the banned set kept through an outage; user changes on the change feed; the
daily limit of failed sign-ins."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import aiopg
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from server.accounts.auth import user_from_token
from server.accounts.policy import Role
from server.accounts.standing import STANDING_KEY, UserNotFound, ban_message
from server.core.changes import ChangeFeed
from server.core.db import Queries, migrate
from server.core.errors import Invalid
from server.core.keys import DB_KEY

from .conftest import fake_mp4, query, register, until, upload_ready
from .outages import pg_proxy  # noqa: F401

PASSWORD = "correct horse battery"


# --- helpers -----------------------------------------------------------------

async def sign_up(client: TestClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new account and its token pair."""
    user = await register(client)
    resp = await client.post("/auth/login", json={"email": user["email"], "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    return user, await resp.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def ban(client: TestClient, user_id: int, until: datetime | None = None,
              reason: str = "spam") -> None:
    app = client.server.app
    async with app[DB_KEY].transaction() as cur:
        announcement = await app[STANDING_KEY].set_ban(cur, user_id, until, reason)
    announcement.announce()


async def unban(client: TestClient, user_id: int) -> None:
    app = client.server.app
    async with app[DB_KEY].transaction() as cur:
        announcement = await app[STANDING_KEY].lift_ban(cur, user_id)
    announcement.announce()


async def me_status(client: TestClient, token: str) -> int:
    resp = await client.get("/users/me", headers=bearer(token))
    await resp.read()
    return resp.status


async def refused_as_banned(client: TestClient, token: str) -> bool:
    resp = await client.get("/users/me", headers=bearer(token))
    if resp.status != 403:
        await resp.read()
        return False
    return (await resp.json())["error"]["code"] == "banned"


# --- tokens, login, refresh ---------------------------------------------------

async def test_a_banned_users_token_is_refused_at_once_in_every_process(instance, api_error):
    a, b = await instance(), await instance()
    user, pair = await sign_up(a)
    token = pair["access_token"]
    assert await me_status(a, token) == 200 and await me_status(b, token) == 200

    await ban(a, user["id"])
    # The process that banned refuses at once; the other as soon as the feed tells it.
    body = await api_error(await a.get("/users/me", headers=bearer(token)), 403, "banned")
    assert body["error"]["message"] == "This account is banned"
    await until(lambda: refused_as_banned(b, token), 2.0, "B refusing the banned token")
    # Optional sign-in (listings, viewer sockets) treats the token as no token at all.
    assert user_from_token(a.server.app, token) is None
    assert user_from_token(b.server.app, token) is None
    resp = await b.get("/videos", headers=bearer(token))
    assert resp.status == 200
    # Other users are untouched.
    _, other = await sign_up(b)
    assert await me_status(a, other["access_token"]) == 200


async def test_banned_login_and_refresh_are_refused_saying_until_when(instance, api_error):
    a, b = await instance(), await instance()
    user, pair = await sign_up(a)
    ends = datetime.now(UTC) + timedelta(hours=3)
    await ban(a, user["id"], ends, "harassment")
    stamp = ends.isoformat(timespec="seconds").replace("+00:00", "Z")

    for client in (a, b):
        resp = await client.post("/auth/login",
                                 json={"email": user["email"], "password": PASSWORD})
        body = await api_error(resp, 403, "banned")
        assert body["error"]["message"] == f"This account is banned until {stamp}"
        # Whoever lacks the password learns nothing about the ban.
        resp = await client.post("/auth/login",
                                 json={"email": user["email"], "password": "wrong password!"})
        await api_error(resp, 401, "invalid_credentials")
    resp = await b.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    body = await api_error(resp, 403, "banned")
    assert stamp in body["error"]["message"]

    await unban(b, user["id"])
    # The refresh token was not used up by the refused attempt.
    resp = await a.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert resp.status == 200, await resp.text()
    fresh = (await resp.json())["access_token"]
    assert await me_status(b, fresh) == 200  # B lifted the ban itself
    await until(lambda: _ok(a, fresh), 2.0, "A accepting the unbanned user's tokens")


async def _ok(client: TestClient, token: str) -> bool:
    return await me_status(client, token) == 200


async def test_a_ban_ends_on_its_own_in_every_process(instance):
    a, b = await instance(), await instance()
    user, pair = await sign_up(a)
    token = pair["access_token"]
    await ban(a, user["id"], datetime.now(UTC) + timedelta(seconds=2.5))
    assert await refused_as_banned(a, token)
    await until(lambda: refused_as_banned(b, token), 2.0, "B refusing the banned token")
    # Neither process reloads within the minute: each ends the ban on its own clock.
    for client in (a, b):
        await until(lambda c=client: _ok(c, token), 5.0, "the ban's end")
    resp = await b.post("/auth/login", json={"email": user["email"], "password": PASSWORD})
    assert resp.status == 200, await resp.text()


async def test_ban_rules_and_roles(client):
    app = client.server.app
    standing = app[STANDING_KEY]
    user, _ = await sign_up(client)
    assert await standing.role(user["id"]) is Role.USER
    with pytest.raises(UserNotFound):
        await standing.role(987654)
    async with app[DB_KEY].transaction() as cur:
        with pytest.raises(UserNotFound):
            await standing.set_ban(cur, 987654, None, "x")
    async with app[DB_KEY].transaction() as cur:
        with pytest.raises(Invalid):
            await standing.set_ban(cur, user["id"], datetime.now(UTC) - timedelta(seconds=1),
                                   "x")
    async with app[DB_KEY].transaction() as cur:
        announcement = await standing.set_role(cur, user["id"], Role.MODERATOR)
    announcement.announce()
    assert await standing.role(user["id"]) is Role.MODERATOR
    token = (await client.post("/auth/login", json={"email": user["email"],
                                                     "password": PASSWORD}))
    me = await (await client.get("/users/me", headers=bearer(
        (await token.json())["access_token"]))).json()
    assert me["role"] == "moderator"
    assert not standing.is_banned(user["id"])


def test_ban_message():
    assert ban_message(float("inf")) == "This account is banned"
    assert ban_message(0.0) == "This account is banned until 1970-01-01T00:00:00Z"


async def test_a_ban_announces_the_user_and_each_of_their_videos(client, database_url):
    user, pair = await sign_up(client)
    first = await upload_ready(client, pair["access_token"], fake_mp4(2048))
    second = await upload_ready(client, pair["access_token"], fake_mp4(2048, seed=2))
    [(last,)] = query(database_url, "SELECT coalesce(max(seq), 0) FROM video_changes")
    await ban(client, user["id"])
    rows = query(database_url, "SELECT video_id, user_id FROM video_changes "
                 "WHERE seq > %s ORDER BY seq", (last,))
    assert rows == [(first["id"], None), (second["id"], None), (None, user["id"])]


async def test_the_banned_set_outlives_a_database_outage(instance, pg_proxy, api_error):
    a = await instance()
    b = await instance(database_url=pg_proxy.url, db_timeout=1.0)
    user, pair = await sign_up(a)
    token = pair["access_token"]
    await ban(a, user["id"])
    await until(lambda: refused_as_banned(b, token), 2.0, "B refusing the banned token")

    pg_proxy.cut()
    standing = b.server.app[STANDING_KEY]
    with pytest.raises(Exception):  # noqa: B017 - whichever error the dead link raises
        await standing.reload()
    assert standing.is_banned(user["id"])
    # Checking a token needs no database: refused, not 503.
    await api_error(await b.get("/users/me", headers=bearer(token)), 403, "banned")
    pg_proxy.restore()


# --- viewer sockets -------------------------------------------------------------

async def closed_frame(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    """The message that ends the socket, skipping state messages."""
    async with asyncio.timeout(5):
        while True:
            msg = await ws.receive()
            if msg.type not in (WSMsgType.TEXT, WSMsgType.PING):
                return msg


async def viewers(ws: aiohttp.ClientWebSocketResponse, count: int) -> None:
    """Wait for a state message with `count` active viewers."""
    async with asyncio.timeout(5):
        while True:
            msg = await ws.receive()
            assert msg.type is WSMsgType.TEXT, msg
            if json.loads(msg.data).get("active_viewers") == count:
                return


async def first_state(ws: aiohttp.ClientWebSocketResponse) -> None:
    async with asyncio.timeout(5):
        msg = await ws.receive()
    assert msg.type is WSMsgType.TEXT, msg


async def test_a_banned_users_viewer_sockets_close_in_every_process(instance, http):
    a, b = await instance(), await instance()
    _, uploader = await sign_up(a)
    video = await upload_ready(a, uploader["access_token"], fake_mp4(2048))
    path = f"/videos/{video['id']}/active-viewers"
    user, pair = await sign_up(a)
    agent = {"User-Agent": "Mozilla/5.0 Firefox/130.0"}

    on_a = await http.ws_connect(a.make_url(path), headers={**agent, **bearer(
        pair["access_token"])})
    await first_state(on_a)
    # Signed in by message rather than by header.
    on_b = await http.ws_connect(b.make_url(path), headers=agent)
    await first_state(on_b)
    bystander = await http.ws_connect(b.make_url(path),
                                      headers={"User-Agent": "Mozilla/5.0 Firefox/131.0"})
    await viewers(bystander, 3)
    await on_b.send_json({"type": "auth", "token": pair["access_token"]})
    # Signed in, on_b is the same viewer as on_a.
    await viewers(bystander, 2)

    await ban(a, user["id"])
    for ws in (on_a, on_b):
        msg = await closed_frame(ws)
        assert msg.type is WSMsgType.CLOSE and msg.data == 4403, msg
    assert not bystander.closed
    await bystander.send_json({"type": "auth", "token": pair["access_token"]})
    async with asyncio.timeout(5):
        while True:
            msg = await bystander.receive()
            assert msg.type is WSMsgType.TEXT
            if "invalid_token" in msg.data:
                break
    await bystander.close()


# --- the change feed carries users ---------------------------------------------------

async def test_user_changes_reach_user_subscribers_only(database_url):
    await migrate(database_url)
    queries = Queries.load()
    writer = ChangeFeed(database_url, queries)
    reader = ChangeFeed(database_url, queries, poll=0.05)
    await writer.start()
    await reader.start()
    try:
        videos: list[int | None] = []
        users: list[int | None] = []
        reader.subscribe(videos.append)
        reader.subscribe_users(users.append)
        own_users: list[int | None] = []
        writer.subscribe_users(own_users.append)
        async with aiopg.connect(database_url) as conn, conn.cursor() as cur:
            async with cur.begin():
                seq = await writer.record_user(cur, 800001, "banned")
            writer.applied_user(800001, seq)
            async with cur.begin():
                await writer.record_videos(cur, [800002, 800003], "banned")
        assert own_users[:1] == [800001]  # applied at once by its writer

        async def arrived() -> bool:
            return users == [800001] and videos == [800002, 800003]

        await until(arrived, 2.0, "the user and video changes")
        assert set(own_users) == {800001}
    finally:
        await writer.stop()
        await reader.stop()
        query(database_url, "DELETE FROM video_changes WHERE video_id >= 800000 "
              "OR user_id >= 800000")


# --- failed sign-ins per day ------------------------------------------------------

async def test_failed_sign_ins_per_account_per_day_are_capped(make_config, aiohttp_client,
                                                              api_error):
    from server.app import create_app

    client = await aiohttp_client(create_app(make_config(login_daily_limit=3,
                                                         auth_rate_limit=100)))
    user = await register(client)
    other = await register(client)
    # Successful sign-ins never count.
    for _ in range(4):
        resp = await client.post("/auth/login",
                                 json={"email": user["email"], "password": PASSWORD})
        assert resp.status == 200
    for _ in range(3):
        resp = await client.post("/auth/login",
                                 json={"email": user["email"], "password": "wrong password!"})
        await api_error(resp, 401, "invalid_credentials")
    # Now even the right password waits: the window is a day, not a minute.
    resp = await client.post("/auth/login", json={"email": user["email"], "password": PASSWORD})
    await api_error(resp, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) > 23 * 3600
    resp = await client.post("/auth/login",
                             json={"email": user["email"].upper(), "password": PASSWORD})
    await api_error(resp, 429, "rate_limited")
    # Another account from the same address is not held back.
    resp = await client.post("/auth/login", json={"email": other["email"], "password": PASSWORD})
    assert resp.status == 200
