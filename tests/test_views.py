"""View counting over real HTTP and WebSockets, real Redis, real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg2
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from psycopg2 import sql

from server.viewing.counter import VIEWS_KEY

from .conftest import (
    DATABASE_URL,
    REDIS_URL,
    database_name,
    make_clip,
    new_user_token,
    require_tool,
    upload,
)
from .test_presence import new_video, next_state, server_process

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
STEP = 0.2


def browser(n: int = 0) -> str:
    """A browser User-Agent; different n, different (anonymous) viewer."""
    return f"{BROWSER} Tubelet-Test/{n}"


def base(client: TestClient) -> str:
    return str(client.make_url("")).rstrip("/")


async def report(http: aiohttp.ClientSession, root: str, video_id: int, position: float,
                 playing: bool = True, session: str = "s1",
                 headers: dict[str, str] | None = None) -> None:
    async with http.post(f"{root}/videos/{video_id}/views", headers=headers,
                         json={"position": position, "playing": playing,
                               "session": session}) as resp:
        assert resp.status == 204, await resp.text()


async def watch(http: aiohttp.ClientSession, root: str, video_id: int, seconds: float,
                *, agent: str | None = BROWSER, session: str = "s1",
                headers: dict[str, str] | None = None) -> None:
    """Play honestly for `seconds` of wall clock, reporting every STEP."""
    headers = dict(headers or {})
    if agent is not None:
        headers["User-Agent"] = agent
    loop = asyncio.get_running_loop()
    start = loop.time()
    position = 0.0
    await report(http, root, video_id, position, session=session, headers=headers)
    while position < seconds + 2 * STEP:
        await asyncio.sleep(STEP)
        position = loop.time() - start
        await report(http, root, video_id, position, session=session, headers=headers)


async def views_of(http: aiohttp.ClientSession, root: str, video_id: int) -> int:
    async with http.get(f"{root}/videos/{video_id}") as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["views"]


def stored_views(database_url: str, video_id: int) -> int:
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT views FROM videos WHERE id = %s", (video_id,))
            return cur.fetchone()[0]
    finally:
        conn.close()


async def eventually(check: Any, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while True:
            if await check():
                return
            await asyncio.sleep(0.1)


# --- counting rules ----------------------------------------------------------

async def test_a_view_counts_after_the_minimum_watch(instance, http):
    client = await instance(view_min_watch=1.0)
    root = base(client)
    video_id = await new_video(client)
    await report(http, root, video_id, 0.0, headers={"User-Agent": BROWSER})
    assert await views_of(http, root, video_id) == 0

    await watch(http, root, video_id, 1.0, session="s2")
    assert await views_of(http, root, video_id) == 1
    async with http.get(f"{root}/videos") as resp:
        listed = {item["id"]: item["views"] for item in (await resp.json())["items"]}
    assert listed[video_id] == 1


async def test_progress_faster_than_the_wall_clock_is_not_believed(instance, http):
    client = await instance(view_min_watch=2.0)
    root = base(client)
    video_id = await new_video(client)
    headers = {"User-Agent": BROWSER}
    # Thirty seconds of "playback" claimed in well under a second.
    for position in (0, 10, 20, 30):
        await report(http, root, video_id, position, headers=headers)
    await asyncio.sleep(0.3)
    await report(http, root, video_id, 60, headers=headers)
    assert await views_of(http, root, video_id) == 0

    # Real playback from there on earns the view once 2 s have really passed.
    loop = asyncio.get_running_loop()
    start, position = loop.time(), 60.0
    while loop.time() - start < 1.2:
        await asyncio.sleep(STEP)
        position = 60 + loop.time() - start
        await report(http, root, video_id, position, headers=headers)
    assert await views_of(http, root, video_id) == 0
    while loop.time() - start < 2.6:
        await asyncio.sleep(STEP)
        await report(http, root, video_id, 60 + loop.time() - start, headers=headers)
    assert await views_of(http, root, video_id) == 1


async def test_paused_playback_earns_nothing(instance, http):
    client = await instance(view_min_watch=1.0)
    root = base(client)
    video_id = await new_video(client)
    headers = {"User-Agent": BROWSER}
    for i in range(8):
        await report(http, root, video_id, i * 0.2, playing=False, headers=headers)
        await asyncio.sleep(STEP)
    assert await views_of(http, root, video_id) == 0


@pytest.fixture(scope="session")
def short_clip(media_dir: Path) -> Path:
    """A real 2-second MP4, so ffprobe stores a duration shorter than VIEW_MIN_WATCH."""
    return make_clip(
        media_dir, "short.mp4", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10",
        "-t", "2", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")


async def test_a_short_video_needs_half_its_duration(instance, http, short_clip):
    require_tool("ffprobe")
    client = await instance()  # VIEW_MIN_WATCH stays at its default of 10 s
    root = base(client)
    token = await new_user_token(client)
    resp = await upload(client, token, short_clip.read_bytes(), filename="short.mp4")
    assert resp.status == 201
    short = await resp.json()
    assert short["duration"] == pytest.approx(2.0, abs=0.2)
    unknown = await new_video(client)  # no duration: the 10-second rule alone applies

    await asyncio.gather(watch(http, root, short["id"], short["duration"] / 2),
                         watch(http, root, unknown, short["duration"] / 2))
    assert await views_of(http, root, short["id"]) == 1
    assert await views_of(http, root, unknown) == 0


async def test_one_view_per_viewer_per_window(instance, http):
    window = 4
    client = await instance(view_min_watch=0.5, view_window=window)
    root = base(client)
    video_id = await new_video(client)
    other_video = await new_video(client)
    loop = asyncio.get_running_loop()

    await watch(http, root, video_id, 0.5, agent=browser(1), session="a")
    first_counted = loop.time()
    assert await views_of(http, root, video_id) == 1
    # The same browser on the same address, in a new session: the same viewer.
    await watch(http, root, video_id, 0.5, agent=browser(1), session="b")
    assert await views_of(http, root, video_id) == 1
    # A different browser is a different anonymous viewer; another video counts apart.
    await asyncio.gather(watch(http, root, video_id, 0.5, agent=browser(2)),
                         watch(http, root, other_video, 0.5, agent=browser(1)))
    assert await views_of(http, root, video_id) == 2
    assert await views_of(http, root, other_video) == 1
    # A signed-in viewer is the account, whatever browser it uses.
    token = await new_user_token(client)
    auth = {"Authorization": f"Bearer {token}"}
    await watch(http, root, video_id, 0.5, agent=browser(3), headers=auth)
    await watch(http, root, video_id, 0.5, agent=browser(4), headers=auth, session="c")
    assert await views_of(http, root, video_id) == 3

    # Once the window has passed, the first viewer counts again.
    await asyncio.sleep(max(0.0, first_counted + window + 0.2 - loop.time()))
    await watch(http, root, video_id, 0.5, agent=browser(1), session="d")
    assert await views_of(http, root, video_id) == 4


@pytest.mark.parametrize("agent", [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "curl/8.5.0",
    "",
    None,  # aiohttp's own User-Agent
])
async def test_bots_never_count(instance, http, agent):
    client = await instance(view_min_watch=0.5)
    root = base(client)
    video_id = await new_video(client)
    await watch(http, root, video_id, 0.5, agent=agent)
    assert await views_of(http, root, video_id) == 0
    await watch(http, root, video_id, 0.5, agent=BROWSER)
    assert await views_of(http, root, video_id) == 1


async def test_one_address_adds_at_most_the_limit(instance, http):
    client = await instance(view_min_watch=0.5, view_ip_limit=2)
    root = base(client)
    videos = [await new_video(client) for _ in range(3)]
    # Four viewers from one address (X-Forwarded-For from an untrusted peer is
    # ignored), spread over three videos.
    await asyncio.gather(
        watch(http, root, videos[0], 0.5, agent=browser(1)),
        watch(http, root, videos[1], 0.5, agent=browser(2)),
        watch(http, root, videos[2], 0.5, agent=browser(3)),
        watch(http, root, videos[0], 0.5, agent=browser(4),
              headers={"X-Forwarded-For": "198.51.100.9"}),
    )
    assert sum([await views_of(http, root, v) for v in videos]) == 2


async def test_forwarded_for_is_believed_from_trusted_proxies(instance, http):
    client = await instance(view_min_watch=0.5, view_ip_limit=1,
                            trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    root = base(client)
    video_id = await new_video(client)

    def via_proxy(ip: str) -> dict[str, str]:
        return {"X-Forwarded-For": f"203.0.113.1, {ip}"}

    # The same browser behind the proxy from two addresses: two viewers, two caps.
    await asyncio.gather(
        watch(http, root, video_id, 0.5, headers=via_proxy("198.51.100.1")),
        watch(http, root, video_id, 0.5, headers=via_proxy("198.51.100.2")),
    )
    assert await views_of(http, root, video_id) == 2
    # The first address has used its one view this hour.
    await watch(http, root, video_id, 0.5, agent=browser(9),
                headers=via_proxy("198.51.100.1"))
    assert await views_of(http, root, video_id) == 2


async def test_progress_reports_are_validated(client, api_error):
    video_id = await new_video(client)
    path = f"/videos/{video_id}/views"
    ok = {"position": 1.0, "playing": True, "session": "abc"}
    await api_error(await client.post("/videos/999999/views", json=ok), 404, "not_found")
    for bad in ({**ok, "position": -1}, {**ok, "playing": "yes"}, {**ok, "session": ""},
                {"position": 1.0, "playing": True}, [1, 2]):
        await api_error(await client.post(path, json=bad), 422, "validation_error")
    await api_error(await client.post(path, data=b"{nope",
                                      headers={"Content-Type": "application/json"}),
                    400, "invalid_json")
    # What a cross-site form could send without a CORS preflight.
    await api_error(await client.post(path, data=json.dumps(ok),
                                      headers={"Content-Type": "text/plain"}),
                    415, "unsupported_media_type")
    await api_error(await client.post(path, json=ok,
                                      headers={"Origin": "https://evil.example"}),
                    403, "origin_not_allowed")
    own = f"http://{client.host}:{client.port}"
    assert (await client.post(path, json=ok, headers={"Origin": own})).status == 204


# --- over the socket ---------------------------------------------------------

async def play_over_socket(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    position = 0.0
    await ws.send_json({"type": "progress", "position": 0, "playing": True})
    while position < seconds + 2 * STEP:
        await asyncio.sleep(STEP)
        position = loop.time() - start
        await ws.send_json({"type": "progress", "position": position, "playing": True})


async def test_views_reported_over_the_socket_are_pushed_to_every_viewer(instance, http):
    one = await instance(view_min_watch=1.0)
    two = await instance(view_min_watch=1.0)
    video_id = await new_video(one)
    path = f"/videos/{video_id}/active-viewers"
    player = await http.ws_connect(one.make_url(path), headers={"User-Agent": BROWSER})
    onlooker = await http.ws_connect(two.make_url(path))  # on the other instance
    assert (await next_state(onlooker))["views"] == 0

    await play_over_socket(player, 1.0)
    state = await next_state(onlooker, lambda s: s["views"] == 1)
    assert state == {"video_id": video_id, "active_viewers": 2, "views": 1}
    assert (await next_state(player, lambda s: s["views"] == 1))["views"] == 1
    assert await views_of(http, base(one), video_id) == 1
    await player.close()
    await onlooker.close()


async def test_socket_sign_in_makes_the_viewer_the_account(instance, http):
    client = await instance(view_min_watch=0.5)
    root = base(client)
    video_id = await new_video(client)
    token = await new_user_token(client)
    ws = await http.ws_connect(client.make_url(f"/videos/{video_id}/active-viewers"),
                               headers={"User-Agent": browser(1)})
    await next_state(ws)
    await ws.send_json({"type": "auth", "token": token})
    await play_over_socket(ws, 0.5)
    await next_state(ws, lambda s: s["views"] == 1)
    # The same account through the HTTP reports of another device: already counted.
    await watch(http, root, video_id, 0.5, agent=browser(2),
                headers={"Authorization": f"Bearer {token}"})
    assert await views_of(http, root, video_id) == 1
    await ws.close()


async def test_a_bot_over_the_socket_never_counts(instance, http):
    client = await instance(view_min_watch=0.5)
    video_id = await new_video(client)
    ws = await http.ws_connect(client.make_url(f"/videos/{video_id}/active-viewers"),
                               headers={"User-Agent": "Mozilla/5.0 (compatible; bingbot/2.0)"})
    await next_state(ws)
    await play_over_socket(ws, 0.5)
    await asyncio.sleep(2 * STEP)
    assert await views_of(http, base(client), video_id) == 0
    await ws.close()


# --- the flush ---------------------------------------------------------------

async def test_views_reach_postgres_in_batches(instance, http, database_url):
    client = await instance(view_min_watch=0.5, view_flush_interval=0.2)
    root = base(client)
    video_id = await new_video(client)
    await asyncio.gather(*(watch(http, root, video_id, 0.5, agent=browser(i))
                           for i in range(3)))

    async def flushed() -> bool:
        return await asyncio.to_thread(stored_views, database_url, video_id) == 3

    await eventually(flushed)
    assert await views_of(http, root, video_id) == 3
    await asyncio.sleep(1.0)  # several more flushes: nothing is added twice
    assert await asyncio.to_thread(stored_views, database_url, video_id) == 3
    assert await views_of(http, root, video_id) == 3


async def test_restart_and_interrupted_flushes_keep_every_view_once(instance, http,
                                                                    database_url):
    settings = {"view_min_watch": 0.5, "view_flush_interval": 3600}
    first = await instance(**settings)
    video_id = await new_video(first)
    await asyncio.gather(*(watch(http, base(first), video_id, 0.5, agent=browser(i))
                           for i in range(2)))
    assert await views_of(http, base(first), video_id) == 2
    assert stored_views(database_url, video_id) == 0
    await first.close()  # a graceful stop flushes
    assert stored_views(database_url, video_id) == 2

    second = await instance(**settings)
    root = base(second)
    app = second.server.app
    counter = app[VIEWS_KEY]
    assert await views_of(http, root, video_id) == 2

    # A flush that applied its batch to PostgreSQL but stopped before deleting it.
    await watch(http, root, video_id, 0.5, agent=browser(3))
    applied = await counter.seal()
    assert applied is not None
    assert await counter.apply_to_database(applied) == 1
    assert stored_views(database_url, video_id) == 3
    assert await views_of(http, root, video_id) == 3
    # Applying it again, as the next flush will, adds nothing.
    assert await counter.apply_to_database(applied) == 0

    # A flush that batched the pending views but stopped before PostgreSQL.
    await watch(http, root, video_id, 0.5, agent=browser(4))
    assert await counter.seal() is not None
    assert await views_of(http, root, video_id) == 4
    # And one more view still pending.
    await watch(http, root, video_id, 0.5, agent=browser(5))
    assert await views_of(http, root, video_id) == 5
    assert stored_views(database_url, video_id) == 3

    await second.close()
    assert stored_views(database_url, video_id) == 5
    third = await instance(**settings)
    assert await views_of(http, base(third), video_id) == 5
    async with in_redis() as client:
        assert await client.scard(third.server.app[VIEWS_KEY].batches_key) == 0


@contextlib.asynccontextmanager
async def in_redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


async def test_a_killed_server_loses_no_views(instance, make_config, http, database_url):
    """SIGKILL mid-flush: the next process applies what was left, exactly once."""
    keeper = await instance(view_flush_interval=3600)
    video_id = await new_video(keeper)
    env = {"VIEW_MIN_WATCH": "0.5", "VIEW_FLUSH_INTERVAL": "3600"}
    async with server_process(make_config(), **env) as (proc, root):
        await asyncio.gather(*(watch(http, root, video_id, 0.5, agent=browser(i))
                               for i in range(2)))
        # The killed process had batched these two when it died...
        assert await keeper.server.app[VIEWS_KEY].seal() is not None
        # ...and had counted one more.
        await watch(http, root, video_id, 0.5, agent=browser(3))
        assert await views_of(http, root, video_id) == 3
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert stored_views(database_url, video_id) == 0

    successor = await instance()  # its start-up flush applies what was left

    async def flushed() -> bool:
        return await asyncio.to_thread(stored_views, database_url, video_id) == 3

    await eventually(flushed)
    assert await views_of(http, base(successor), video_id) == 3


@contextlib.contextmanager
def database_unreachable(database_url: str) -> Iterator[None]:
    """Refuse new connections to the test database and cut the open ones."""
    name = database_name(database_url)
    admin = psycopg2.connect(DATABASE_URL)
    admin.autocommit = True

    def allow(flag: bool) -> None:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.SQL("true" if flag else "false")))

    try:
        allow(False)
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        yield
    finally:
        allow(True)
        admin.close()


async def test_views_wait_in_redis_while_postgres_is_unreachable(instance, http,
                                                                 database_url, caplog):
    client = await instance(view_min_watch=0.5, view_flush_interval=0.2)
    root = base(client)
    counter = client.server.app[VIEWS_KEY]
    video_id = await new_video(client)
    await report(http, root, video_id, 0.0, headers={"User-Agent": browser(1)})

    async with in_redis() as redis_client:
        with database_unreachable(database_url):
            # Counting needs only Redis (the video's duration is cached).
            await asyncio.gather(*(watch(http, root, video_id, 0.5, agent=browser(i))
                                   for i in range(2)))

            async def held() -> tuple[int, int]:
                """(in-flight batches, views held in Redis for the video)."""
                batches = await redis_client.smembers(counter.batches_key)
                views = int(await redis_client.hget(counter.pending_key, str(video_id)) or 0)
                for batch in batches:
                    views += int(await redis_client.hget(counter.batch_key(batch.decode()),
                                                         str(video_id)) or 0)
                return len(batches), views

            async def batched() -> bool:
                return await held() == (1, 2)

            await eventually(batched)
            await asyncio.sleep(1.0)  # several failed flushes later, still one batch
            assert await held() == (1, 2)
        assert "view flush failing" in caplog.text

        async def flushed() -> bool:
            return await asyncio.to_thread(stored_views, database_url, video_id) == 2

        await eventually(flushed)
        await asyncio.sleep(1.0)
        assert stored_views(database_url, video_id) == 2
        assert await redis_client.scard(counter.batches_key) == 0
    assert await views_of(http, root, video_id) == 2


async def test_old_batch_records_are_pruned(client, database_url):
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO view_batches (id, views, applied_at) VALUES"
                        " (gen_random_uuid(), 1, now() - interval '400 days'),"
                        " (gen_random_uuid(), 2, now())")
        await client.server.app[VIEWS_KEY].prune()
        with conn.cursor() as cur:
            cur.execute("SELECT views FROM view_batches")
            assert [row[0] for row in cur.fetchall()] == [2]
    finally:
        conn.close()


async def test_totals_read_during_flushes_are_never_doubled(instance, http):
    """Reads racing batch after batch see each view once: not lost, not doubled."""
    client = await instance(view_flush_interval=3600)
    app = client.server.app
    counter = app[VIEWS_KEY]
    root = base(client)
    video_id = await new_video(client)
    done = 0
    finished = asyncio.Event()

    async def count_and_flush() -> None:
        nonlocal done
        async with in_redis() as redis_client:
            for _ in range(20):
                for _ in range(5):
                    # What the counting script adds for one view.
                    await redis_client.hincrby(counter.pending_key, str(video_id), 1)
                    done += 1
                # A flush, step by step, with reads landing between the steps.
                batch_id = await counter.seal()
                assert batch_id is not None
                await asyncio.sleep(0.005)
                await counter.apply_to_database(batch_id)
                await asyncio.sleep(0.005)
                await counter.finish(batch_id)
        finished.set()

    async def read() -> list[tuple[int, int, int]]:
        seen = []
        while not finished.is_set():
            before = done
            views = await views_of(http, root, video_id)
            seen.append((before, views, done))
        return seen

    _, *readers = await asyncio.gather(count_and_flush(), read(), read())
    for seen in readers:
        assert len(seen) > 10
        for before, views, after in seen:
            # At most one increment can be in Redis and not yet in `done`; a
            # batch counted twice would be five too many.
            assert before <= views <= after + 1
    assert await views_of(http, root, video_id) == 100
