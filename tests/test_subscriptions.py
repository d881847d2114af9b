"""Subscriptions (exact subscriber counts, the paginated list) and blocks."""

from __future__ import annotations

import asyncio

import pytest

from server.core.config import RateSpec

from .conftest import query
from .social_support import ban, member, roomy_client


@pytest.fixture
async def client(aiohttp_client, make_config):
    return await roomy_client(aiohttp_client, make_config)


def subscriber_count(database_url, user_id):
    [(stored, real)] = query(database_url, """
        SELECT subscriber_count, (SELECT count(*) FROM subscriptions WHERE channel_id = u.id)
        FROM users u WHERE id = %s""", (user_id,))
    return stored, real


async def test_subscribe_and_unsubscribe(client, database_url):
    alice, bob = await member(client), await member(client)
    url = f"/users/{alice.id}/subscription"
    resp = await client.put(url, headers=bob.auth)
    assert resp.status == 200
    assert await resp.json() == {"subscribed": True, "subscriber_count": 1}
    # Idempotent both ways.
    assert await (await client.put(url, headers=bob.auth)).json() == {
        "subscribed": True, "subscriber_count": 1}
    assert await (await client.delete(url, headers=bob.auth)).json() == {
        "subscribed": False, "subscriber_count": 0}
    assert await (await client.delete(url, headers=bob.auth)).json() == {
        "subscribed": False, "subscriber_count": 0}
    assert subscriber_count(database_url, alice.id) == (0, 0)


async def test_bad_targets(client, database_url, api_error):
    alice, bob = await member(client), await member(client)
    await api_error(await client.put(f"/users/{alice.id}/subscription", headers=alice.auth),
                    422, "self_subscription")
    await api_error(await client.put(f"/users/{alice.id}/block", headers=alice.auth),
                    422, "self_block")
    for bad in ("me", "x", "0", "-3", "0012", "999999", "9" * 40):
        for method in ("PUT", "DELETE"):
            for path in ("subscription", "block"):
                resp = await client.request(method, f"/users/{bad}/{path}", headers=bob.auth)
                await api_error(resp, 404)
    await api_error(await client.put(f"/users/{alice.id}/subscription"), 401)
    await api_error(await client.put(f"/users/{alice.id}/block"), 401)
    await api_error(await client.get("/users/me/subscriptions"), 401)
    # A banned channel takes no new subscribers, but can be left.
    resp = await client.put(f"/users/{alice.id}/subscription", headers=bob.auth)
    assert resp.status == 200
    ban(database_url, alice.id)
    carol = await member(client)
    await api_error(await client.put(f"/users/{alice.id}/subscription", headers=carol.auth), 404)
    resp = await client.delete(f"/users/{alice.id}/subscription", headers=bob.auth)
    assert await resp.json() == {"subscribed": False, "subscriber_count": 0}


async def test_my_subscriptions_paginated(client, database_url, api_error):
    me = await member(client)
    channels = [await member(client, f"channel{i}") for i in range(5)]
    query(database_url, "UPDATE users SET avatar_key = 'avatars/x.jpg' WHERE id = %s",
          (channels[2].id,))
    for channel in channels:
        assert (await client.put(f"/users/{channel.id}/subscription",
                                 headers=me.auth)).status == 200
    # Another follower, so counts differ from 1 somewhere.
    other = await member(client)
    await client.put(f"/users/{channels[0].id}/subscription", headers=other.auth)
    seen, cursor = [], None
    while True:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        resp = await client.get("/users/me/subscriptions", params=params, headers=me.auth)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # Most recently followed first.
    assert [c["name"] for c in seen] == [f"channel{i}" for i in reversed(range(5))]
    by_name = {c["name"]: c for c in seen}
    assert by_name["channel2"]["avatar_url"] == f"/users/{channels[2].id}/avatar.jpg"
    assert by_name["channel1"]["avatar_url"] is None
    assert by_name["channel0"]["subscriber_count"] == 2
    assert set(seen[0]) == {"id", "name", "avatar_url", "subscriber_count", "subscribed_at"}
    for params in ({"cursor": "nope"}, {"cursor": "WyJ4IiwxXQ"}, {"limit": "-1"},
                   {"limit": "1000"}):
        await api_error(await client.get("/users/me/subscriptions", params=params,
                                         headers=me.auth), 422)


async def test_subscriber_count_exact_under_concurrency(client, database_url):
    channel = await member(client)
    fans = [await member(client) for _ in range(8)]
    url = f"/users/{channel.id}/subscription"

    async def flip(fan, times):
        for i in range(times):
            method = client.put if i % 2 == 0 else client.delete
            assert (await method(url, headers=fan.auth)).status == 200

    await asyncio.gather(*(flip(fan, 5 + i % 2) for i, fan in enumerate(fans)),
                         *(client.put(url, headers=fan.auth) for fan in fans[:3]))
    stored, real = subscriber_count(database_url, channel.id)
    assert stored == real


async def test_subscription_limit_is_shared_by_two_instances(aiohttp_client, make_config,
                                                             instance, api_error):
    limit = {"rate_limit_reaction": RateSpec(2, 60)}
    first = await roomy_client(aiohttp_client, make_config, **limit)
    second = await instance(**limit)
    alice, bob = await member(first), await member(first)
    url = f"/users/{alice.id}/subscription"
    assert (await first.put(url, headers=bob.auth)).status == 200
    assert (await second.delete(url, headers=bob.auth)).status == 200
    resp = await first.put(url, headers=bob.auth)
    await api_error(resp, 429, "rate_limited")
    assert "Retry-After" in resp.headers
