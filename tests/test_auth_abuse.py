"""Login floods and brute force, over real sockets against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg2
from aiohttp import FormData
from aiohttp.test_utils import TestClient

from server.app import create_app

from .conftest import fake_mp4, new_user_token, register, upload
from .outages import own_redis  # noqa: F401

PASSWORD = "correct horse battery"
LOCAL_PROXY = (ipaddress.ip_network("127.0.0.0/8"),)


def from_address(address: str) -> dict[str, str]:
    """Headers making a request come from `address` (the test client is a trusted proxy)."""
    return {"X-Forwarded-For": address}


async def attempt(client: TestClient, email: str, password: str = "wrong password",
                  address: str | None = None) -> Any:
    headers = from_address(address) if address else {}
    return await client.post("/auth/login", json={"email": email, "password": password},
                             headers=headers)


async def status_of(client: TestClient, email: str, password: str = "wrong password",
                    address: str | None = None) -> int:
    resp = await attempt(client, email, password, address)
    await resp.read()
    return resp.status


def retry_after(resp: Any, window: int) -> int:
    value = int(resp.headers["Retry-After"])
    assert 1 <= value <= window, value
    return value


async def timed(request: Callable[[], Awaitable[Any]], expected: int) -> float:
    started = time.perf_counter()
    resp = await asyncio.wait_for(request(), 20)
    assert resp.status == expected, await resp.text()
    await resp.read()
    return time.perf_counter() - started


async def upload_large(client: TestClient, token: str, size: int) -> Any:
    form = FormData()
    form.add_field("title", "During the flood")
    form.add_field("file", io.BytesIO(fake_mp4(size, 2)), filename="big.mp4")
    return await client.post("/videos/upload", data=form,
                             headers={"Authorization": f"Bearer {token}"})


# --- a flood of slow password checks ----------------------------------------

async def test_login_flood_does_not_stall_other_requests(aiohttp_client, make_config):
    """64 wrong-password logins at a real bcrypt cost, while others read, check health and upload.

    A login once held a pooled connection through bcrypt, and bcrypt shared the default
    executor with the uploads' file work: the pool ran dry and everything queued behind
    the flood.
    """
    config = make_config(bcrypt_rounds=12, db_pool_size=4, auth_rate_limit=10_000,
                         login_daily_limit=10_000, bcrypt_max_waiting=1000)
    client = await aiohttp_client(create_app(config))
    token = await new_user_token(client)
    resp = await upload(client, token, fake_mp4(64 * 1024))
    assert resp.status == 201, await resp.text()
    video_id = (await resp.json())["id"]

    started = time.perf_counter()
    flood = [asyncio.create_task(status_of(client, "victim@example.com", f"wrong {i}"))
             for i in range(64)]
    try:
        await asyncio.sleep(0.5)  # every login has arrived and waits for bcrypt
        probes = []
        for _ in range(3):
            probes.append(await timed(lambda: client.get(f"/videos/{video_id}"), 200))
            probes.append(await timed(lambda: client.get("/healthz"), 200))
        probes.append(await timed(lambda: upload_large(client, token, 4 * 1024 * 1024), 201))
        in_flight = sum(not task.done() for task in flood)
        statuses = await asyncio.gather(*flood)
        flood_seconds = time.perf_counter() - started
    finally:
        for task in flood:
            task.cancel()
    assert flood_seconds > 2.0, "bcrypt too fast here for the flood to prove anything"
    # The other requests were served while the flood still waited for bcrypt,
    # not after it: one slow probe would mean they had queued behind it.
    assert in_flight > 0, f"the other requests waited for the flood to end: {probes}"
    # Relative to the flood, not to a clock: a busy machine slows both alike.
    assert max(probes) < flood_seconds / 2, (probes, flood_seconds)
    assert statuses == [401] * 64


async def test_bcrypt_queue_is_bounded(aiohttp_client, make_config, api_error):
    """Past the queue bound a login is refused at once with 503, and is not counted."""
    config = make_config(bcrypt_rounds=12, bcrypt_concurrency=1, bcrypt_max_waiting=0,
                         auth_rate_limit=5, trusted_proxies=LOCAL_PROXY)
    client = await aiohttp_client(create_app(config))
    await register(client, "target@example.com")

    burst = await asyncio.gather(*(attempt(client, "target@example.com",
                                           address=f"198.51.100.{i}") for i in range(1, 6)))
    statuses = sorted(resp.status for resp in burst)
    assert statuses[0] == 401 and statuses[-1] == 503, statuses
    for resp in burst:
        if resp.status == 503:
            await api_error(resp, 503, "unavailable")
            assert int(resp.headers["Retry-After"]) >= 1
    counted = statuses.count(401)

    # Refused checks did not use up the account's attempts: the rest remain.
    for i in range(5 - counted):
        assert await status_of(client, "target@example.com",
                               address=f"203.0.113.{i + 1}") == 401
    resp = await attempt(client, "target@example.com", PASSWORD, address="203.0.113.99")
    await api_error(resp, 429, "rate_limited")


# --- rate limits ---------------------------------------------------------------

async def test_login_limited_per_address(aiohttp_client, make_config, api_error):
    config = make_config(auth_rate_limit=3, auth_rate_window=60, trusted_proxies=LOCAL_PROXY)
    client = await aiohttp_client(create_app(config))
    await register(client, "known@example.com")

    for i in range(3):
        assert await status_of(client, f"guess-{i}@example.com", address="192.0.2.7") == 401
    resp = await attempt(client, "guess-9@example.com", address="192.0.2.7")
    await api_error(resp, 429, "rate_limited")
    retry_after(resp, 60)
    # Every attempt from the address counts, the right password included.
    resp = await attempt(client, "known@example.com", PASSWORD, address="192.0.2.7")
    await api_error(resp, 429, "rate_limited")

    # Another address is not affected; addresses in one IPv6 /64 count as one.
    assert await status_of(client, "known@example.com", PASSWORD, address="192.0.2.8") == 200
    for i in range(3):
        assert await status_of(client, f"v6-{i}@example.com",
                               address=f"2001:db8:1:2::{i + 1}") == 401
    resp = await attempt(client, "v6-9@example.com", address="2001:db8:1:2:ffff::1")
    await api_error(resp, 429, "rate_limited")
    assert await status_of(client, "v6-9@example.com", address="2001:db8:1:3::1") == 401


async def test_address_read_from_every_forwarded_line(aiohttp_client, make_config, api_error):
    """A proxy that appends its own X-Forwarded-For line must not let the client pick
    its address with a line of its own in front."""
    config = make_config(auth_rate_limit=3, auth_rate_window=60, trusted_proxies=LOCAL_PROXY)
    client = await aiohttp_client(create_app(config))
    for i in range(4):
        headers = [("X-Forwarded-For", f"10.0.0.{i}"), ("X-Forwarded-For", "192.0.2.7")]
        resp = await client.post("/auth/login", headers=headers,
                                 json={"email": f"guess-{i}@example.com",
                                       "password": "wrong password"})
        if i < 3:
            assert resp.status == 401, await resp.text()
        else:
            await api_error(resp, 429, "rate_limited")


async def test_login_limited_per_account(aiohttp_client, make_config, api_error):
    """Failed logins count against the account from any address; successful ones do not."""
    config = make_config(auth_rate_limit=3, auth_rate_window=60, trusted_proxies=LOCAL_PROXY)
    client = await aiohttp_client(create_app(config))
    await register(client, "victim@example.com")
    await register(client, "regular@example.com")

    # Successful logins do not use up the account's attempts.
    for i in range(5):
        assert await status_of(client, "regular@example.com", PASSWORD,
                               address=f"198.51.100.{i + 1}") == 200

    spellings = ["victim@example.com", "Victim@Example.com", " VICTIM@example.com "]
    for i, email in enumerate(spellings):
        assert await status_of(client, email, address=f"203.0.113.{i + 1}") == 401
    # A fourth address: the account is locked for the window, right password or not.
    resp = await attempt(client, "victim@example.com", PASSWORD, address="203.0.113.50")
    await api_error(resp, 429, "rate_limited")
    retry_after(resp, 60)
    # Other accounts from the same addresses are not.
    assert await status_of(client, "regular@example.com", PASSWORD,
                           address="203.0.113.1") == 200
    # An email with no account is limited alike, so the limit does not reveal accounts.
    for i in range(3):
        assert await status_of(client, "ghost@example.com", address=f"192.0.2.{i + 1}") == 401
    resp = await attempt(client, "ghost@example.com", address="192.0.2.99")
    await api_error(resp, 429, "rate_limited")


async def test_register_limited_per_address(aiohttp_client, make_config, api_error,
                                            database_url):
    config = make_config(auth_rate_limit=2, auth_rate_window=60, trusted_proxies=LOCAL_PROXY)
    client = await aiohttp_client(create_app(config))

    async def sign_up(email: str, address: str) -> Any:
        return await client.post("/auth/register", json={"email": email, "password": PASSWORD},
                                 headers=from_address(address))

    for i in range(2):
        assert (await sign_up(f"new-{i}@example.com", "192.0.2.1")).status == 201
    resp = await sign_up("one-too-many@example.com", "192.0.2.1")
    await api_error(resp, 429, "rate_limited")
    retry_after(resp, 60)
    assert (await sign_up("elsewhere@example.com", "192.0.2.2")).status == 201

    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT email FROM users ORDER BY id")
            emails = [row[0] for row in cur.fetchall()]
    finally:
        conn.close()
    assert emails == ["new-0@example.com", "new-1@example.com", "elsewhere@example.com"]


async def test_retry_after_is_when_the_window_frees(aiohttp_client, make_config, api_error):
    config = make_config(auth_rate_limit=2, auth_rate_window=2)
    client = await aiohttp_client(create_app(config))
    assert await status_of(client, "someone@example.com") == 401
    assert await status_of(client, "someone@example.com") == 401
    resp = await attempt(client, "someone@example.com")
    await api_error(resp, 429, "rate_limited")
    wait = retry_after(resp, 2)
    await asyncio.sleep(wait + 0.05)
    assert await status_of(client, "someone@example.com") == 401


async def test_limits_are_shared_by_every_instance(instance, api_error):
    """Two processes behind one balancer: an attacker gains nothing by alternating."""
    settings = {"auth_rate_limit": 4, "trusted_proxies": LOCAL_PROXY}
    first = await instance(**settings)
    second = await instance(**settings)
    await register(first, "shared@example.com")

    # Per address: two attempts on each instance, the fifth refused on either.
    for client in (first, second, first, second):
        assert await status_of(client, "nobody@example.com", address="192.0.2.30") == 401
    for client in (first, second):
        resp = await attempt(client, "nobody@example.com", address="192.0.2.30")
        await api_error(resp, 429, "rate_limited")

    # Per account, from a new address each time.
    for i, client in enumerate((second, first, second, first)):
        assert await status_of(client, "shared@example.com", address=f"198.51.100.{i}") == 401
    for client in (first, second):
        resp = await attempt(client, "shared@example.com", PASSWORD, address="198.51.100.200")
        await api_error(resp, 429, "rate_limited")


async def test_redis_outage_fails_open(aiohttp_client, make_config, own_redis, caplog):  # noqa: F811
    """With Redis down, logins are not limited (one warning); when it is back, they are."""
    config = make_config(redis_url=own_redis.url, auth_rate_limit=2)
    client = await aiohttp_client(create_app(config))
    await register(client, "steady@example.com")

    own_redis.stop()
    with caplog.at_level(logging.INFO, logger="server.core.ratelimit"):
        for _ in range(4):
            assert await status_of(client, "steady@example.com") == 401
        assert await status_of(client, "steady@example.com", PASSWORD) == 200
        warnings = [r for r in caplog.records
                    if r.name == "server.core.ratelimit" and r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]

        own_redis.start()
        statuses = [await status_of(client, "steady@example.com") for _ in range(6)]
    # The first attempt may meet a stale connection; after that the limit holds.
    assert 429 in statuses and statuses[-1] == 429, statuses
