"""A live room's chat: real WebSockets on two app instances sharing PostgreSQL and Redis,
and the history over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType, WSServerHandshakeError
from aiohttp.test_utils import TestClient

from server.core.config import RateSpec
from server.core.keys import CONFIG_KEY
from server.live import tokens
from server.live.chat import CHAT_KEY

from .conftest import login, query, register
from .outages import own_redis, pg_proxy  # noqa: F401

# --- helpers ---------------------------------------------------------------

async def signed_in(client: TestClient) -> dict[str, Any]:
    """A new account: its user JSON plus `access_token`."""
    user = await register(client)
    user["access_token"] = (await login(client, user["email"]))["access_token"]
    return user


async def create_room(client: TestClient, owner: dict[str, Any],
                      name: str = "Standup") -> dict[str, Any]:
    resp = await client.post("/rooms", json={"name": name},
                             headers={"Authorization": f"Bearer {owner['access_token']}"})
    assert resp.status == 201, await resp.text()
    room: dict[str, Any] = await resp.json()
    return room


async def joined(client: TestClient, room: dict[str, Any],
                 user: dict[str, Any] | None = None, guest_name: str | None = None) -> str:
    """A token from POST /rooms/{id}/join: the user's, or a guest's when `user` is None."""
    headers = {} if user is None else {"Authorization": f"Bearer {user['access_token']}"}
    body = {} if guest_name is None else {"name": guest_name}
    resp = await client.post(f"/rooms/{room['id']}/join", json=body, headers=headers)
    assert resp.status == 200, await resp.text()
    token: str = (await resp.json())["token"]
    return token


def join_token(client: TestClient, room: dict[str, Any], grant: tokens.Grant,
               secret: str | None = None) -> str:
    config = client.server.app[CONFIG_KEY]
    return tokens.issue(config.livekit_api_key, secret or config.livekit_secret,
                        room["livekit_room"], grant, config.livekit_token_ttl)


async def frame(ws: ClientWebSocketResponse, within: float = 5.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=within)
    assert msg.type is WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    data: dict[str, Any] = json.loads(msg.data)
    return data


async def closed(ws: ClientWebSocketResponse) -> tuple[int, str]:
    """(close code, reason) once the server closes; text frames before it are skipped."""
    while True:
        msg = await ws.receive(timeout=5.0)
        if msg.type is WSMsgType.TEXT:
            continue
        assert msg.type is WSMsgType.CLOSE, (msg.type, msg.data)
        return msg.data, msg.extra


async def chat(client: TestClient, room: dict[str, Any], token: str) -> ClientWebSocketResponse:
    """A socket of the room, authenticated."""
    ws = await client.ws_connect(f"/rooms/{room['id']}/chat")
    await ws.send_json({"type": "auth", "token": token})
    ready = await frame(ws)
    assert ready["type"] == "ready" and ready["room_id"] == room["id"], ready
    return ws


async def say(ws: ClientWebSocketResponse, body: Any) -> dict[str, Any]:
    """Post and return the next frame: the echo, or an error."""
    await ws.send_json({"type": "message", "body": body})
    return await frame(ws)


async def history(client: TestClient, room_id: int, **params: Any) -> dict[str, Any]:
    resp = await client.get(f"/rooms/{room_id}/messages", params=params)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    body: dict[str, Any] = await resp.json()
    return body


def as_stored(echo: dict[str, Any]) -> dict[str, Any]:
    """A message frame as history lists it: the same fields but `type`."""
    assert echo["type"] == "message"
    return {key: value for key, value in echo.items() if key != "type"}


def stored(database_url: str, room_id: int) -> list[tuple[Any, ...]]:
    return query(database_url, "SELECT identity, user_id, body FROM room_messages"
                 " WHERE room_id = %s ORDER BY id", (room_id,))


# --- across instances --------------------------------------------------------

async def test_a_message_reaches_both_instances_and_both_histories(instance, database_url):
    a = await instance()
    b = await instance()
    alice, bob = await signed_in(a), await signed_in(b)
    room = await create_room(a, alice)
    ws_a = await chat(a, room, await joined(a, room, alice))
    ws_b = await chat(b, room, await joined(b, room, bob))

    echo = await say(ws_a, "Hello from A")
    assert echo["type"] == "message"
    assert echo["body"] == "Hello from A"
    assert echo["identity"] == f"user-{alice['id']}" and echo["name"] == alice["name"]
    assert echo["room_id"] == room["id"] and isinstance(echo["id"], int)
    assert echo["created_at"].endswith("+00:00")
    assert await frame(ws_b) == echo

    reply = await say(ws_b, "Hi A, B here")
    assert await frame(ws_a) == reply
    assert stored(database_url, room["id"]) == [
        (f"user-{alice['id']}", alice["id"], "Hello from A"),
        (f"user-{bob['id']}", bob["id"], "Hi A, B here")]

    for client in (a, b):
        page = await history(client, room["id"])
        assert page == {"messages": [as_stored(reply), as_stored(echo)], "next": None}
    await ws_a.close()
    await ws_b.close()


async def test_history_pages_newest_first_on_both_instances(instance, database_url, api_error):
    a = await instance()
    b = await instance()
    alice = await signed_in(a)
    room = await create_room(a, alice)
    ws = await chat(a, room, await joined(a, room, alice))
    sent = [await say(ws, f"message {i}") for i in range(5)]
    await ws.close()
    newest_first = [m["id"] for m in reversed(sent)]

    for client in (a, b):
        seen: list[int] = []
        before: int | None = None
        pages = 0
        while True:
            params = {"limit": 2} if before is None else {"limit": 2, "before": before}
            page = await history(client, room["id"], **params)
            assert len(page["messages"]) <= 2
            seen += [m["id"] for m in page["messages"]]
            pages += 1
            before = page["next"]
            if before is None:
                break
            assert before == seen[-1]
        assert seen == newest_first and pages == 3
        assert (await history(client, room["id"]))["messages"] == [
            as_stored(m) for m in reversed(sent)]

    empty = await create_room(a, alice)
    assert await history(b, empty["id"]) == {"messages": [], "next": None}
    await api_error(await b.get("/rooms/987654/messages"), 404, "room_not_found")
    await api_error(await b.get("/rooms/abc/messages"), 404, "room_not_found")
    await api_error(await b.get(f"/rooms/{room['id']}/messages?limit=0"), 422)
    await api_error(await b.get(f"/rooms/{room['id']}/messages?limit=101"), 422)
    await api_error(await b.get(f"/rooms/{room['id']}/messages?before=x"), 422)


# --- who may connect and post -----------------------------------------------

async def test_tokens_of_another_room_or_forged_are_refused(client, database_url):
    alice = await signed_in(client)
    room = await create_room(client, alice)
    other = await create_room(client, alice, "Other")
    refusals = [
        (await joined(client, other, alice), 4403),
        (join_token(client, room, tokens.user_grant(alice["id"], alice["name"]),
                    secret="not-our-secret-" + "x" * 32), 4401),
        ("not a token", 4401),
        (42, 4401),
    ]
    for token, code in refusals:
        ws = await client.ws_connect(f"/rooms/{room['id']}/chat")
        await ws.send_json({"type": "auth", "token": token})
        assert (await closed(ws))[0] == code
    assert stored(database_url, room["id"]) == []


async def test_a_socket_without_a_token_in_time_is_closed_and_may_not_post(client,
                                                                          database_url):
    client.server.app[CHAT_KEY].auth_deadline = 0.5
    alice = await signed_in(client)
    room = await create_room(client, alice)
    listener = await chat(client, room, await joined(client, room, alice))
    ws = await client.ws_connect(f"/rooms/{room['id']}/chat")
    refused = await say(ws, "anonymous")
    assert refused["type"] == "error" and refused["code"] == "auth_required"
    assert await closed(ws) == (4401, "no token")
    assert stored(database_url, room["id"]) == []
    # The signed-in socket heard nothing of it, and still works.
    echo = await say(listener, "still here")
    assert echo["body"] == "still here"
    await listener.close()


async def test_a_guest_may_chat(instance, database_url):
    a = await instance(rooms_guests=True)
    alice = await signed_in(a)
    room = await create_room(a, alice)
    resp = await a.post(f"/rooms/{room['id']}/join", json={"name": "Visitor"})
    assert resp.status == 200, await resp.text()
    joined_as = await resp.json()
    holder = tokens.verify(a.server.app[CONFIG_KEY].livekit_api_key,
                           a.server.app[CONFIG_KEY].livekit_secret, joined_as["token"])
    assert not holder.can_publish and holder.user_id is None
    ws = await chat(a, room, joined_as["token"])
    echo = await say(ws, "hello as a guest")
    assert echo["identity"] == joined_as["identity"] and echo["name"] == "Visitor"
    assert stored(database_url, room["id"]) == [(joined_as["identity"], None,
                                                 "hello as a guest")]
    await ws.close()


async def test_the_websocket_refuses_foreign_origins_and_unknown_rooms(client, database_url):
    alice = await signed_in(client)
    room = await create_room(client, alice)
    with pytest.raises(WSServerHandshakeError) as refused:
        await client.ws_connect(f"/rooms/{room['id']}/chat",
                                headers={"Origin": "https://evil.example"})
    assert refused.value.status == 403
    with pytest.raises(WSServerHandshakeError) as missing:
        await client.ws_connect("/rooms/987654/chat")
    assert missing.value.status == 404
    ws = await client.ws_connect(f"/rooms/{room['id']}/chat",
                                 headers={"Origin": str(client.make_url("/")).rstrip("/")})
    await ws.close()


# --- what a message may say -----------------------------------------------------

async def test_bad_bodies_get_an_error_frame_and_nothing_is_stored(client, database_url):
    alice = await signed_in(client)
    room = await create_room(client, alice)
    ws = await chat(client, room, await joined(client, room, alice))
    for body in ("", "   \n ", "x" * 1001, 42, None, ["a"], "bell\x07", "\ud800"):
        error = await say(ws, body)
        assert error["type"] == "error" and error["code"] == "invalid_body", (body, error)
        assert error["message"]
    await ws.send_str("not json")
    assert (await frame(ws))["code"] == "bad_message"
    await ws.send_bytes(b"{}")
    assert (await frame(ws))["code"] == "bad_message"
    await ws.send_json({"type": "dance"})
    assert (await frame(ws))["code"] == "bad_message"
    assert stored(database_url, room["id"]) == []
    # The socket is still open and takes a good message; bodies are trimmed, NFC,
    # and exactly 1000 characters is allowed.
    assert (await say(ws, "  e\u0301\r\nline two  "))["body"] == "\u00e9\nline two"
    assert (await say(ws, "y" * 1000))["body"] == "y" * 1000
    assert len(stored(database_url, room["id"])) == 2
    await ws.close()


async def test_html_is_stored_and_returned_as_text(instance, database_url):
    a = await instance()
    b = await instance()
    alice = await signed_in(a)
    room = await create_room(a, alice)
    ws_a = await chat(a, room, await joined(a, room, alice))
    ws_b = await chat(b, room, await joined(b, room, alice))
    body = '<script>alert("x")</script> & <b>bold</b> &amp;'
    assert (await say(ws_a, body))["body"] == body
    assert (await frame(ws_b))["body"] == body
    resp = await b.get(f"/rooms/{room['id']}/messages")
    raw = await resp.text()
    assert json.loads(raw)["messages"][0]["body"] == body
    assert "&lt;" not in raw
    await ws_a.close()
    await ws_b.close()


async def test_posting_is_rate_limited_per_participant(instance, database_url):
    a = await instance(rate_limit_chat=RateSpec(3, 60))
    b = await instance(rate_limit_chat=RateSpec(3, 60))
    alice, bob = await signed_in(a), await signed_in(a)
    room = await create_room(a, alice)
    ws_a = await chat(a, room, await joined(a, room, alice))
    ws_b = await chat(b, room, await joined(b, room, alice))
    for i in range(2):
        assert (await say(ws_a, f"a{i}"))["type"] == "message"
    await frame(ws_b)
    await frame(ws_b)
    # The same participant on another instance shares the limit.
    assert (await say(ws_b, "b0"))["type"] == "message"
    await frame(ws_a)
    limited = await say(ws_a, "one too many")
    assert limited["code"] == "rate_limited" and 1 <= limited["retry_after"] <= 60
    assert len(stored(database_url, room["id"])) == 3
    # Another participant has a limit of their own.
    ws_bob = await chat(a, room, await joined(a, room, bob))
    assert (await say(ws_bob, "bob here"))["type"] == "message"
    for ws in (ws_a, ws_b, ws_bob):
        await ws.close()


async def test_a_post_finding_the_room_ended_closes_its_sockets_everywhere(instance,
                                                                          database_url):
    a = await instance()
    b = await instance()
    alice = await signed_in(a)
    room = await create_room(a, alice)
    ws_a = await chat(a, room, await joined(a, room, alice))
    ws_b = await chat(b, room, await joined(b, room, alice))
    assert (await say(ws_a, "before the end"))["type"] == "message"
    await frame(ws_b)
    # Ended behind the chat's back (as a webhook on another server may end it).
    query(database_url, "UPDATE rooms SET status = 'ended', ended_at = now() WHERE id = %s",
          (room["id"],))
    refused = await say(ws_a, "after the end")
    assert refused["code"] == "room_ended"
    assert await frame(ws_a) == {"type": "ended", "room_id": room["id"]}
    assert (await closed(ws_a))[0] == 4409
    # Every instance closes its sockets of the room.
    assert await frame(ws_b) == {"type": "ended", "room_id": room["id"]}
    assert (await closed(ws_b))[0] == 4409
    late = await b.ws_connect(f"/rooms/{room['id']}/chat")
    assert (await closed(late))[0] == 4409
    assert [r[2] for r in stored(database_url, room["id"])] == ["before the end"]
    assert len((await history(b, room["id"]))["messages"]) == 1


async def test_a_room_ended_by_its_owner_takes_no_more_messages(instance, database_url):
    a = await instance()
    b = await instance()
    alice = await signed_in(a)
    room = await create_room(a, alice)
    ws = await chat(b, room, await joined(b, room, alice))
    assert (await say(ws, "bye"))["type"] == "message"
    resp = await a.post(f"/rooms/{room['id']}/end",
                        headers={"Authorization": f"Bearer {alice['access_token']}"})
    assert resp.status == 200, await resp.text()
    # Whether the chat was told at once or learns it from this post, the socket ends.
    with contextlib.suppress(ConnectionError):
        await ws.send_json({"type": "message", "body": "too late"})
    assert (await closed(ws))[0] == 4409
    late = await a.ws_connect(f"/rooms/{room['id']}/chat")
    assert (await closed(late))[0] == 4409
    assert [r[2] for r in stored(database_url, room["id"])] == ["bye"]
    assert [m["body"] for m in (await history(a, room["id"]))["messages"]] == ["bye"]


# --- outages ---------------------------------------------------------------------

async def test_postgres_down_a_post_fails_and_nothing_is_published(instance, database_url,
                                                                   pg_proxy):
    a = await instance(database_url=pg_proxy.url, db_timeout=1.0)
    b = await instance()
    alice = await signed_in(b)
    room = await create_room(b, alice)
    ws_a = await chat(a, room, await joined(a, room, alice))
    ws_b = await chat(b, room, await joined(b, room, alice))
    pg_proxy.cut()
    try:
        error = await say(ws_a, "lost")
    finally:
        pg_proxy.restore()
    assert error["code"] == "unavailable"
    with pytest.raises(asyncio.TimeoutError):
        await frame(ws_b, within=0.5)
    echo = await say(ws_a, "back")
    assert (await frame(ws_b))["id"] == echo["id"]
    assert [r[2] for r in stored(database_url, room["id"])] == ["back"]
    await ws_a.close()
    await ws_b.close()


async def test_redis_down_a_post_is_stored_and_reaches_this_instance(instance, database_url,
                                                                    own_redis):
    a = await instance(redis_url=own_redis.url)
    alice = await signed_in(a)
    room = await create_room(a, alice)
    sender = await chat(a, room, await joined(a, room, alice))
    listener = await chat(a, room, await joined(a, room, alice))
    own_redis.stop()
    try:
        echo = await say(sender, "while Redis is down")
        assert echo["type"] == "message" and echo["body"] == "while Redis is down"
        warning = await frame(sender)
        assert warning["type"] == "warning" and warning["code"] == "not_shared"
        assert (await frame(listener))["id"] == echo["id"]
        assert [r[2] for r in stored(database_url, room["id"])] == ["while Redis is down"]
    finally:
        own_redis.start()
    await sender.close()
    await listener.close()


async def test_a_client_that_does_not_read_is_dropped_without_holding_up_others(
        instance, database_url):
    a = await instance(rate_limit_chat=RateSpec(100_000, 60))
    alice = await signed_in(a)
    room = await create_room(a, alice)
    token = await joined(a, room, alice)
    sender = await chat(a, room, token)
    slow = await chat(a, room, token)  # reads nothing until the end
    hub = a.server.app[CHAT_KEY]
    # Non-ASCII is sent \u-escaped: each frame is about 12 kB.
    body = "\U0001f600" * 1000
    loop = asyncio.get_running_loop()
    start = loop.time()
    posts = 0
    while len(hub.rooms[room["id"]]) == 2:
        assert (await say(sender, body))["type"] == "message"
        posts += 1
        assert posts < 3000, "the slow socket was never dropped"
    # The sender never waited on the slow reader.
    assert loop.time() - start < 30
    assert (await say(sender, "still flowing"))["body"] == "still flowing"
    received = 0
    while True:
        msg = await slow.receive(timeout=10)
        if msg.type is not WSMsgType.TEXT:
            break
        received += 1
    assert msg.type is WSMsgType.CLOSE and msg.data == 4408, (msg.type, msg.data)
    assert 0 < received < posts + 1
    await sender.close()


async def test_one_address_cannot_fill_a_room_with_idle_sockets(client, database_url):
    from server.live.chat import MAX_ADDRESS_SOCKETS, TOO_MANY

    owner = await signed_in(client)
    room = await create_room(client, owner)
    idle = [await client.ws_connect(f"/rooms/{room['id']}/chat")
            for _ in range(MAX_ADDRESS_SOCKETS)]
    extra = await client.ws_connect(f"/rooms/{room['id']}/chat")
    code, _ = await closed(extra)
    assert code == TOO_MANY
    # A socket closing makes room for another.
    await idle.pop().close()
    token = await joined(client, room, owner)
    for _ in range(50):
        ws = await client.ws_connect(f"/rooms/{room['id']}/chat")
        await ws.send_json({"type": "auth", "token": token})
        msg = await ws.receive(timeout=5.0)
        if msg.type is WSMsgType.TEXT:
            assert json.loads(msg.data)["type"] == "ready"
            await ws.close()
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("no socket admitted after one closed")
    for ws in idle:
        await ws.close()
