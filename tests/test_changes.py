"""The video change feed on real PostgreSQL: NOTIFY, commit order, catch-up after a cut
link and after pruning, and what a delete does to the caches of every process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import aiopg
import psycopg2
import pytest
from aiohttp.test_utils import TestClient

from server.core.changes import ChangeFeed
from server.core.db import Queries, migrate
from server.viewing.counter import VIEWS_KEY

from .conftest import fake_mp4, new_user_token, until, upload_ready
from .outages import pg_proxy  # noqa: F401

QUERIES = Queries.load()


@pytest.fixture
async def feed(database_url: str) -> AsyncIterator[Callable[..., Awaitable[ChangeFeed]]]:
    """Starts ChangeFeeds on the test database, as separate processes would."""
    await migrate(database_url)
    started: list[ChangeFeed] = []

    async def start(**kwargs: Any) -> ChangeFeed:
        changes = ChangeFeed(database_url, QUERIES, **kwargs)
        await changes.start()
        started.append(changes)

        async def connected() -> bool:
            return changes.connected

        await until(connected, 5, "the feed's LISTEN")
        return changes

    yield start
    for changes in started:
        await changes.stop()


async def test_a_change_reaches_another_process_on_commit_by_notify(feed, database_url):
    writer = await feed()
    # A poll this long leaves only the notification to deliver the change in time.
    reader = await feed(poll=60)
    seen: list[int | None] = []
    reader.subscribe(seen.append)
    async with aiopg.connect(database_url) as conn, conn.cursor() as cur:
        async with cur.begin():
            await writer.record(cur, 900001, "deleted")
            await asyncio.sleep(0.5)
            assert seen == []  # nothing is announced before the commit

        async def arrived() -> bool:
            return seen == [900001]

        assert await until(arrived, 1.0, "the change's arrival") < 1.0


async def test_a_process_applies_its_own_change_once(feed, database_url):
    """Applied at once by its writer, and not again when the feed reads it back:
    a second eviction would throw away what a request cached in between."""
    changes = await feed(poll=0.05)
    seen: list[int | None] = []
    changes.subscribe(seen.append)
    async with aiopg.connect(database_url) as conn, conn.cursor() as cur:
        async with cur.begin():
            seq = await changes.record(cur, 900021, "created")
        changes.applied(900021, seq)
        assert seen == [900021]
        async with cur.begin():
            await cur.execute(QUERIES["record_video_change"],
                              {"video_id": 900022, "kind": "deleted"})  # another process's

    async def read_back() -> bool:
        return seen[-1:] == [900022]

    await until(read_back, 2.0, "the other process's change")
    assert seen == [900021, 900022]


async def test_changes_are_read_in_commit_order(feed, database_url):
    """A change that took its seq first but commits last is not skipped by a reader."""
    writer = await feed()
    reader = await feed(poll=0.05)
    seen: list[int | None] = []
    reader.subscribe(seen.append)
    async with aiopg.connect(database_url) as first, aiopg.connect(database_url) as second, \
            first.cursor() as cur1, second.cursor() as cur2:
        await cur1.execute("BEGIN")
        await writer.record(cur1, 900011, "deleted")

        async def later_writer() -> None:
            async with cur2.begin():
                await writer.record(cur2, 900012, "deleted")

        task = asyncio.create_task(later_writer())
        await asyncio.sleep(0.5)  # the reader polls ten times meanwhile
        assert not task.done(), "a second writer committed while the first was open"
        await cur1.execute("COMMIT")
        await asyncio.wait_for(task, 5)

    async def both() -> bool:
        return seen == [900011, 900012]

    await until(both, 2.0, "both changes, in order")


# --- two processes, one of them behind a link that is cut --------------------

async def new_video(client: TestClient, token: str) -> dict[str, Any]:
    return await upload_ready(client, token, fake_mp4(4096))


async def cache_in(client: TestClient, stream: str) -> str:
    """Make a process cache a video's file; its ETag."""
    # The video's own creation reaches every process first and evicts it once.
    await asyncio.sleep(0.5)
    resp = await client.get(stream)
    assert resp.status == 200
    await resp.read()
    return resp.headers["ETag"]


async def status_of(client: TestClient, path: str, **headers: str) -> int:
    resp = await client.get(path, headers=headers)
    await resp.read()
    return resp.status


async def test_a_delete_made_while_the_feed_is_cut_is_applied_when_it_returns(
        instance, pg_proxy, http):
    a = await instance()
    b = await instance(database_url=pg_proxy.url, db_timeout=1.0)
    token = await new_user_token(a)
    video = await new_video(a, token)
    stream = video["stream_url"]
    etag = await cache_in(b, stream)

    pg_proxy.cut()
    resp = await a.delete(f"/videos/{video['id']}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 204
    await asyncio.sleep(1.5)
    # B cannot hear of the delete yet: it answers from its cache, which needs no database.
    assert await status_of(b, stream, **{"If-None-Match": etag}) == 304

    pg_proxy.restore()

    async def gone() -> bool:
        return await status_of(b, stream, **{"If-None-Match": etag}) == 404

    await until(gone, 6.0, "B forgetting the deleted video")


async def test_a_process_that_missed_pruned_changes_forgets_everything(
        instance, pg_proxy, database_url):
    a = await instance()
    b = await instance(database_url=pg_proxy.url, db_timeout=1.0)
    token = await new_user_token(a)
    video = await new_video(a, token)
    stream = video["stream_url"]
    etag = await cache_in(b, stream)

    pg_proxy.cut()
    resp = await a.delete(f"/videos/{video['id']}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 204
    newest = await new_video(a, token)
    # Pruning everything it may: the delete's row goes, the newest row stays.
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(QUERIES["prune_video_changes"], {"hours": 0})
            cur.execute("SELECT video_id, kind FROM video_changes")
            assert cur.fetchall() == [(newest["id"], "processed")]
    finally:
        conn.close()
    assert await status_of(b, stream, **{"If-None-Match": etag}) == 304

    pg_proxy.restore()

    async def gone() -> bool:
        return await status_of(b, stream, **{"If-None-Match": etag}) == 404

    await until(gone, 6.0, "B forgetting the video whose delete was pruned")


# --- views of a deleted video -------------------------------------------------

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def browser(n: int) -> str:
    """A browser User-Agent; different n, different (anonymous) viewer."""
    return f"{BROWSER} Tubelet-Test/{n}"


def base(client: TestClient) -> str:
    return str(client.make_url("")).rstrip("/")


async def watch(http: aiohttp.ClientSession, client: TestClient, video_id: int,
                seconds: float, agent: str) -> None:
    """Play honestly for `seconds` of wall clock, reporting every 0.2 s."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    position = 0.0
    while True:
        async with http.post(f"{base(client)}/videos/{video_id}/views",
                             headers={"User-Agent": agent},
                             json={"position": position, "playing": True,
                                   "session": "s1"}) as resp:
            assert resp.status == 204, await resp.text()
        if position > seconds + 0.4:
            return
        await asyncio.sleep(0.2)
        position = loop.time() - start


async def report_status(http: aiohttp.ClientSession, client: TestClient, video_id: int) -> int:
    async with http.post(f"{base(client)}/videos/{video_id}/views",
                         headers={"User-Agent": browser(7)},
                         json={"position": 0, "playing": True, "session": "late"}) as resp:
        return resp.status


async def test_a_deleted_video_stops_earning_views_in_every_process(
        instance, http, database_url):
    a = await instance(view_min_watch=1.0, view_flush_interval=3600)
    b = await instance(view_min_watch=1.0, view_flush_interval=3600)
    token = await new_user_token(a)
    video = await new_video(a, token)
    video_id = video["id"]
    # A viewer watching through B: B caches the duration, and a view waits in Redis.
    await watch(http, b, video_id, 1.0, agent=browser(1))
    resp = await a.get(f"/videos/{video_id}")
    assert (await resp.json())["views"] == 1
    assert await report_status(http, b, video_id) == 204

    resp = await a.delete(f"/videos/{video_id}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 204

    async def refused() -> bool:
        return await report_status(http, b, video_id) == 404

    assert await until(refused, 2.0, "B refusing views of the deleted video") < 2.0

    # The view counted before the delete is dropped, not claimed by a batch.
    assert await b.server.app[VIEWS_KEY].flush() == 0
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), coalesce(sum(views), 0) FROM view_batches")
            batches, views = cur.fetchone()
            cur.execute("SELECT count(*) FROM videos")
            assert cur.fetchone() == (0,)
    finally:
        conn.close()
    assert batches == 1 and views == 0
