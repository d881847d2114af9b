"""Likes and dislikes: one per user per video, exact counts under concurrent toggling."""

from __future__ import annotations

import asyncio
import random

import pytest

from server.core.config import RateSpec
from server.social.rules import reaction_delta

from .conftest import query
from .social_support import ban, member, ready_video, roomy_client


@pytest.fixture
async def client(aiohttp_client, make_config):
    return await roomy_client(aiohttp_client, make_config)


def stored_counts(database_url, video_id):
    [(likes, dislikes)] = query(database_url, "SELECT like_count, dislike_count FROM videos"
                                " WHERE id = %s", (video_id,))
    [(real_likes, real_dislikes)] = query(database_url, """
        SELECT count(*) FILTER (WHERE kind = 'like'), count(*) FILTER (WHERE kind = 'dislike')
        FROM reactions WHERE video_id = %s""", (video_id,))
    return (likes, dislikes), (real_likes, real_dislikes)


@pytest.mark.parametrize("old, new, delta", [
    (None, "like", (1, 0)), (None, "dislike", (0, 1)), ("like", "dislike", (-1, 1)),
    ("dislike", "like", (1, -1)), ("like", None, (-1, 0)), ("dislike", None, (0, -1)),
    ("like", "like", (0, 0)), (None, None, (0, 0)),
])
def test_reaction_delta(old, new, delta):
    assert reaction_delta(old, new) == delta


async def test_like_switch_and_clear(client):
    alice, bob = await member(client), await member(client)
    video = await ready_video(client, alice)
    url = f"/videos/{video['id']}/reaction"
    resp = await client.put(url, json={"kind": "like"}, headers=bob.auth)
    assert resp.status == 200
    assert await resp.json() == {"like_count": 1, "dislike_count": 0, "my_reaction": "like"}
    # Idempotent.
    resp = await client.put(url, json={"kind": "like"}, headers=bob.auth)
    assert await resp.json() == {"like_count": 1, "dislike_count": 0, "my_reaction": "like"}
    resp = await client.put(url, json={"kind": "like"}, headers=alice.auth)
    assert (await resp.json())["like_count"] == 2
    resp = await client.put(url, json={"kind": "dislike"}, headers=bob.auth)
    assert await resp.json() == {"like_count": 1, "dislike_count": 1, "my_reaction": "dislike"}
    # The feed shows each viewer their own reaction.
    feed = await (await client.get("/feed/global", headers=bob.auth)).json()
    assert feed["items"][0]["my_reaction"] == "dislike"
    assert feed["items"][0]["like_count"] == 1 and feed["items"][0]["dislike_count"] == 1
    anonymous = await (await client.get("/feed/global")).json()
    assert anonymous["items"][0]["my_reaction"] is None
    resp = await client.delete(url, headers=bob.auth)
    assert await resp.json() == {"like_count": 1, "dislike_count": 0, "my_reaction": None}
    resp = await client.delete(url, headers=bob.auth)
    assert await resp.json() == {"like_count": 1, "dislike_count": 0, "my_reaction": None}
    meta = await (await client.get(f"/videos/{video['id']}")).json()
    assert meta["like_count"] == 1 and meta["dislike_count"] == 0


async def test_garbage_and_forbidden_targets(client, database_url, api_error):
    alice, bob = await member(client), await member(client)
    video = await ready_video(client, alice)
    private = await ready_video(client, alice, visibility="private", database_url=database_url)
    url = f"/videos/{video['id']}/reaction"
    for payload in [{}, {"kind": None}, {"kind": "love"}, {"kind": "LIKE"}, {"kind": 1},
                    {"kind": ["like"]}, {"kind": "like\x00"}, []]:
        await api_error(await client.put(url, json=payload, headers=bob.auth), 422)
    await api_error(await client.put(url, data=b"{", headers={
        **bob.auth, "Content-Type": "application/json"}), 400)
    await api_error(await client.put(url, data=b"kind=like", headers=bob.auth), 415)
    await api_error(await client.put(url, json={"kind": "like"}), 401)
    await api_error(await client.delete(url), 401)
    for bad in ("x", "0", "01", "999999", "1" * 40, str(private["id"])):
        await api_error(await client.put(f"/videos/{bad}/reaction", json={"kind": "like"},
                                         headers=bob.auth), 404)
        await api_error(await client.delete(f"/videos/{bad}/reaction", headers=bob.auth), 404)
    # The author may react to their own private video.
    resp = await client.put(f"/videos/{private['id']}/reaction", json={"kind": "like"},
                            headers=alice.auth)
    assert resp.status == 200
    ban(database_url, bob.id)
    await api_error(await client.put(url, json={"kind": "like"}, headers=bob.auth), 403,
                    "banned")


async def test_counts_exact_under_concurrent_toggling(client, database_url):
    owner = await member(client)
    users = [await member(client) for _ in range(5)]
    video = await ready_video(client, owner)
    url = f"/videos/{video['id']}/reaction"
    rng = random.Random(11)

    async def toggle(who, choice):
        if choice is None:
            resp = await client.delete(url, headers=who.auth)
        else:
            resp = await client.put(url, json={"kind": choice}, headers=who.auth)
        assert resp.status == 200, await resp.text()

    # 50 requests at once: each user toggles 10 times, in a random order.
    calls = [toggle(who, rng.choice(["like", "dislike", None]))
             for who in users for _ in range(10)]
    rng.shuffle(calls)
    await asyncio.gather(*calls)
    stored, real = stored_counts(database_url, video["id"])
    assert stored == real
    # And once more with everyone ending on a like.
    await asyncio.gather(*(toggle(who, "like") for who in users for _ in range(3)))
    stored, real = stored_counts(database_url, video["id"])
    assert stored == real == (5, 0)


async def test_reaction_limit_is_shared_by_two_instances(aiohttp_client, make_config, instance,
                                                         api_error):
    limit = {"rate_limit_reaction": RateSpec(4, 60)}
    first = await roomy_client(aiohttp_client, make_config, **limit)
    second = await instance(**limit)
    alice = await member(first)
    video = await ready_video(first, alice)
    url = f"/videos/{video['id']}/reaction"
    for app in (first, second, first, second):
        assert (await app.put(url, json={"kind": "like"}, headers=alice.auth)).status == 200
    for app in (first, second):
        resp = await app.delete(url, headers=alice.auth)
        await api_error(resp, 429, "rate_limited")
        assert int(resp.headers["Retry-After"]) >= 1
