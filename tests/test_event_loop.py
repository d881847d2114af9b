"""EVENT_LOOP=uvloop: `python -m server` on libuv's loop answers as it does on asyncio.

What differs between the loops is the stream's direct path, which writes to the
connection's descriptor itself (server/delivery/sendfile.py): every kind of stream
request is checked byte for byte on a real server process, with the direct path
seen to carry the bytes, and a delete still cuts a download off mid-body.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from .conftest import (
    REDIS_URL,
    new_user_token,
    query,
    read_until_cut_off,
    temporary_database,
    until,
    upload,
)
from .nodes import METRICS_TOKEN, Node, healthy, metric, start_server, start_worker
from .test_cli import assert_one_clear_line, clean_env, run

DIRECT_BYTES = 'tubelet_stream_bytes_sent_bytes_total{path="direct"}'
MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
MiB = 1024 * 1024

Serve = Callable[..., Awaitable[Node]]


@pytest.fixture(scope="module")
def loop_database() -> Iterator[str]:
    with temporary_database("tubelet_loop") as url:
        yield url


@pytest.fixture
async def serve(loop_database: str, redis_prefix: str,
                tmp_path: Path) -> AsyncIterator[Serve]:
    """Start `python -m server` on the loop named; every one is stopped at the end and
    must have logged no traceback."""
    nodes: list[Node] = []

    async def start(event_loop: str, **extra: str) -> Node:
        env = {**os.environ, "HOST": "127.0.0.1", "DATABASE_URL": loop_database,
               "REDIS_URL": REDIS_URL, "REDIS_PREFIX": redis_prefix,
               "JWT_SECRET": "loop-test-secret-" + "0123456789abcdef" * 2,
               "METRICS_TOKEN": METRICS_TOKEN, "BCRYPT_ROUNDS": "4", "ACCESS_LOG": "0",
               "LOG_LEVEL": "INFO", "EVENT_LOOP": event_loop, **extra}
        node = await start_server(f"{event_loop}-{len(nodes)}", env, tmp_path)
        nodes.append(node)
        await healthy(node)
        return node

    try:
        yield start
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))
    for node in nodes:
        assert "Traceback" not in node.log(), node.log()


async def ready_video(http: aiohttp.ClientSession, database_url: str,
                      data: bytes) -> tuple[str, dict[str, object]]:
    """Upload `data` as a new account's video and mark it ready; (token, its JSON)."""
    token = await new_user_token(http)  # type: ignore[arg-type]
    resp = await upload(http, token, io.BytesIO(data))  # type: ignore[arg-type]
    assert resp.status == 201, await resp.text()
    video_id = (await resp.json())["id"]
    # Ready as uploaded: no worker processes it.
    query(database_url, "UPDATE videos SET status = 'ready', progress = NULL WHERE id = %s",
          (video_id,))
    async with http.get(f"/videos/{video_id}") as resp:
        assert resp.status == 200, await resp.text()
        return token, await resp.json()


def media(size: int) -> bytes:
    return MP4_HEAD + os.urandom(size - len(MP4_HEAD))


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
async def test_every_kind_of_stream_request_is_answered_exactly(serve, loop_database,
                                                                event_loop):
    node = await serve(event_loop)
    assert f"({event_loop} event loop)" in node.log()
    data = media(24 * MiB)  # more than a socket takes at once: sends wait for room
    async with aiohttp.ClientSession(base_url=node.base) as http:
        _, video = await ready_video(http, loop_database, data)
        url = str(video["stream_url"])
        direct_before = await metric(http, node, DIRECT_BYTES)

        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(len(data))
            assert await resp.read() == data
            etag = resp.headers["ETag"]
        async with http.get(url, headers={"Range": "bytes=100-1123"}) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes 100-1123/{len(data)}"
            assert await resp.read() == data[100:1124]
        first = 5 * MiB + 7
        async with http.get(url, headers={"Range": f"bytes={first}-{first + 2 * MiB - 1}"}) \
                as resp:
            assert resp.status == 206
            assert await resp.read() == data[first:first + 2 * MiB]
        async with http.get(url, headers={"Range": "bytes=-500"}) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == \
                f"bytes {len(data) - 500}-{len(data) - 1}/{len(data)}"
            assert await resp.read() == data[-500:]
        async with http.get(url, headers={"Range": "bytes=0-9,1000-1099"}) as resp:
            assert resp.status == 206
            assert resp.content_type == "multipart/byteranges"
            body = await resp.read()
            parts = body.split(b"\r\n\r\n")[1:]  # after each part's headers: its bytes
            assert parts[0].startswith(data[0:10] + b"\r\n--")
            assert parts[1].startswith(data[1000:1100] + b"\r\n--")
        async with http.head(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(len(data))
            assert await resp.read() == b""
        async with http.get(url, headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304
            assert await resp.read() == b""

        # The whole file, 1 KiB and 2 MiB went straight to the socket, not through aiohttp.
        sent = await metric(http, node, DIRECT_BYTES) - direct_before
        assert sent == len(data) + 1024 + 2 * MiB


async def test_a_delete_cuts_off_a_download_in_flight_on_uvloop(serve, loop_database):
    node = await serve("uvloop")
    data = media(24 * MiB)
    async with aiohttp.ClientSession(base_url=node.base) as http, \
            aiohttp.ClientSession(base_url=node.base) as player:
        token, video = await ready_video(http, loop_database, data)
        async with player.get(str(video["stream_url"]), headers={"Range": "bytes=0-"}) as resp:
            assert resp.status == 206
            received = len(await resp.content.readexactly(65536))
            async with http.delete(f"/videos/{video['id']}",
                                   headers={"Authorization": f"Bearer {token}"}) as deleted:
                assert deleted.status == 204, await deleted.text()
            received = await read_until_cut_off(resp, received)
        assert received < len(data) // 2
        async with http.get(str(video["stream_url"])) as gone:
            assert gone.status == 404


async def test_viewer_socket_on_uvloop(serve, loop_database):
    node = await serve("uvloop")
    async with aiohttp.ClientSession(base_url=node.base) as http:
        _, video = await ready_video(http, loop_database, media(4096))
        async with http.ws_connect(f"/videos/{video['id']}/active-viewers") as ws:
            state = await ws.receive_json(timeout=5)
    assert state == {"video_id": video["id"], "active_viewers": 1, "views": 0}


async def test_every_forked_process_runs_on_uvloop(serve):
    node = await serve("uvloop", WORKERS="2")

    async def both_serving() -> bool:
        return len(re.findall(r"serving on \S+ \(uvloop event loop\)", node.log())) == 2

    await until(both_serving, 15, "two processes serving on uvloop")
    async with aiohttp.ClientSession(base_url=node.base) as http:
        for _ in range(4):
            async with http.get("/healthz") as resp:
                assert resp.status == 200


async def test_the_worker_runs_on_uvloop_and_stops_cleanly(loop_database, redis_prefix,
                                                           tmp_path):
    env = {**os.environ, "DATABASE_URL": loop_database, "REDIS_URL": REDIS_URL,
           "REDIS_PREFIX": redis_prefix, "LOG_LEVEL": "INFO", "EVENT_LOOP": "uvloop"}
    worker = await start_worker(env, tmp_path)
    try:
        async def started() -> bool:
            assert worker.running, worker.log()
            return "Starting worker" in worker.log()

        await until(started, 30, "the worker starting")
        worker.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await worker.proc.wait() == 0, worker.log()
    finally:
        await worker.stop()
    assert "Traceback" not in worker.log(), worker.log()


def test_an_unknown_event_loop_is_one_line():
    done = run("-m", "server", env=clean_env(EVENT_LOOP="bogus"))
    line = assert_one_clear_line(done, "EVENT_LOOP", "asyncio, uvloop")
    assert line.startswith("tubelet: configuration error:")
    assert done.returncode == 2
