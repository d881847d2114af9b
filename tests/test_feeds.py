"""Feeds: global and following (newest listed videos), trending (ranked snapshots with
stable pagination while scores change)."""

from __future__ import annotations

import asyncio

import pytest

from server.social.handlers import FEEDS_KEY

from .conftest import query, upload
from .social_support import ban, member, ready_video, roomy_client


@pytest.fixture
async def client(aiohttp_client, make_config):
    return await roomy_client(aiohttp_client, make_config)


async def feed(client, path, who=None, **params):
    resp = await client.get(path, params=params, headers=who.auth if who else {})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def every_page(client, path, who=None, limit=2):
    titles, cursor = [], None
    while True:
        page = await feed(client, path, who, limit=str(limit), **({"cursor": cursor}
                                                                   if cursor else {}))
        titles += [item["title"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return titles


def score(views, likes, dislikes, comments, age_hours):
    """The documented trending score (README, server/social/feeds.py)."""
    engagement = max(views + 4 * likes - 2 * dislikes + 6 * comments, 0)
    return (engagement + 1) / (age_hours + 2) ** 1.5


async def test_global_feed_lists_only_listed_videos(client, database_url, api_error):
    alice, bob = await member(client), await member(client)
    for i in range(3):
        await ready_video(client, alice, f"public {i}")
    await ready_video(client, alice, "private", visibility="private", database_url=database_url)
    await ready_video(client, alice, "unlisted", visibility="unlisted",
                      database_url=database_url)
    removed = await ready_video(client, alice, "removed")
    query(database_url, "UPDATE videos SET removed_at = now() WHERE id = %s", (removed["id"],))
    assert (await upload(client, alice.token, b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64,
                         title="processing")).status == 201
    await ready_video(client, bob, "by bob")
    assert await every_page(client, "/feed/global") == [
        "by bob", "public 2", "public 1", "public 0"]
    # The author sees the same public feed; their own hidden videos live elsewhere.
    assert await every_page(client, "/feed/global", alice, limit=10) == [
        "by bob", "public 2", "public 1", "public 0"]
    # A banned author's videos disappear while the ban lasts.
    ban(database_url, bob.id)
    assert await every_page(client, "/feed/global") == ["public 2", "public 1", "public 0"]
    ban(database_url, bob.id, banned=False)
    page = await feed(client, "/feed/global", limit="1")
    item = page["items"][0]
    assert item["title"] == "by bob" and item["visibility"] == "public"
    assert {"like_count", "dislike_count", "comment_count", "tags", "my_reaction"} <= set(item)
    for params in ({"cursor": "x"}, {"cursor": "W10"}, {"limit": "0"}, {"limit": "abc"},
                   {"limit": "101"}, {"cursor": "WzEsMl0"}):
        await api_error(await client.get("/feed/global", params=params), 422)


async def test_following_feed(client, database_url, api_error):
    me, alice, bob = await member(client), await member(client), await member(client)
    await ready_video(client, alice, "alice 1")
    await ready_video(client, bob, "bob 1")
    await ready_video(client, alice, "alice 2")
    await ready_video(client, alice, "alice private", visibility="private",
                      database_url=database_url)
    await api_error(await client.get("/feed/following"), 401)
    assert await every_page(client, "/feed/following", me) == []
    await client.put(f"/users/{alice.id}/subscription", headers=me.auth)
    assert await every_page(client, "/feed/following", me, limit=1) == ["alice 2", "alice 1"]
    await client.put(f"/users/{bob.id}/subscription", headers=me.auth)
    assert await every_page(client, "/feed/following", me) == ["alice 2", "bob 1", "alice 1"]
    await api_error(await client.get("/feed/following", params={"cursor": "%%"},
                                     headers=me.auth), 422)


async def make_ranked(client, database_url, owner, stats):
    """Videos with the given (views, likes, dislikes, comments, age_hours), titled by index."""
    videos = []
    for i, (views, likes, dislikes, comments, age) in enumerate(stats):
        video = await ready_video(client, owner, f"v{i}")
        query(database_url, """
            UPDATE videos SET views = %s, like_count = %s, dislike_count = %s,
                              comment_count = %s, created_at = now() - %s * interval '1 hour'
            WHERE id = %s""", (views, likes, dislikes, comments, age, video["id"]))
        videos.append(video)
    return videos


STATS = [
    (0, 0, 0, 0, 0.1),        # brand new, nothing yet
    (1000, 10, 0, 5, 72),     # popular three days ago
    (50, 5, 1, 2, 1),         # doing well right now
    (10, 0, 20, 0, 0.5),      # disliked (engagement floors at 0)
    (300, 30, 0, 10, 24),     # yesterday's hit
    (5, 1, 0, 0, 2),
]


async def test_trending_follows_the_documented_score(client, database_url):
    owner = await member(client)
    await make_ranked(client, database_url, owner, STATS)
    await client.server.app[FEEDS_KEY].refresh(force=True)
    expected = sorted(range(len(STATS)), key=lambda i: (-score(*STATS[i]), -i))
    assert await every_page(client, "/feed/trending") == [f"v{i}" for i in expected]


async def test_trending_pages_stay_stable_while_scores_change(client, database_url, api_error):
    owner = await member(client)
    videos = await make_ranked(client, database_url, owner, STATS)
    feeds = client.server.app[FEEDS_KEY]
    await feeds.refresh(force=True)
    first = await feed(client, "/feed/trending", limit="3")
    before = [item["title"] for item in first["items"]]
    # The order turns upside down and a new ranking is computed.
    for i, video in enumerate(videos):
        query(database_url, "UPDATE videos SET views = %s, like_count = 0, dislike_count = 0,"
              " comment_count = 0, created_at = now() WHERE id = %s", (i * 1000, video["id"]))
    await feeds.refresh(force=True)
    rest = await feed(client, "/feed/trending", limit="10", cursor=first["next_cursor"])
    titles = before + [item["title"] for item in rest["items"]]
    # The old ranking, each video once.
    expected = sorted(range(len(STATS)), key=lambda i: (-score(*STATS[i]), -i))
    assert titles == [f"v{i}" for i in expected]
    # A reader starting now gets the new order.
    assert await every_page(client, "/feed/trending", limit=10) == [
        f"v{i}" for i in reversed(range(len(STATS)))]
    # Two refreshes later the old snapshot is gone: 410, start again.
    await feeds.refresh(force=True)
    await feeds.refresh(force=True)
    resp = await client.get("/feed/trending", params={"cursor": first["next_cursor"]})
    await api_error(resp, 410, "cursor_expired")
    for cursor in ("abc", "WzFd", "WyJhIiwxXQ", "WzEsMiwzXQ"):
        await api_error(await client.get("/feed/trending", params={"cursor": cursor}), 422)


async def test_trending_hides_videos_unlisted_since_the_snapshot(client, database_url):
    owner = await member(client)
    videos = await make_ranked(client, database_url, owner, STATS[:3])
    await client.server.app[FEEDS_KEY].refresh(force=True)
    query(database_url, "UPDATE videos SET visibility = 'private' WHERE id = %s",
          (videos[1]["id"],))
    assert "v1" not in await every_page(client, "/feed/trending")


async def test_one_process_computes_each_snapshot(client, instance, database_url):
    other = await instance()
    owner = await member(client)
    await make_ranked(client, database_url, owner, STATS[:2])
    mine, theirs = client.server.app[FEEDS_KEY], other.server.app[FEEDS_KEY]
    await mine.refresh(force=True)
    [(before,)] = query(database_url, "SELECT max(id) FROM trending_snapshots")
    # Both processes' loops come round at once while the snapshot is fresh: nothing new.
    assert await asyncio.gather(mine.refresh(), theirs.refresh()) == [before, before]
    # Once it is stale, exactly one of them computes the next.
    query(database_url, "UPDATE trending_snapshots SET computed_at = now() - interval '1 day'")
    first, second = await asyncio.gather(mine.refresh(), theirs.refresh())
    assert first == second and first > before
    [(count,)] = query(database_url, "SELECT count(*) FROM trending_snapshots WHERE id > %s",
                       (before,))
    assert count == 1
