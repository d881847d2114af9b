"""LiveKit's webhooks, signed as LiveKit signs them, delivered over real HTTP to two
app instances sharing PostgreSQL and Redis: participants in Redis (duplicates and
out-of-order events), history rows in PostgreSQL, and every forgery refused."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import secrets
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from google.protobuf.json_format import MessageToJson
from livekit import api
from livekit.protocol.models import ParticipantInfo, Room
from livekit.protocol.webhook import WebhookEvent

from server.app import create_app
from server.core.keys import CONFIG_KEY
from server.live.keys import ROOMS_KEY, WEBHOOKS_KEY
from server.live.participants import Event, Session, apply
from server.live.webhooks import auth_token, is_stale

from .conftest import REDIS_URL, query
from .moderation_helpers import member
from .outages import RedisServer

KEY = "test-key"
SECRET = "test-livekit-secret-" + "x" * 24
SETTINGS = {"livekit_api_key": KEY, "livekit_api_secret": SECRET}


# --- LiveKit's side ------------------------------------------------------------------

def event_body(kind: str, livekit_room: str, *, identity: str = "", sid: str = "",
               name: str = "", at: float | None = None, joined_at: float | None = None,
               event_id: str | None = None) -> str:
    """A webhook event as LiveKit's server writes it (protobuf JSON)."""
    now = int(time.time() if at is None else at)
    event = WebhookEvent(event=kind, id=event_id or f"EV_{secrets.token_hex(6)}",
                         created_at=now, room=Room(name=livekit_room, sid="RM_x"))
    if identity:
        joined = int(now if joined_at is None else joined_at)
        event.participant.CopyFrom(ParticipantInfo(
            sid=sid, identity=identity, name=name, joined_at=joined,
            joined_at_ms=joined * 1000, state=ParticipantInfo.ACTIVE))
    return MessageToJson(event)


def raw(body: str | bytes) -> bytes:
    return body.encode() if isinstance(body, str) else body


def sign(body: str | bytes, *, key: str = KEY, secret: str = SECRET,
         ttl: datetime.timedelta = datetime.timedelta(minutes=5)) -> str:
    """LiveKit's Authorization header: a JWT with the body's base64 SHA-256."""
    digest = base64.b64encode(hashlib.sha256(raw(body)).digest()).decode()
    return api.AccessToken(key, secret).with_sha256(digest).with_ttl(ttl).to_jwt()


async def deliver(client: Any, body: str | bytes, authorization: str | None = "sign",
                  **signing: Any) -> Any:
    headers = {"Content-Type": "application/webhook+json"}
    if authorization == "sign":
        headers["Authorization"] = sign(body, **signing)
    elif authorization is not None:
        headers["Authorization"] = authorization
    return await client.post("/livekit/webhook", data=raw(body), headers=headers)


async def delivered(client: Any, body: str, **signing: Any) -> None:
    resp = await deliver(client, body, **signing)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"ok": True}


# --- our side --------------------------------------------------------------------------

async def new_room(client: Any, **extra: Any) -> tuple[Any, dict[str, Any]]:
    owner = await member(client)
    resp = await client.post("/rooms", json={"name": "Call", **extra}, headers=owner.auth)
    assert resp.status == 201, await resp.text()
    return owner, await resp.json()


async def people(client: Any, room_id: int) -> list[dict[str, Any]]:
    resp = await client.get(f"/rooms/{room_id}")
    assert resp.status == 200
    room = await resp.json()
    assert room["participant_count"] == len(room["participants"])
    return room["participants"]


async def identities(client: Any, room_id: int) -> list[str]:
    return [p["identity"] for p in await people(client, room_id)]


def db(client: Any) -> str:
    return client.server.app[CONFIG_KEY].database_url


def sessions(client: Any, room_id: int) -> list[tuple[Any, ...]]:
    return query(db(client), "SELECT identity, name, participant_sid, joined_at, left_at"
                 " FROM room_sessions WHERE room_id = %s ORDER BY joined_at, id", (room_id,))


def events_recorded(client: Any) -> int:
    return query(db(client), "SELECT count(*) FROM room_events")[0][0]


@pytest.fixture
async def pair(instance):
    """Two app instances on real sockets, sharing the database and the Redis prefix."""
    return await instance(**SETTINGS), await instance(**SETTINGS)


# --- pure rules --------------------------------------------------------------------------

def joined(sid: str, joined_ms: int, at: int, identity: str = "user-1") -> Event:
    return Event("joined", identity, sid, "Ada", joined_ms, at)


def left(sid: str, at: int, identity: str = "user-1") -> Event:
    return Event("left", identity, sid, "Ada", 0, at)


S1 = Session("PA_1", "Ada", 100_000, 100)
S2 = Session("PA_2", "Ada", 200_000, 200)


@pytest.mark.parametrize(("current", "sid_left", "event", "after", "changed"), [
    # A first joined puts the participant in; a duplicate changes nothing.
    (None, False, joined("PA_1", 100_000, 100), S1, True),
    (S1, False, joined("PA_1", 100_000, 100), S1, False),
    # Their left takes them out; another session's left does not.
    (S1, False, left("PA_1", 150), None, True),
    (S2, False, left("PA_1", 250), S2, False),
    (None, False, left("PA_1", 150), None, False),
    # A joined whose session has left already stays out (left overtook joined).
    (None, True, joined("PA_1", 100_000, 100), None, False),
    # A newer session of the identity replaces an older; a late older one does not.
    (S1, False, joined("PA_2", 200_000, 200), S2, True),
    (S2, False, joined("PA_1", 100_000, 100), S2, False),
    # Same join time: the later event wins.
    (S1, False, joined("PA_3", 100_000, 101), Session("PA_3", "Ada", 100_000, 101), True),
])
def test_the_participant_rules(current, sid_left, event, after, changed):
    outcome = apply(current, sid_left, event)
    assert outcome.session == after and outcome.changed is changed


@pytest.mark.parametrize(("header", "token"), [
    ("abc.def.ghi", "abc.def.ghi"), ("Bearer abc.def", "abc.def"),
    ("bearer   abc", "abc"), ("  abc  ", "abc"),
])
def test_the_authorization_header_is_the_bare_jwt_or_bearer(header, token):
    assert auth_token(header) == token


@pytest.mark.parametrize("header", [None, "", "   ", "Bearer ", "Bearer    "])
def test_no_token_is_refused(header):
    with pytest.raises(Exception, match="Webhook refused"):
        auth_token(header)


@pytest.mark.parametrize(("created_at", "stale"), [
    (1000, False), (1000 - 600, False), (1000 - 601, True), (1000 + 601, True), (0, True),
])
def test_only_fresh_events_are_taken(created_at, stale):
    assert is_stale(created_at, 1000.0) is stale


# --- participants across instances ----------------------------------------------------

async def test_a_join_seen_by_one_instance_shows_on_the_other(pair):
    a, b = pair
    _, room = await new_room(a)
    lk = room["livekit_room"]
    joined_at = int(time.time()) - 5
    await delivered(a, event_body("room_started", lk))
    await delivered(a, event_body("participant_joined", lk, identity="user-7", sid="PA_a",
                                  name="Ada", joined_at=joined_at))
    [person] = await people(b, room["id"])
    assert person["identity"] == "user-7" and person["name"] == "Ada"
    assert datetime.datetime.fromisoformat(person["joined_at"]).timestamp() == joined_at
    listing = await (await b.get("/rooms")).json()
    assert listing["items"][0]["participant_count"] == 1
    await delivered(b, event_body("participant_joined", lk, identity="guest-1", sid="PA_b",
                                  name="Grace"))
    assert await identities(a, room["id"]) == ["user-7", "guest-1"]
    await delivered(b, event_body("participant_left", lk, identity="user-7", sid="PA_a",
                                  name="Ada"))
    assert await identities(a, room["id"]) == ["guest-1"]
    await delivered(a, event_body("participant_connection_aborted", lk, identity="guest-1",
                                  sid="PA_b", name="Grace"))
    assert await identities(b, room["id"]) == []
    [(started,)] = query(db(a), "SELECT started_at FROM rooms WHERE id = %s", (room["id"],))
    assert started is not None


async def test_a_duplicate_changes_nothing(pair):
    a, b = pair
    _, room = await new_room(a)
    lk = room["livekit_room"]
    join = event_body("participant_joined", lk, identity="user-3", sid="PA_1", name="Ada")
    leave = event_body("participant_left", lk, identity="user-3", sid="PA_1", name="Ada")
    await delivered(a, join)
    await delivered(b, join)
    assert await identities(a, room["id"]) == ["user-3"]
    assert len(sessions(a, room["id"])) == 1
    await delivered(b, leave)
    recorded = events_recorded(a)
    # The same joined again, to either instance: it was applied once already.
    await delivered(a, join)
    await delivered(b, join)
    assert await identities(a, room["id"]) == []
    assert events_recorded(a) == recorded == 2
    assert len(sessions(a, room["id"])) == 1


async def test_a_left_overtaking_its_joined_leaves_the_participant_out(pair):
    a, b = pair
    _, room = await new_room(a)
    lk = room["livekit_room"]
    t = int(time.time()) - 30
    await delivered(a, event_body("participant_left", lk, identity="user-4", sid="PA_1",
                                  name="Bo", at=t + 20, joined_at=t))
    await delivered(b, event_body("participant_joined", lk, identity="user-4", sid="PA_1",
                                  name="Bo", at=t, joined_at=t))
    assert await identities(a, room["id"]) == []
    # History has the whole stay, from joined to left.
    [(identity, name, sid, joined_at, left_at)] = sessions(a, room["id"])
    assert (identity, name, sid) == ("user-4", "Bo", "PA_1")
    assert (left_at - joined_at).total_seconds() == 20


async def test_a_reconnect_survives_the_old_sessions_late_events(pair):
    a, b = pair
    _, room = await new_room(a)
    lk = room["livekit_room"]
    t = int(time.time()) - 30
    await delivered(a, event_body("participant_joined", lk, identity="user-5", sid="PA_old",
                                  name="Cy", at=t, joined_at=t))
    await delivered(b, event_body("participant_joined", lk, identity="user-5", sid="PA_new",
                                  name="Cy", at=t + 10, joined_at=t + 10))
    # The old session's left arrives after the new one joined.
    await delivered(a, event_body("participant_left", lk, identity="user-5", sid="PA_old",
                                  name="Cy", at=t + 11, joined_at=t))
    assert await identities(b, room["id"]) == ["user-5"]
    # And an old joined redelivered with a new id (or late) does not replace the new one.
    await delivered(b, event_body("participant_joined", lk, identity="user-5", sid="PA_old",
                                  name="Cy", at=t, joined_at=t))
    await delivered(a, event_body("participant_left", lk, identity="user-5", sid="PA_new",
                                  name="Cy", at=t + 20, joined_at=t + 10))
    assert await identities(b, room["id"]) == []
    stays = sessions(a, room["id"])
    assert [(s[2], (s[4] - s[3]).total_seconds()) for s in stays] == [
        ("PA_old", 11.0), ("PA_new", 10.0)]


async def test_room_finished_empties_and_ends_the_room(pair, api_error):
    a, b = pair
    owner, room = await new_room(a)
    lk = room["livekit_room"]
    t = int(time.time()) - 60
    await delivered(a, event_body("participant_joined", lk, identity="user-1", sid="PA_1",
                                  name="Ada", at=t, joined_at=t))
    await delivered(a, event_body("participant_joined", lk, identity="user-2", sid="PA_2",
                                  name="Bo", at=t + 5, joined_at=t + 5))
    await delivered(b, event_body("participant_left", lk, identity="user-2", sid="PA_2",
                                  name="Bo", at=t + 15, joined_at=t + 5))
    await delivered(b, event_body("room_finished", lk, at=t + 40))
    got = await (await a.get(f"/rooms/{room['id']}")).json()
    assert got["status"] == "ended" and got["participants"] == []
    await api_error(await b.post(f"/rooms/{room['id']}/join", headers=owner.auth),
                    409, "room_ended")
    assert [r["id"] for r in (await (await a.get("/rooms")).json())["items"]] == []
    # History: who, when, how long; the stay still open ends with the room.
    stays = {s[0]: (s[4] - s[3]).total_seconds() for s in sessions(a, room["id"])}
    assert stays == {"user-1": 40.0, "user-2": 10.0}
    # A late joined of the finished room shows nobody, and its stay is closed.
    await delivered(a, event_body("participant_joined", lk, identity="user-3", sid="PA_3",
                                  name="Cy", at=t + 30, joined_at=t + 30))
    assert await identities(b, room["id"]) == []
    assert all(s[4] is not None for s in sessions(a, room["id"]))
    # No Redis keys of the room are left.
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        prefix = a.server.app[CONFIG_KEY].redis_prefix
        assert await client.exists(f"{prefix}:room:{room['id']}:participants") == 0
    finally:
        await client.aclose()


async def test_ending_a_room_clears_its_participants(pair):
    a, b = pair
    owner, room = await new_room(a)
    lk = room["livekit_room"]
    await delivered(a, event_body("participant_joined", lk, identity="user-1", sid="PA_1",
                                  name="Ada"))
    resp = await b.post(f"/rooms/{room['id']}/end", headers=owner.auth)
    assert resp.status == 200
    assert await identities(a, room["id"]) == []
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        prefix = a.server.app[CONFIG_KEY].redis_prefix
        assert await client.exists(f"{prefix}:room:{room['id']}:participants") == 0
    finally:
        await client.aclose()


async def test_the_end_of_a_room_is_told_once_whoever_ends_it(pair):
    a, b = pair
    heard: dict[str, list[int]] = {"a": [], "b": []}
    for name, app in (("a", a), ("b", b)):
        async def hear(room_id: int, name: str = name) -> None:
            heard[name].append(room_id)
        app.server.app[ROOMS_KEY].on_ended(hear)
    owner, ended = await new_room(a)
    assert (await a.post(f"/rooms/{ended['id']}/end", headers=owner.auth)).status == 200
    _, finished = await new_room(a)
    body = event_body("room_finished", finished["livekit_room"])
    await delivered(b, body)
    await delivered(a, body)
    assert heard == {"a": [ended["id"]], "b": [finished["id"]]}


async def test_old_event_ids_are_pruned(pair):
    a, _ = pair
    _, room = await new_room(a)
    for identity in ("user-1", "user-2"):
        await delivered(a, event_body("participant_joined", room["livekit_room"],
                                      identity=identity, sid=f"PA_{identity}", name="X"))
    query(db(a), "UPDATE room_events SET received_at = now() - interval '2 days'"
          " WHERE event_id = (SELECT min(event_id) FROM room_events)")
    await a.server.app[WEBHOOKS_KEY].prune()
    assert events_recorded(a) == 1
    # History stays.
    assert len(sessions(a, room["id"])) == 2


async def test_a_full_room_refuses_newcomers_but_not_those_in_it(pair, api_error):
    a, b = pair
    owner, room = await new_room(a, max_participants=1)
    lk = room["livekit_room"]
    resp = await b.post(f"/rooms/{room['id']}/join", headers=owner.auth)
    assert resp.status == 200
    await delivered(a, event_body("participant_joined", lk, identity=f"user-{owner.id}",
                                  sid="PA_1", name="Owner"))
    other = await member(b)
    await api_error(await b.post(f"/rooms/{room['id']}/join", headers=other.auth),
                    409, "room_full")
    # The one inside may reconnect.
    resp = await a.post(f"/rooms/{room['id']}/join", headers=owner.auth)
    assert resp.status == 200
    await delivered(b, event_body("participant_left", lk, identity=f"user-{owner.id}",
                                  sid="PA_1", name="Owner"))
    resp = await a.post(f"/rooms/{room['id']}/join", headers=other.auth)
    assert resp.status == 200


async def test_participants_expire_when_livekit_goes_quiet(pair):
    a, _ = pair
    _, room = await new_room(a)
    await delivered(a, event_body("participant_joined", room["livekit_room"],
                                  identity="user-1", sid="PA_1", name="Ada"))
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        prefix = a.server.app[CONFIG_KEY].redis_prefix
        ttl = await client.ttl(f"{prefix}:room:{room['id']}:participants")
        assert 12 * 3600 - 60 < ttl <= 12 * 3600
    finally:
        await client.aclose()


# --- forgeries and malformed deliveries ------------------------------------------------

async def test_forged_stale_or_tampered_webhooks_are_refused_and_change_nothing(
        pair, api_error):
    a, b = pair
    _, room = await new_room(a)
    lk = room["livekit_room"]

    def joined_now(**extra: Any) -> str:
        return event_body("participant_joined", lk, identity="user-9", sid="PA_9",
                          name="Mallory", **extra)

    body = joined_now()
    other = joined_now(event_id="EV_other")
    refusals = [
        (body, {"authorization": None}),
        (body, {"authorization": ""}),
        (body, {"authorization": "not-a-jwt"}),
        (body, {"key": "another-key"}),
        (body, {"secret": "another-secret-" + "y" * 24}),
        # A valid signature, of another body.
        (body, {"authorization": sign(other)}),
        (body, {"authorization": sign(body.replace("Mallory", "Mallorz"))}),
        # The token has expired (LiveKit's last 5 minutes; leeway 1 minute).
        (body, {"ttl": datetime.timedelta(minutes=-2)}),
        # Fresh signature, old event: a replay.
        (joined_now(at=time.time() - 11 * 60), {}),
        # Signed without the body's hash.
        (body, {"authorization": api.AccessToken(KEY, SECRET).to_jwt()}),
        # An unsigned token ("alg": "none").
        (body, {"authorization": _unsigned(body)}),
    ]
    for payload, signing in refusals:
        resp = await deliver(b, payload, **signing)
        await api_error(resp, 401, "invalid_webhook")
    # A body changed after signing.
    token = sign(body)
    tampered = body.replace("user-9", "user-8")
    assert tampered != body
    await api_error(await deliver(a, tampered, authorization=token), 401, "invalid_webhook")
    # Not UTF-8, not JSON, not an event: refused too.
    for garbage in (b"\xff\xfe{}", b"{", b"[]", b'{"event": 5}', b"{}", b""):
        await api_error(await deliver(a, garbage), 401, "invalid_webhook")
    assert await identities(a, room["id"]) == []
    assert events_recorded(a) == 0 and sessions(a, room["id"]) == []
    # The genuine one, with the header as `Bearer ...` too, is taken.
    await delivered(a, body, authorization=f"Bearer {sign(body)}")
    assert await identities(b, room["id"]) == ["user-9"]


def _unsigned(body: str) -> str:
    import jwt

    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return jwt.encode({"iss": KEY, "sub": "", "exp": int(time.time()) + 300, "sha256": digest},
                      key=None, algorithm="none")


async def test_an_oversized_body_is_413(pair, api_error):
    a, _ = pair
    big = "{" + " " * (64 * 1024) + "}"
    await api_error(await deliver(a, big), 413, "payload_too_large")


async def test_events_of_rooms_not_ours_and_other_kinds_are_taken_and_ignored(pair):
    a, _ = pair
    _, room = await new_room(a)
    await delivered(a, event_body("participant_joined", "someone-elses-room",
                                  identity="user-1", sid="PA_1", name="Ada"))
    await delivered(a, event_body("track_published", room["livekit_room"],
                                  identity="user-1", sid="PA_1", name="Ada"))
    await delivered(a, event_body("egress_started", room["livekit_room"]))
    assert events_recorded(a) == 0
    assert await identities(a, room["id"]) == []


async def test_a_redis_outage_leaves_the_event_to_livekits_retry(make_config, aiohttp_client,
                                                                 tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        client = await aiohttp_client(create_app(make_config(redis_url=server.url,
                                                             **SETTINGS)))
        _, room = await new_room(client)
        body = event_body("participant_joined", room["livekit_room"], identity="user-1",
                          sid="PA_1", name="Ada")
        server.stop()
        resp = await deliver(client, body)
        assert resp.status == 503
        assert events_recorded(client) == 0
        server.start()
        # LiveKit retries the same event: it is applied now, not taken for a duplicate.
        for _ in range(50):
            resp = await deliver(client, body)
            if resp.status == 200:
                break
            await asyncio.sleep(0.1)
        assert resp.status == 200, await resp.text()
        assert await identities(client, room["id"]) == ["user-1"]
        assert events_recorded(client) == 1
    finally:
        server.stop()
