"""Live viewer counts over real WebSockets, shared through real Redis.

Active viewers are distinct viewers: sockets that must count apart carry
different User-Agents (`agent(i)`) or different accounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.core.config import Config
from server.viewing.presence import (
    DELETED,
    PRESENCE_KEY,
    TICK,
    TOO_MANY,
    Connection,
    state_text,
    text_frame,
)

from .conftest import REDIS_URL, fake_mp4, new_user_token, upload, upload_ready
from .outages import own_redis  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


async def new_video(client: TestClient) -> int:
    token = await new_user_token(client)
    return (await upload_ready(client, token, fake_mp4(4096)))["id"]


async def next_state(ws: aiohttp.ClientWebSocketResponse,
                     want: Callable[[dict[str, Any]], bool] = lambda _: True,
                     within: float = 5.0) -> dict[str, Any]:
    """The first state message satisfying `want`, skipping older ones."""
    async with asyncio.timeout(within):
        while True:
            msg = await ws.receive()
            assert msg.type is WSMsgType.TEXT, msg
            state = json.loads(msg.data)
            if want(state):
                return state


def viewers(n: int) -> Callable[[dict[str, Any]], bool]:
    return lambda state: state["active_viewers"] == n


def agent(i: int) -> dict[str, str]:
    """Headers of viewer number `i`: same address as every other, its own browser."""
    return {"User-Agent": f"Mozilla/5.0 (X11; Linux x86_64) Firefox/{100 + i}.0"}


async def test_connect_gets_counts_and_changes(client):
    video_id = await new_video(client)
    path = f"/videos/{video_id}/active-viewers"
    first = await client.ws_connect(path, headers=agent(1))
    assert await next_state(first) == {"video_id": video_id, "active_viewers": 1, "views": 0}

    second = await client.ws_connect(path, headers=agent(2))
    assert (await next_state(second))["active_viewers"] == 2
    assert (await next_state(first, viewers(2)))["active_viewers"] == 2

    await second.close()
    assert await next_state(first, viewers(1)) == \
        {"video_id": video_id, "active_viewers": 1, "views": 0}
    await first.close()


async def test_counts_are_per_video(client):
    one, two = await new_video(client), await new_video(client)
    a = await client.ws_connect(f"/videos/{one}/active-viewers")
    b = await client.ws_connect(f"/videos/{two}/active-viewers", headers=agent(1))
    c = await client.ws_connect(f"/videos/{two}/active-viewers", headers=agent(2))
    # A socket is counted once its join is done, just after the handshake: c may see
    # itself alone before b's join lands.
    assert (await next_state(c, viewers(2)))["video_id"] == two
    assert (await next_state(b, viewers(2)))["video_id"] == two
    assert await next_state(a) == {"video_id": one, "active_viewers": 1, "views": 0}
    for ws in (a, b, c):
        await ws.close()


async def test_unknown_video_is_404_before_upgrade(client, api_error):
    for path in ("/videos/999999/active-viewers", "/videos/abc/active-viewers"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect(path)
        assert info.value.status == 404
        await api_error(await client.get(path, headers=upgrade_headers()), 404, "not_found")


async def test_plain_get_asks_for_an_upgrade(client, api_error):
    video_id = await new_video(client)
    resp = await client.get(f"/videos/{video_id}/active-viewers")
    await api_error(resp, 426, "upgrade_required")
    assert resp.headers["Upgrade"] == "websocket"


def upgrade_headers(**extra: str) -> dict[str, str]:
    return {"Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            **extra}


async def test_origin_is_checked(aiohttp_client, make_config, api_error):
    client = await aiohttp_client(create_app(make_config(
        allowed_origins=("https://app.example",))))
    video_id = await new_video(client)
    path = f"/videos/{video_id}/active-viewers"
    own = f"http://{client.host}:{client.port}"

    for origin in ("https://evil.example", "null", f"http://{client.host}:1"):
        resp = await client.get(path, headers=upgrade_headers(Origin=origin))
        await api_error(resp, 403, "origin_not_allowed")
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect(path, origin=origin)
        assert info.value.status == 403

    for origin in (own, "https://app.example", None):
        ws = await client.ws_connect(path, origin=origin)
        assert (await next_state(ws))["video_id"] == video_id
        await ws.close()


async def test_a_forwarded_https_origin_is_believed_only_from_a_trusted_proxy(
        aiohttp_client, make_config, api_error):
    import ipaddress

    client = await aiohttp_client(create_app(make_config(
        trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))))
    video_id = await new_video(client)
    path = f"/videos/{video_id}/active-viewers"
    origin = f"https://{client.host}:{client.port}"
    ws = await client.ws_connect(path, origin=origin,
                                 headers={"X-Forwarded-Proto": "https"})
    assert (await next_state(ws))["active_viewers"] == 1
    await ws.close()
    resp = await client.get(path, headers=upgrade_headers(Origin=origin))
    await api_error(resp, 403, "origin_not_allowed")


async def test_bad_messages_get_an_error_and_the_socket_stays(client):
    video_id = await new_video(client)
    ws = await client.ws_connect(f"/videos/{video_id}/active-viewers")
    await next_state(ws)
    for bad in ("not json", "[1]", json.dumps({"type": "dance"}),
                json.dumps({"type": "progress", "position": "x", "playing": True})):
        await ws.send_str(bad)
        reply = json.loads((await ws.receive(timeout=5)).data)
        assert set(reply) == {"error"} and reply["error"]["code"] == "bad_message"
    for token in ("nope", "\ud800", "\u00e9"):  # a lone surrogate must not reach PyJWT
        await ws.send_str(json.dumps({"type": "auth", "token": token}))
        reply = json.loads((await ws.receive(timeout=5)).data)
        assert reply["error"]["code"] == "invalid_token"
    assert not ws.closed
    await ws.close()


async def closed_frame(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    """The message that ends the socket, skipping state messages still in flight."""
    async with asyncio.timeout(5):
        while True:
            msg = await ws.receive()
            if msg.type not in (WSMsgType.TEXT, WSMsgType.PING):
                return msg


async def test_two_instances_on_one_redis_report_the_same_count(instance, http):
    one, two = await instance(), await instance()
    video_id = await new_video(one)
    path = f"/videos/{video_id}/active-viewers"

    a = await http.ws_connect(one.make_url(path), headers=agent(1))
    assert (await next_state(a))["active_viewers"] == 1
    b = await http.ws_connect(two.make_url(path), headers=agent(2))
    assert (await next_state(b))["active_viewers"] == 2
    assert (await next_state(a, viewers(2)))["active_viewers"] == 2

    await b.close()
    assert (await next_state(a, viewers(1)))["active_viewers"] == 1

    c = await http.ws_connect(two.make_url(path), headers=agent(3))
    assert (await next_state(c))["active_viewers"] == 2
    assert (await next_state(a, viewers(2)))["active_viewers"] == 2
    for ws in (a, c):
        await ws.close()


async def test_graceful_shutdown_says_goodbye(instance, http):
    """Stopping an instance closes its sockets (1001) and its viewers leave at once."""
    # A long TTL: only the goodbye, not expiry, can bring the count down in time.
    one, two = await instance(presence_ttl=600), await instance(presence_ttl=600)
    video_id = await new_video(one)
    path = f"/videos/{video_id}/active-viewers"
    a = await http.ws_connect(one.make_url(path), headers=agent(1))
    b = await http.ws_connect(two.make_url(path), headers=agent(2))
    c = await http.ws_connect(two.make_url(path), headers=agent(3))
    assert (await next_state(a, viewers(3)))["active_viewers"] == 3

    await two.close()
    for gone in (b, c):
        closed = await closed_frame(gone)
        assert closed.type is WSMsgType.CLOSE and closed.data == 1001
    assert (await next_state(a, viewers(1), within=5))["active_viewers"] == 1
    await a.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def server_process(config: Config, **env: str) -> AsyncIterator[tuple[Any, str]]:
    """`python -m server` in its own process, on the test database and Redis prefix."""
    port = _free_port()
    environ = {
        **os.environ,
        "HOST": "127.0.0.1", "PORT": str(port), "DATABASE_URL": config.database_url,
        "REDIS_URL": REDIS_URL, "REDIS_PREFIX": config.redis_prefix,
        "STORAGE_DIR": str(config.storage_dir), "JWT_SECRET": config.jwt_secret,
        "BCRYPT_ROUNDS": "4", "ACCESS_LOG": "0", "LOG_LEVEL": "WARNING", **env,
    }
    log_path = config.storage_dir.parent / f"server-{port}.log"
    with open(log_path, "wb") as log_file:  # noqa: ASYNC230 (a local file, opened once)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", cwd=ROOT, env=environ,
            stdout=log_file, stderr=log_file,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(base + "/healthz") as resp:
                        if resp.status == 200:
                            break
                if proc.returncode is not None:
                    raise AssertionError(log_path.read_text())
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the server process did not start")
        yield proc, base
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_viewers_of_a_killed_instance_age_out(make_config, instance, http):
    """SIGKILL gives no goodbye: the dead process's members expire after PRESENCE_TTL."""
    ttl = 3.0
    local = await instance(presence_ttl=ttl)
    video_id = await new_video(local)
    path = f"/videos/{video_id}/active-viewers"
    async with server_process(make_config(), PRESENCE_TTL=str(ttl)) as (proc, base):
        doomed = await http.ws_connect(base + path, headers=agent(1))
        assert (await next_state(doomed))["active_viewers"] == 1
        watcher = await http.ws_connect(local.make_url(path), headers=agent(2))
        assert (await next_state(watcher))["active_viewers"] == 2
        # Longer than the TTL: the live process's heartbeats keep its viewer.
        await asyncio.sleep(ttl * 1.5)
        late = await http.ws_connect(local.make_url(path), headers=agent(3))
        assert (await next_state(late))["active_viewers"] == 3
        await late.close()

        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        # Gone within PRESENCE_TTL, plus the once-a-second re-read, plus slack.
        state = await next_state(watcher, viewers(1), within=ttl + 1 + 3)
        assert state == {"video_id": video_id, "active_viewers": 1, "views": 0}
        await doomed.close()
        await watcher.close()


async def test_a_client_that_stops_answering_pings_is_dropped(aiohttp_client, make_config):
    heartbeat = 0.5
    client = await aiohttp_client(create_app(make_config(heartbeat=heartbeat)))
    video_id = await new_video(client)
    path = f"/videos/{video_id}/active-viewers"
    watcher = await client.ws_connect(path, headers=agent(1))
    assert (await next_state(watcher))["active_viewers"] == 1

    # No automatic pong and nothing read: to the server this client is dead.
    async with aiohttp.ClientSession() as http:
        silent = await http.ws_connect(client.make_url(path), autoping=False,
                                       heartbeat=None, headers=agent(2))
        assert (await next_state(watcher, viewers(2)))["active_viewers"] == 2
        # aiohttp pings after `heartbeat` idle seconds and gives up heartbeat/2 later.
        await next_state(watcher, viewers(1), within=heartbeat * 1.5 + 3)
        closed = await closed_frame(silent)
        assert closed.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
    # The answering client (it reads, so it pongs) is pinged just the same and stays.
    with contextlib.suppress(TimeoutError):
        await next_state(watcher, lambda _: False, within=heartbeat * 4)
    late = await client.ws_connect(path, headers=agent(3))
    assert (await next_state(late))["active_viewers"] == 2
    await late.close()
    await watcher.close()


async def test_a_burst_of_joins_is_coalesced(aiohttp_client, make_config, http):
    joiners = 150
    client = await aiohttp_client(create_app(make_config(
        presence_max_per_address=joiners + 1)))
    video_id = await new_video(client)
    path = f"/videos/{video_id}/active-viewers"
    broadcaster = client.server.app[PRESENCE_KEY].broadcaster
    observer = await client.ws_connect(path, headers=agent(0))
    assert (await next_state(observer))["active_viewers"] == 1

    loop = asyncio.get_running_loop()
    sent_before = broadcaster.messages_sent
    started = loop.time()
    sockets = await asyncio.gather(*(http.ws_connect(client.make_url(path), headers=agent(i))
                                     for i in range(1, joiners + 1)))
    seen = []
    async with asyncio.timeout(10):
        while not seen or seen[-1] != joiners + 1:
            seen.append((await next_state(observer))["active_viewers"])
    elapsed = loop.time() - started
    sent = broadcaster.messages_sent - sent_before

    # Without coalescing every join would reach every socket: ~joiners^2 / 2 sends.
    ticks = elapsed / TICK + 2
    assert len(seen) <= ticks
    assert sent <= joiners + (joiners + 1) * ticks
    assert sent < joiners * joiners / 4
    assert seen == sorted(seen)
    # Every socket converges on the same final count.
    for ws in sockets[:10] + sockets[-10:]:
        assert (await next_state(ws, viewers(joiners + 1)))["active_viewers"] == joiners + 1
    await asyncio.gather(*(ws.close() for ws in sockets))
    assert (await next_state(observer, viewers(1)))["active_viewers"] == 1
    await observer.close()


async def test_server_shutdown_closes_sockets_and_clears_redis(instance, http, redis_prefix):
    import redis.asyncio as aioredis

    api = await instance(presence_ttl=600)
    video_id = await new_video(api)
    path = f"/videos/{video_id}/active-viewers"
    sockets = [await http.ws_connect(api.make_url(path), headers=agent(i)) for i in (1, 1, 2)]
    for ws in sockets:
        await next_state(ws)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        key = f"{redis_prefix}:presence:{video_id}"
        assert await client.zcard(key) == 2  # one member per viewer
        assert await client.hlen(f"{key}:viewers") == 2
        [address_key] = [k async for k in client.scan_iter(f"{redis_prefix}:presence:address:*")]
        assert await client.zcard(address_key) == 3  # one place per socket
        await api.close()
        for ws in sockets:
            closed = await closed_frame(ws)
            assert closed.type is WSMsgType.CLOSE and closed.data == 1001
        assert await client.zcard(key) == 0
        assert await client.hlen(f"{key}:viewers") == 0
        assert await client.zcard(address_key) == 0
    finally:
        await client.aclose()


async def test_count_recovers_after_redis_forgets(client):
    """Heartbeats re-add members, so a flushed Redis heals within a beat."""
    import redis.asyncio as aioredis

    video_id = await new_video(client)
    hub = client.server.app[PRESENCE_KEY]
    ws = await client.ws_connect(f"/videos/{video_id}/active-viewers")
    await next_state(ws)
    redis_client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await redis_client.delete(hub.store.set_key(video_id))
        assert (await next_state(ws, viewers(0)))["active_viewers"] == 0
        await hub.refresh_members()
        assert (await next_state(ws, viewers(1)))["active_viewers"] == 1
    finally:
        await redis_client.aclose()
    await ws.close()


def test_default_heartbeat_drops_a_dead_client_within_a_minute():
    config = Config()
    # aiohttp pings after `heartbeat` idle seconds and closes heartbeat/2 later,
    # rounding timeouts over 5 s up to the next second.
    assert config.heartbeat * 1.5 + 1 < 60
    # A SIGKILLed instance's viewers expire after at most PRESENCE_TTL.
    assert config.presence_ttl + 1 < 60



@pytest.mark.parametrize("size, header", [
    (0, b"\x81\x00"),
    (125, b"\x81\x7d"),
    (126, b"\x81\x7e\x00\x7e"),
    (65535, b"\x81\x7e\xff\xff"),
    (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
])
def test_text_frame(size, header):
    frame = text_frame("x" * size)
    assert frame == header + b"x" * size


async def test_a_backed_up_socket_is_skipped_not_waited_for():
    """A client that stops reading is passed over; writing to it never blocks."""
    # A listening socket that never accepts: the kernel completes the connection
    # and then nothing reads from it.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(asyncio.Protocol,
                                                    *listener.getsockname())
        try:
            conn = Connection(1, web.WebSocketResponse(), transport, viewer="a1", address="x")
            first = state_text(1, 1, 0)
            assert conn.deliver(first, text_frame(first))
            assert conn.sent == first
            transport.write(b"\0" * (64 * 1024 * 1024))  # far more than the kernel takes
            assert transport.get_write_buffer_size() > 0
            second = state_text(1, 2, 0)
            assert not conn.deliver(second, text_frame(second))
            assert conn.sent == first
        finally:
            transport.abort()


async def test_counts_for_a_list_of_videos(instance, http):
    one, two = await instance(), await instance()
    first, second, unwatched = (await new_video(one), await new_video(one),
                                await new_video(one))
    sockets = [await http.ws_connect(one.make_url(f"/videos/{first}/active-viewers"),
                                     headers=agent(1)),
               await http.ws_connect(two.make_url(f"/videos/{first}/active-viewers"),
                                     headers=agent(2)),
               await http.ws_connect(two.make_url(f"/videos/{second}/active-viewers"),
                                     headers=agent(1))]
    for ws in sockets:
        await next_state(ws)
    hub = one.server.app[PRESENCE_KEY]
    assert await hub.counts([first, second, unwatched]) == {first: 2, second: 1, unwatched: 0}
    for ws in sockets:
        await ws.close()


# --- distinct viewers ----------------------------------------------------------

async def redis_count(redis_prefix: str, pattern: str, want: int) -> None:
    """Wait until the sorted sets under `pattern` hold `want` members in all."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with asyncio.timeout(5):
            while True:
                total = 0
                async for key in client.scan_iter(f"{redis_prefix}:{pattern}"):
                    if await client.type(key) == b"zset":
                        total += await client.zcard(key)
                if total == want:
                    return
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def test_tabs_of_one_viewer_count_once(client, redis_prefix):
    """Fault 8: 2,000 sockets from one address were 2,001 watching. Five tabs of
    one browser are one viewer, until the last of them closes."""
    video_id = await new_video(client)
    path = f"/videos/{video_id}/active-viewers"
    hub = client.server.app[PRESENCE_KEY]
    observer = await client.ws_connect(path, headers=agent(0))
    assert (await next_state(observer))["active_viewers"] == 1
    tabs = [await client.ws_connect(path, headers=agent(1)) for _ in range(5)]
    for ws in tabs:
        assert (await next_state(ws))["active_viewers"] == 2
    assert (await next_state(observer, viewers(2)))["active_viewers"] == 2
    assert await hub.counts([video_id]) == {video_id: 2}

    for ws in tabs[:4]:
        await ws.close()
    # The four have left (their places are free) and the viewer is still there.
    await redis_count(redis_prefix, "presence:address:*", 2)
    assert await hub.counts([video_id]) == {video_id: 2}
    await tabs[4].close()
    assert (await next_state(observer, viewers(1)))["active_viewers"] == 1
    await observer.close()


async def test_one_viewer_on_two_instances_counts_once(instance, http, redis_prefix):
    one, two = await instance(), await instance()
    video_id = await new_video(one)
    path = f"/videos/{video_id}/active-viewers"
    observer = await http.ws_connect(one.make_url(path), headers=agent(0))
    here = await http.ws_connect(one.make_url(path), headers=agent(1))
    there = await http.ws_connect(two.make_url(path), headers=agent(1))
    assert (await next_state(there))["active_viewers"] == 2
    assert (await next_state(observer, viewers(2)))["active_viewers"] == 2
    assert await one.server.app[PRESENCE_KEY].counts([video_id]) == {video_id: 2}

    await here.close()
    await redis_count(redis_prefix, f"presence:{video_id}", 2)
    assert await one.server.app[PRESENCE_KEY].counts([video_id]) == {video_id: 2}
    await there.close()
    assert (await next_state(observer, viewers(1)))["active_viewers"] == 1
    await observer.close()


async def test_signed_in_viewers_are_their_accounts(client):
    """Two accounts in one browser are two viewers; one account in two browsers is one."""
    video_id = await new_video(client)
    path = f"/videos/{video_id}/active-viewers"
    first, second = await new_user_token(client), await new_user_token(client)
    a = await client.ws_connect(path, headers={**agent(1), "Authorization": f"Bearer {first}"})
    assert (await next_state(a))["active_viewers"] == 1
    b = await client.ws_connect(path, headers={**agent(1), "Authorization": f"Bearer {second}"})
    assert (await next_state(b))["active_viewers"] == 2
    c = await client.ws_connect(path, headers={**agent(2), "Authorization": f"Bearer {first}"})
    assert (await next_state(c))["active_viewers"] == 2
    for ws in (a, b, c):
        await ws.close()


async def test_signing_in_on_the_socket_moves_the_viewer(client):
    """After an `auth` message the socket counts as its account, not as its browser."""
    video_id = await new_video(client)
    path = f"/videos/{video_id}/active-viewers"
    first, second = await new_user_token(client), await new_user_token(client)
    observer = await client.ws_connect(path, headers=agent(0))
    a = await client.ws_connect(path, headers=agent(1))
    b = await client.ws_connect(path, headers=agent(1))
    assert (await next_state(b))["active_viewers"] == 2  # the observer and one browser

    await a.send_json({"type": "auth", "token": first})
    # The browser (still open in b) and the account (a).
    assert (await next_state(observer, viewers(3)))["active_viewers"] == 3
    await b.send_json({"type": "auth", "token": first})
    # Both tabs are the account now; the anonymous browser is gone.
    assert (await next_state(observer, viewers(2)))["active_viewers"] == 2
    await b.send_json({"type": "auth", "token": second})
    assert (await next_state(observer, viewers(3)))["active_viewers"] == 3
    await a.close()
    assert (await next_state(observer, viewers(2)))["active_viewers"] == 2
    await b.close()
    assert (await next_state(observer, viewers(1)))["active_viewers"] == 1
    await observer.close()


# --- sockets per address ---------------------------------------------------------

async def refused(ws: aiohttp.ClientWebSocketResponse) -> bool:
    """Whether the server closed the socket for its address's cap, before any state."""
    msg = await ws.receive(timeout=5)
    if msg.type is WSMsgType.TEXT:
        return False
    assert msg.type is WSMsgType.CLOSE, msg
    assert (msg.data, msg.extra) == (TOO_MANY, "too many connections from this address")
    return True


async def accepted_soon(connect: Callable[[], Any]) -> aiohttp.ClientWebSocketResponse:
    """A socket opened once a place is free; the place frees as the server sees a close."""
    async with asyncio.timeout(5):
        while True:
            ws = await connect()
            if not await refused(ws):
                return ws
            await asyncio.sleep(0.05)


async def test_sockets_per_address_are_capped(aiohttp_client, make_config):
    client = await aiohttp_client(create_app(make_config(presence_max_per_address=3)))
    video_id, other_video = await new_video(client), await new_video(client)
    path = f"/videos/{video_id}/active-viewers"
    hub = client.server.app[PRESENCE_KEY]
    held = [await client.ws_connect(path, headers=agent(i)) for i in range(3)]
    for ws in held:
        await next_state(ws)

    assert await refused(await client.ws_connect(path, headers=agent(3)))
    # The cap is per address, whatever the video.
    assert await refused(await client.ws_connect(f"/videos/{other_video}/active-viewers",
                                                 headers=agent(4)))
    assert await hub.counts([video_id, other_video]) == {video_id: 3, other_video: 0}

    await held[0].close()
    late = await accepted_soon(lambda: client.ws_connect(path, headers=agent(5)))
    assert await hub.counts([video_id]) == {video_id: 3}
    for ws in (*held[1:], late):
        await ws.close()


async def test_the_cap_holds_across_instances(instance, http):
    one, two = await instance(presence_max_per_address=3), \
        await instance(presence_max_per_address=3)
    video_id = await new_video(one)
    path = f"/videos/{video_id}/active-viewers"
    held = [await http.ws_connect(one.make_url(path), headers=agent(1)),
            await http.ws_connect(one.make_url(path), headers=agent(2)),
            await http.ws_connect(two.make_url(path), headers=agent(3))]
    for ws in held:
        await next_state(ws)
    assert await refused(await http.ws_connect(two.make_url(path), headers=agent(4)))
    assert await refused(await http.ws_connect(one.make_url(path), headers=agent(5)))

    await held[2].close()  # a place on `two` frees one on `one`
    late = await accepted_soon(lambda: http.ws_connect(one.make_url(path), headers=agent(6)))
    assert (await next_state(held[0], viewers(3)))["active_viewers"] == 3
    for ws in (held[0], held[1], late):
        await ws.close()


# --- deleted videos ----------------------------------------------------------------

async def test_deleting_a_video_closes_its_sockets_everywhere(instance, http, redis_prefix):
    one, two = await instance(), await instance()
    token = await new_user_token(one)
    ids = []
    for _ in range(2):
        resp = await upload(one, token, fake_mp4(4096))
        assert resp.status == 201, await resp.text()
        ids.append((await resp.json())["id"])
    doomed, kept = ids
    path = f"/videos/{doomed}/active-viewers"
    sockets = [await http.ws_connect(one.make_url(path), headers=agent(1)),
               await http.ws_connect(two.make_url(path), headers=agent(2)),
               await http.ws_connect(two.make_url(path), headers=agent(3))]
    bystander = await http.ws_connect(two.make_url(f"/videos/{kept}/active-viewers"))
    for ws in (*sockets, bystander):
        await next_state(ws)

    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await one.delete(f"/videos/{doomed}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 204
    for ws in sockets:
        closed = await closed_frame(ws)
        assert (closed.type, closed.data, closed.extra) == \
            (WSMsgType.CLOSE, DELETED, "video deleted")
    assert loop.time() - started < 2.5
    await redis_count(redis_prefix, f"presence:{doomed}", 0)
    # Sockets on other videos stay, and keep hearing.
    assert not bystander.closed
    await bystander.send_str("not json")
    assert json.loads((await bystander.receive(timeout=5)).data)["error"]["code"] == \
        "bad_message"
    await bystander.close()


# --- Redis outage ------------------------------------------------------------------

async def test_a_redis_outage_refuses_joins_with_1013_and_heals(aiohttp_client, make_config,
                                                                own_redis):
    client = await aiohttp_client(create_app(make_config(redis_url=own_redis.url,
                                                         presence_ttl=3.0)))
    video_id = await new_video(client)
    path = f"/videos/{video_id}/active-viewers"
    watcher = await client.ws_connect(path, headers=agent(1))
    assert (await next_state(watcher))["active_viewers"] == 1

    own_redis.stop()
    ws = await client.ws_connect(path, headers=agent(2))
    closed = await closed_frame(ws)
    assert (closed.type, closed.data) == (WSMsgType.CLOSE, 1013)
    assert not watcher.closed

    own_redis.start()  # empty, as after a crash
    async with asyncio.timeout(15):
        while True:
            late = await client.ws_connect(path, headers=agent(3))
            msg = await late.receive()
            if msg.type is WSMsgType.TEXT:
                break
            await asyncio.sleep(0.2)
    # The heartbeat (every PRESENCE_TTL/3) puts the watcher back beside the newcomer.
    assert (await next_state(watcher, viewers(2), within=10))["active_viewers"] == 2
    await late.close()
    await watcher.close()


async def test_the_count_survives_redis_losing_the_tally(client):
    """The per-viewer tally beside each video's set is rebuilt if lost on its own."""
    import redis.asyncio as aioredis

    video_id = await new_video(client)
    path = f"/videos/{video_id}/active-viewers"
    hub = client.server.app[PRESENCE_KEY]
    observer = await client.ws_connect(path, headers=agent(0))
    tabs = [await client.ws_connect(path, headers=agent(1)) for _ in range(2)]
    for ws in tabs:
        assert (await next_state(ws))["active_viewers"] == 2
    assert (await next_state(observer, viewers(2)))["active_viewers"] == 2
    redis_client = aioredis.Redis.from_url(REDIS_URL)
    try:
        assert await redis_client.delete(hub.store.tally_key(video_id)) == 1
    finally:
        await redis_client.aclose()
    assert await hub.counts([video_id]) == {video_id: 2}
    for ws in tabs:
        await ws.close()
    assert (await next_state(observer, viewers(1)))["active_viewers"] == 1
    await observer.close()
