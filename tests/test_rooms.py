"""Rooms over real HTTP, PostgreSQL and Redis: create, list, read, end, join; the
LiveKit tokens checked with livekit-api's own TokenVerifier; RoomService calls
to a LiveKit stand-in; bad input answered 4xx in the one error shape."""

from __future__ import annotations

import re
import time
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from livekit import api

from server.core.config import RateSpec
from server.core.errors import ApiError
from server.live import rooms as live_rooms
from server.live.rooms import clean_guest_name, http_url, is_full
from server.ops import openapi

from .moderation_helpers import Member, member
from .test_bans import ban

KEY = "test-key"
SECRET = "test-livekit-secret-" + "x" * 24
LIVEKIT_ROOM_RE = re.compile(r"tubelet-(\d+)-[0-9a-f]{16}")


def livekit_config(**overrides: Any) -> dict[str, Any]:
    return {"livekit_api_key": KEY, "livekit_api_secret": SECRET, **overrides}


async def create(client: Any, who: Member, name: str = "Standup", **extra: Any) -> Any:
    resp = await client.post("/rooms", json={"name": name, **extra}, headers=who.auth)
    assert resp.status == 201, await resp.text()
    return await resp.json()


def claims_of(token: str, secret: str = SECRET) -> api.Claims:
    return api.TokenVerifier(KEY, secret).verify(token)


# --- pure rules --------------------------------------------------------------

@pytest.mark.parametrize(("limit", "present", "already_in", "full"), [
    (None, 500, False, False), (2, 1, False, False), (2, 2, False, True),
    (2, 3, False, True), (2, 2, True, False), (1, 0, False, False),
])
def test_when_a_room_is_full(limit, present, already_in, full):
    assert is_full(limit, present, already_in) is full


@pytest.mark.parametrize(("url", "expected"), [
    ("wss://lk.example.com", "https://lk.example.com"),
    ("ws://127.0.0.1:7880", "http://127.0.0.1:7880"),
    ("https://lk.example.com/base", "https://lk.example.com/base"),
])
def test_the_room_service_is_reached_over_http(url, expected):
    assert http_url(url) == expected


def test_guest_names_are_cleaned_and_default_to_guest():
    assert clean_guest_name(None) == "Guest"
    assert clean_guest_name("   ") == "Guest"
    assert clean_guest_name("  Ada  ") == "Ada"
    with pytest.raises(ApiError):
        clean_guest_name("x" * 51)
    with pytest.raises(ApiError):
        clean_guest_name("evil\u202eeman")


def test_the_documents_limits_are_the_codes():
    assert openapi.ROOM_NAME_MAX == live_rooms.NAME_MAX
    assert openapi.ROOM_MAX_PARTICIPANTS == live_rooms.MAX_PARTICIPANTS
    assert openapi.GUEST_NAME_MAX == live_rooms.GUEST_NAME_MAX


# --- create, list, read --------------------------------------------------------

async def test_a_room_is_created_listed_and_read(client, api_error):
    owner = await member(client)
    room = await create(client, owner, "  Friday   demo ", max_participants=8)
    assert set(room) == {"id", "name", "owner_id", "status", "created_at", "livekit_url",
                         "livekit_room", "max_participants", "participant_count"}
    assert room["name"] == "Friday   demo"
    assert room["owner_id"] == owner.id and room["status"] == "active"
    assert room["livekit_url"] is None and room["max_participants"] == 8
    match = LIVEKIT_ROOM_RE.fullmatch(room["livekit_room"])
    assert match and int(match[1]) == room["id"]
    assert abs(time.time() - _epoch(room["created_at"])) < 60

    other = await create(client, owner, "Second")
    assert other["livekit_room"] != room["livekit_room"]
    assert other["max_participants"] is None

    resp = await client.get(f"/rooms/{room['id']}")
    assert resp.status == 200
    got = await resp.json()
    assert got["participants"] == [] and got["participant_count"] == 0
    assert {k: got[k] for k in room} == room

    resp = await client.get("/rooms")
    listing = await resp.json()
    assert [r["id"] for r in listing["items"]] == [other["id"], room["id"]]
    assert listing["next_cursor"] is None
    await api_error(await client.get("/rooms/999999"), 404, "not_found")


async def test_the_room_list_pages_through_active_rooms_only(client):
    owner = await member(client)
    ids = [(await create(client, owner, f"Room {i}"))["id"] for i in range(5)]
    resp = await client.post(f"/rooms/{ids[3]}/end", headers=owner.auth)
    assert resp.status == 200
    seen, cursor = [], None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/rooms", params=params)).json()
        seen += [r["id"] for r in page["items"]]
        assert all(r["status"] == "active" for r in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [ids[4], ids[2], ids[1], ids[0]]


async def test_livekit_url_is_the_configured_one(make_config, aiohttp_client):
    from server.app import create_app

    client = await aiohttp_client(create_app(make_config(
        **livekit_config(livekit_url="ws://127.0.0.1:1"))))
    owner = await member(client)
    room = await create(client, owner)
    assert room["livekit_url"] == "ws://127.0.0.1:1"


async def test_creating_rooms_is_rate_limited_per_account(make_config, aiohttp_client,
                                                          api_error):
    from server.app import create_app

    client = await aiohttp_client(create_app(make_config(rate_limit_upload=RateSpec(2, 3600))))
    owner, other = await member(client), await member(client)
    await create(client, owner)
    await create(client, owner)
    resp = await client.post("/rooms", json={"name": "Third"}, headers=owner.auth)
    await api_error(resp, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) > 0
    # Another account has its own allowance.
    await create(client, other)


# --- join ----------------------------------------------------------------------

async def test_a_members_token_lets_them_publish_in_this_room_alone(make_config,
                                                                     aiohttp_client):
    from server.app import create_app

    client = await aiohttp_client(create_app(make_config(
        **livekit_config(livekit_url="wss://media.example.com", livekit_token_ttl=900))))
    owner, guest_user = await member(client), await member(client)
    await client.patch("/users/me", json={"name": "Ada Lovelace"}, headers=owner.auth)
    room = await create(client, owner)
    for who, name in ((owner, "Ada Lovelace"), (guest_user, None)):
        before = time.time()
        resp = await client.post(f"/rooms/{room['id']}/join", headers=who.auth)
        assert resp.status == 200, await resp.text()
        joined = await resp.json()
        assert set(joined) == {"token", "livekit_url", "identity"}
        assert joined["livekit_url"] == "wss://media.example.com"
        assert joined["identity"] == f"user-{who.id}"
        claims = claims_of(joined["token"])
        assert claims.identity == f"user-{who.id}"
        if name:
            assert claims.name == name
        else:
            assert claims.name  # the account's name, whatever it defaulted to
        video = claims.video
        assert video is not None
        assert video.room_join and video.room == room["livekit_room"]
        assert video.can_publish and video.can_subscribe and video.can_publish_data
        assert not video.room_create and not video.room_admin
        exp = jwt.decode(joined["token"], options={"verify_signature": False})["exp"]
        assert before + 900 - 5 <= exp <= time.time() + 900 + 5
        # Signed with this server's secret and key, nobody else's.
        with pytest.raises(jwt.PyJWTError):
            claims_of(joined["token"], secret="another-secret-" + "y" * 24)
        with pytest.raises(jwt.PyJWTError):
            api.TokenVerifier("other-key", SECRET).verify(joined["token"])


async def test_without_an_account_joining_needs_rooms_guests(client, api_error):
    owner = await member(client)
    room = await create(client, owner)
    resp = await client.post(f"/rooms/{room['id']}/join")
    await api_error(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    await api_error(await client.post(f"/rooms/{room['id']}/join",
                                      headers={"Authorization": "Bearer nope"}),
                    401, "invalid_token")


async def test_guests_may_subscribe_but_never_publish(make_config, aiohttp_client, api_error):
    from server.app import create_app

    client = await aiohttp_client(create_app(make_config(**livekit_config(rooms_guests=True))))
    owner = await member(client)
    room = await create(client, owner)
    url = f"/rooms/{room['id']}/join"
    resp = await client.post(url, json={"name": "  Grace  "})
    assert resp.status == 200, await resp.text()
    joined = await resp.json()
    assert re.fullmatch(r"guest-[0-9a-f]{16}", joined["identity"])
    assert joined["livekit_url"] is None
    claims = claims_of(joined["token"])
    assert claims.identity == joined["identity"] and claims.name == "Grace"
    assert claims.video is not None and claims.video.room == room["livekit_room"]
    assert claims.video.room_join and claims.video.can_subscribe
    assert not claims.video.can_publish
    # No body, or no name: "Guest"; every guest is someone else.
    second = await (await client.post(url)).json()
    assert claims_of(second["token"]).name == "Guest"
    assert second["identity"] != joined["identity"]
    third = await (await client.post(url, json={"name": None})).json()
    assert claims_of(third["token"]).name == "Guest"
    # A member is still a member when guests are let in.
    user = await member(client)
    mine = await (await client.post(url, headers=user.auth)).json()
    assert mine["identity"] == f"user-{user.id}"
    assert claims_of(mine["token"]).video.can_publish
    # Bad guest names.
    await api_error(await client.post(url, json={"name": 5}), 422)
    await api_error(await client.post(url, json={"name": "x" * 5000}), 422)
    await api_error(await client.post(url, json={"name": "a\x07b"}), 422)
    await api_error(await client.post(url, data="{", headers={
        "Content-Type": "application/json"}), 400, "invalid_json")
    await api_error(await client.post(url, data="name=x"), 415)
    await api_error(await client.post(url, json=["x"]), 422)


async def test_a_banned_member_gets_no_token(client, api_error):
    owner, banned = await member(client), await member(client)
    room = await create(client, owner)
    await ban(client, banned.id)
    await api_error(await client.post(f"/rooms/{room['id']}/join", headers=banned.auth),
                    403, "banned")
    await api_error(await client.post("/rooms", json={"name": "x"}, headers=banned.auth),
                    403, "banned")


# --- end -------------------------------------------------------------------------

async def test_the_owner_ends_a_room_and_it_can_no_longer_be_joined(client, api_error):
    owner, other = await member(client), await member(client)
    room = await create(client, owner)
    url = f"/rooms/{room['id']}"
    await api_error(await client.post(f"{url}/end"), 401)
    await api_error(await client.post(f"{url}/end", headers=other.auth), 403, "forbidden")
    resp = await client.post(f"{url}/end", headers=owner.auth)
    assert resp.status == 200, await resp.text()
    ended = await resp.json()
    assert ended["status"] == "ended" and ended["id"] == room["id"]
    assert (await (await client.get(url)).json())["status"] == "ended"
    await api_error(await client.post(f"{url}/end", headers=owner.auth), 409, "room_ended")
    await api_error(await client.post(f"{url}/join", headers=other.auth), 409, "room_ended")
    await api_error(await client.post(f"{url}/join", headers=owner.auth), 409, "room_ended")
    assert (await (await client.get("/rooms")).json())["items"] == []
    await api_error(await client.post("/rooms/999999/end", headers=owner.auth), 404)


@pytest.mark.parametrize("role", ["moderator", "admin"])
async def test_moderators_and_admins_end_anyones_room(client, role):
    owner, staff = await member(client), await member(client, role)
    room = await create(client, owner)
    resp = await client.post(f"/rooms/{room['id']}/end", headers=staff.auth)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "ended"


# --- LiveKit's RoomService -----------------------------------------------------------

class LiveKitStandIn:
    """An HTTP server answering RoomService's Twirp calls as LiveKit would."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.calls: list[tuple[str, Any, api.Claims]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/twirp/livekit.RoomService/{method}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        token = request.headers["Authorization"].removeprefix("Bearer ")
        claims = api.TokenVerifier(KEY, SECRET).verify(token)
        body = await request.read()
        if method == "CreateRoom":
            message: Any = api.CreateRoomRequest.FromString(body)
            reply = api.Room(name=message.name).SerializeToString()
        else:
            message = api.DeleteRoomRequest.FromString(body)
            reply = api.DeleteRoomResponse().SerializeToString()
        self.calls.append((method, message, claims))
        if self.status != 200:
            return web.json_response({"code": "internal", "msg": "down"}, status=self.status)
        return web.Response(body=reply, content_type="application/protobuf")


async def test_rooms_are_created_and_deleted_in_livekit(make_config, aiohttp_client):
    from server.app import create_app

    livekit = LiveKitStandIn()
    server = TestServer(livekit.app())
    await server.start_server()
    try:
        url = f"ws://127.0.0.1:{server.port}"
        client = await aiohttp_client(create_app(make_config(**livekit_config(livekit_url=url))))
        owner = await member(client)
        room = await create(client, owner, max_participants=12)
        assert room["livekit_url"] == url
        [(method, created, claims)] = livekit.calls
        assert method == "CreateRoom"
        assert created.name == room["livekit_room"]
        assert created.max_participants == 12 and created.empty_timeout == 3600
        assert claims.video is not None and claims.video.room_create
        resp = await client.post(f"/rooms/{room['id']}/end", headers=owner.auth)
        assert resp.status == 200
        method, deleted, _ = livekit.calls[1]
        assert method == "DeleteRoom" and deleted.room == room["livekit_room"]
    finally:
        await server.close()


@pytest.mark.parametrize("failure", ["refused", "error"])
async def test_rooms_work_when_livekit_cannot_be_reached(make_config, aiohttp_client, failure):
    from server.app import create_app

    from .outages import free_port

    livekit = LiveKitStandIn(status=500)
    server = TestServer(livekit.app())
    await server.start_server()
    try:
        port = server.port if failure == "error" else free_port()
        client = await aiohttp_client(create_app(make_config(
            **livekit_config(livekit_url=f"http://127.0.0.1:{port}"))))
        owner = await member(client)
        room = await create(client, owner)
        joined = await client.post(f"/rooms/{room['id']}/join", headers=owner.auth)
        assert joined.status == 200
        resp = await client.post(f"/rooms/{room['id']}/end", headers=owner.auth)
        assert resp.status == 200
        assert (await resp.json())["status"] == "ended"
        if failure == "error":
            assert [call[0] for call in livekit.calls] == ["CreateRoom", "DeleteRoom"]
    finally:
        await server.close()


# --- bad input -------------------------------------------------------------------

@pytest.mark.parametrize(("body", "status"), [
    ({}, 422), ({"name": ""}, 422), ({"name": "   "}, 422), ({"name": "x" * 101}, 422),
    ({"name": "x" * 100_000}, 422), ({"name": 5}, 422), ({"name": ["a"]}, 422),
    ({"name": "a\nb"}, 422), ({"name": "a\u202eb"}, 422), ({"name": "\ud800"}, 422),
    ({"name": "ok", "max_participants": 0}, 422),
    ({"name": "ok", "max_participants": 1001}, 422),
    ({"name": "ok", "max_participants": "5"}, 422),
    ({"name": "ok", "max_participants": True}, 422),
    ({"name": "ok", "max_participants": 1.5}, 422),
    ({"name": "ok", "max_participants": 10**30}, 422),
    ({"name": "ok", "max_participants": -1}, 422),
    ([1, 2], 422), ("name", 422),
])
async def test_bad_rooms_are_refused(client, api_error, body, status):
    owner = await member(client)
    resp = await client.post("/rooms", json=body, headers=owner.auth)
    await api_error(resp, status)


async def test_malformed_requests_get_4xx_never_500(client, api_error):
    owner = await member(client)
    room = await create(client, owner, max_participants=1000)
    assert room["max_participants"] == 1000
    await api_error(await client.post("/rooms", json={"name": "x"}), 401)
    await api_error(await client.post("/rooms", data="{", headers={
        **owner.auth, "Content-Type": "application/json"}), 400, "invalid_json")
    await api_error(await client.post("/rooms", data=b"\xff\xfe", headers={
        **owner.auth, "Content-Type": "application/json"}), 400)
    await api_error(await client.post("/rooms", data="name=x", headers=owner.auth), 415)
    await api_error(await client.post("/rooms", data="[" * 100_000, headers={
        **owner.auth, "Content-Type": "application/json"}), 400)
    for path in ("/rooms/0", "/rooms/-1", "/rooms/abc", "/rooms/01",
                 "/rooms/99999999999999999999999", "/rooms/1.5", "/rooms/%20"):
        await api_error(await client.get(path), 404)
        await api_error(await client.post(f"{path}/join", headers=owner.auth), 404)
        await api_error(await client.post(f"{path}/end", headers=owner.auth), 404)
    for params in ({"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"cursor": "-1"},
                   {"cursor": "abc"}, {"cursor": "9" * 40}):
        await api_error(await client.get("/rooms", params=params), 422)
    await api_error(await client.put("/rooms"), 405)


async def test_room_answers_match_the_api_document(make_config, aiohttp_client):
    from server.app import create_app

    from .test_openapi import Api, Contract

    client = await aiohttp_client(create_app(make_config(**livekit_config(rooms_guests=True))))
    document = await (await client.get("/openapi.json")).json()
    checked = Api(client, Contract(document))
    owner, other = await member(client), await member(client)
    room = await checked.json("post", "/rooms", owner.token, json={"name": "Doc"}, status=201)
    await checked.json("post", "/rooms", owner.token, json={"name": ""}, status=422)
    await checked.json("get", "/rooms")
    await checked.json("get", "/rooms", params={"limit": "0"}, status=422)
    await checked.json("get", f"/rooms/{room['id']}")
    await checked.json("get", "/rooms/999999", status=404)
    await checked.json("post", f"/rooms/{room['id']}/join", other.token)
    await checked.json("post", f"/rooms/{room['id']}/join", json={"name": "G"})
    await checked.json("post", f"/rooms/{room['id']}/end", other.token, status=403)
    await checked.json("post", f"/rooms/{room['id']}/end", owner.token)
    await checked.json("post", f"/rooms/{room['id']}/end", owner.token, status=409)
    await checked.json("post", f"/rooms/{room['id']}/join", other.token, status=409)
    await checked.json("post", "/livekit/webhook", data="{}", status=401)


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp).timestamp()


async def test_an_ended_room_seen_alive_in_livekit_is_closed_again(make_config, aiohttp_client):
    """A token issued before the end would make LiveKit create the room anew on join."""
    from server.app import create_app

    from .test_room_webhooks import delivered, event_body

    livekit = LiveKitStandIn()
    server = TestServer(livekit.app())
    await server.start_server()
    try:
        url = f"ws://127.0.0.1:{server.port}"
        client = await aiohttp_client(create_app(make_config(**livekit_config(livekit_url=url))))
        owner = await member(client)
        room = await create(client, owner)
        lk = room["livekit_room"]
        assert (await client.post(f"/rooms/{room['id']}/end", headers=owner.auth)).status == 200
        assert [method for method, _, _ in livekit.calls] == ["CreateRoom", "DeleteRoom"]
        await delivered(client, event_body("participant_joined", lk, identity="user-9",
                                           sid="PA_late", name="Late"))
        method, deleted, _ = livekit.calls[-1]
        assert method == "DeleteRoom" and deleted.room == lk
        got = await (await client.get(f"/rooms/{room['id']}")).json()
        assert got["status"] == "ended" and got["participants"] == []
        # An active room's joins close nothing.
        other = await create(client, owner)
        calls = len(livekit.calls)
        await delivered(client, event_body("participant_joined", other["livekit_room"],
                                           identity="user-9", sid="PA_ok", name="Ok"))
        assert len(livekit.calls) == calls
    finally:
        await server.close()
