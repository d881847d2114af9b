"""Two server nodes and a worker, real processes sharing PostgreSQL, Redis and a bucket,
as behind a load balancer: what one node is told, the other serves; a node that dies
takes nothing with it that the other needs."""

from __future__ import annotations

import asyncio
import io
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import FormData

from server.core.storage import STORAGE_KEY_RE, StorageLocation

from .conftest import make_clip, require_tool
from .nodes import Node, cluster, metric, shared_env
from .test_presence import agent, next_state, viewers
from .test_streaming import parse_multipart
from .test_views import browser, stored_views, views_of, watch

READY_TIMEOUT = 60.0
MISSES = 'tubelet_node_cache_requests_total{result="miss"}'
HITS = 'tubelet_node_cache_requests_total{result="hit"}'
# Long enough that a view made through one node is still pending in Redis when it dies.
NEVER = "3600"


@pytest.fixture
def env(database_url: str, redis_prefix: str, s3_location: StorageLocation,
        clean_db: None) -> dict[str, str]:
    return shared_env(database_url, redis_prefix, s3_location, VIEW_MIN_WATCH="0.5",
                      VIEW_FLUSH_INTERVAL=NEVER)


@pytest.fixture(scope="session")
def big_mp4(media_dir: Path) -> Path:
    """About 30 MB of browser-ready H.264 + AAC (processing only remuxes it): far more
    than the sockets between a node and a slow reader hold."""
    return make_clip(
        media_dir, "noise.mp4", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", "640x360",
        "-r", "25", "-i", "/dev/urandom", "-f", "lavfi", "-i", "sine=frequency=440",
        "-t", "2", "-c:v", "libx264", "-preset", "ultrafast", "-qp", "1",
        "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def sign_up(http: aiohttp.ClientSession, node: Node) -> str:
    creds = {"email": f"n-{secrets.token_hex(4)}@example.com",
             "password": "correct horse battery"}
    async with http.post(node.url("/auth/register"), json=creds) as resp:
        assert resp.status == 201, await resp.text()
    async with http.post(node.url("/auth/login"), json=creds) as resp:
        assert resp.status == 200, await resp.text()
        token: str = (await resp.json())["access_token"]
        return token


async def upload_ready(http: aiohttp.ClientSession, node: Node, token: str,
                       clip: Path, worker: Node) -> dict[str, Any]:
    """Upload through `node` (multipart), then wait for the worker to make it ready."""
    form = FormData()
    form.add_field("title", "Across nodes")
    form.add_field("file", io.BytesIO(clip.read_bytes()), filename=clip.name,
                   content_type="application/octet-stream")
    async with http.post(node.url("/videos/upload"), data=form,
                         headers=bearer(token)) as resp:
        assert resp.status == 201, await resp.text()
        video_id = (await resp.json())["id"]
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            while True:
                async with http.get(node.url(f"/videos/{video_id}")) as resp:
                    assert resp.status == 200, await resp.text()
                    video: dict[str, Any] = await resp.json()
                if video["status"] != "processing":
                    break
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"not processed within {READY_TIMEOUT} s:\n"
                             + worker.log()[-3000:]) from None
    assert video["status"] == "ready", (video, worker.log()[-3000:])
    return video


async def fetch(http: aiohttp.ClientSession, method: str, url: str,
                headers: Mapping[str, str] | None = None) -> tuple[int, Any, bytes]:
    async with http.request(method, url, headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


def cached_files(node: Node) -> dict[str, int]:
    """The files in a node's cache directory (CACHE_DIR), by key, with their sizes."""
    directory = Path(node.env["CACHE_DIR"])
    if not directory.is_dir():
        return {}
    return {entry.name: entry.stat().st_size for entry in os.scandir(directory)
            if STORAGE_KEY_RE.fullmatch(entry.name)}


def open_cache_files(node: Node) -> list[str]:
    """The files of its cache directory the node's process holds open (removed ones too)."""
    directory = str(Path(node.env["CACHE_DIR"]).resolve())
    held = []
    for fd in os.listdir(f"/proc/{node.proc.pid}/fd"):
        try:
            target = os.readlink(f"/proc/{node.proc.pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith(directory + "/"):
            held.append(target)
    return held


async def eventually(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within} s")
        await asyncio.sleep(0.1)


class SlowReader:
    """A GET read slowly through a socket with a small receive buffer, so the node
    cannot hand the whole body to the kernel's buffers ahead of the reader."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.length = -1
        self.body = bytearray()
        self.ended_at: float | None = None
        self.reset = False

    @classmethod
    async def get(cls, base: str, path: str) -> SlowReader:
        parts = urlsplit(base)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=16384)
        self = cls(reader, writer)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     "Connection: close\r\n\r\n".encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        self.status = int(head.split(" ", 2)[1])
        match = re.search(r"(?im)^content-length:\s*(\d+)", head)
        self.length = int(match.group(1)) if match else -1
        return self

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    async def read_for(self, seconds: float, rate: float) -> None:
        """Read at about `rate` bytes a second for `seconds`, or until the body ends."""
        step = 8192
        deadline = time.monotonic() + seconds
        while not self.ended and time.monotonic() < deadline:
            try:
                data = await asyncio.wait_for(self.reader.read(step), 1.0)
            except TimeoutError:
                continue
            except ConnectionError:
                data, self.reset = b"", True
            if not data:
                self.ended_at = time.monotonic()
                return
            self.body += data
            await asyncio.sleep(len(data) / rate)

    def close(self) -> None:
        self.writer.transport.abort()


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    return tmp_path / "nodes"


TWO = {"a": {}, "b": {}}


# --- 1. one node is told, the other serves -------------------------------------

async def check_stream(http: aiohttp.ClientSession, b: Node, url: str, reference: bytes,
                       validators: Mapping[str, str]) -> None:
    """Node B's answers to the ways players and downloaders ask, byte for byte."""
    size = len(reference)
    status, headers, body = await fetch(http, "GET", b.url(url))
    assert status == 200 and body == reference
    assert headers["Content-Length"] == str(size)
    assert {name: headers[name] for name in validators} == validators

    status, headers, body = await fetch(http, "GET", b.url(url), {"Range": "bytes=100-1099"})
    assert status == 206 and body == reference[100:1100]
    assert headers["Content-Range"] == f"bytes 100-1099/{size}"

    status, headers, body = await fetch(http, "GET", b.url(url), {"Range": "bytes=-500"})
    assert status == 206 and body == reference[-500:]
    assert headers["Content-Range"] == f"bytes {size - 500}-{size - 1}/{size}"

    status, headers, body = await fetch(http, "GET", b.url(url),
                                        {"Range": "bytes=0-9,5000-5099,-20"})
    assert status == 206
    parts = parse_multipart(headers["Content-Type"], body)
    assert [payload for _, payload in parts] == \
        [reference[:10], reference[5000:5100], reference[-20:]]
    assert [part["content-range"] for part, _ in parts] == \
        [f"bytes 0-9/{size}", f"bytes 5000-5099/{size}", f"bytes {size - 20}-{size - 1}/{size}"]

    etag = validators["ETag"]
    status, _, body = await fetch(http, "GET", b.url(url),
                                  {"Range": "bytes=200-299", "If-Range": etag})
    assert status == 206 and body == reference[200:300]
    status, _, body = await fetch(http, "GET", b.url(url),
                                  {"Range": "bytes=200-299", "If-Range": '"changed"'})
    assert status == 200 and body == reference

    status, headers, body = await fetch(http, "HEAD", b.url(url))
    assert status == 200 and body == b""
    assert headers["Content-Length"] == str(size)
    assert headers["ETag"] == etag


async def test_an_upload_to_one_node_streams_from_the_other(env, node_dir, http, real_mp4):
    async with cluster(env, node_dir, TWO) as nodes:
        a, b = nodes["a"], nodes["b"]
        token = await sign_up(http, a)
        video = await upload_ready(http, a, token, real_mp4, nodes["worker"])
        url = video["stream_url"]
        status, headers, reference = await fetch(http, "GET", a.url(url))
        assert status == 200
        # Both nodes must give the same validators, or If-Range and caches in front
        # of the load balancer would see the file change from request to request.
        validators = {name: headers[name] for name in ("ETag", "Last-Modified")}

        status, _, body = await fetch(http, "GET", b.url(f"/videos/{video['id']}"))
        assert status == 200
        assert (await metric(http, b, MISSES), await metric(http, b, HITS)) == (0, 0)
        await check_stream(http, b, url, reference, validators)  # B cold: from the bucket
        missed = await metric(http, b, MISSES)
        assert missed >= 1

        async def b_cached() -> bool:
            return len(reference) in cached_files(b).values()

        await eventually(b_cached, 10, "node B caching the video")
        hit = await metric(http, b, HITS)
        await check_stream(http, b, url, reference, validators)  # B warm: from its disk
        assert await metric(http, b, MISSES) == missed
        assert await metric(http, b, HITS) > hit

        # A real client: curl fetches a range, then resumes a download cut short.
        curl = require_tool("curl")
        part = node_dir / "part.mp4"
        done = await asyncio.to_thread(
            subprocess.run, [curl, "-sS", "-r", "1000-4999", "-o", str(part),
                             "-w", "%{http_code}", b.url(url)],
            capture_output=True, text=True, timeout=30)
        assert done.stdout == "206", done.stderr
        assert part.read_bytes() == reference[1000:5000]
        whole = node_dir / "whole.mp4"
        whole.write_bytes(reference[:70_000])
        done = await asyncio.to_thread(
            subprocess.run, [curl, "-sS", "-C", "-", "-o", str(whole),
                             "-w", "%{http_code}", b.url(url)],
            capture_output=True, text=True, timeout=30)
        assert done.stdout == "206", done.stderr
        assert whole.read_bytes() == reference


# --- 2. presence ----------------------------------------------------------------

async def test_viewers_on_both_nodes_are_counted_together(env, node_dir, http, real_mp4):
    async with cluster(env, node_dir, TWO) as nodes:
        a, b = nodes["a"], nodes["b"]
        token = await sign_up(http, a)
        video = await upload_ready(http, a, token, real_mp4, nodes["worker"])
        path = f"/videos/{video['id']}/active-viewers"
        on_a = await http.ws_connect(a.url(path), headers=agent(1))
        on_b = await http.ws_connect(b.url(path), headers=agent(2))
        assert (await next_state(on_a, viewers(2)))["video_id"] == video["id"]
        assert (await next_state(on_b, viewers(2)))["video_id"] == video["id"]

        another_on_b = await http.ws_connect(b.url(path), headers=agent(3))
        for ws in (on_a, on_b, another_on_b):
            await next_state(ws, viewers(3))

        await on_a.close()
        for ws in (on_b, another_on_b):
            assert (await next_state(ws, viewers(2)))["active_viewers"] == 2
        await on_b.close()
        await another_on_b.close()


# --- 3. a delete on one node reaches streams on the other ------------------------------

async def test_a_delete_through_one_node_cuts_a_download_from_the_other(env, node_dir, http,
                                                                        big_mp4):
    async with cluster(env, node_dir, TWO) as nodes:
        a, b = nodes["a"], nodes["b"]
        token = await sign_up(http, a)
        video = await upload_ready(http, a, token, big_mp4, nodes["worker"])
        url = video["stream_url"]
        status, _, reference = await fetch(http, "GET", a.url(url))
        assert status == 200

        rate = 1024 * 1024
        downloads = []
        try:
            # One download starts while B has the file from the bucket only...
            cold = await SlowReader.get(b.base, url)
            downloads.append(cold)
            await cold.read_for(0.5, rate)

            async def b_cached() -> bool:
                return len(reference) in cached_files(b).values()

            # ...and another once B has it on its disk (sent from a descriptor, which
            # reads on after the file is removed).
            await eventually(b_cached, 15, "node B caching the video")
            warm = await SlowReader.get(b.base, url)
            downloads.append(warm)
            await warm.read_for(0.5, rate)
            for download in downloads:
                assert download.status == 200 and download.length == len(reference)
                assert not download.ended
            deleted_at = time.monotonic()
            async with http.delete(a.url(f"/videos/{video['id']}"),
                                   headers=bearer(token)) as resp:
                assert resp.status == 204, await resp.text()
            await asyncio.gather(*(download.read_for(8.0, rate) for download in downloads))
        finally:
            for download in downloads:
                download.close()
        for name, download in (("cold", cold), ("warm", warm)):
            assert download.ended_at is not None, \
                f"node B went on streaming a deleted video ({name}, {len(download.body)} bytes)"
            assert len(download.body) < len(reference), name
            assert download.body == reference[:len(download.body)], name
            assert download.ended_at - deleted_at < 5.0, name

        status, _, _ = await fetch(http, "GET", b.url(f"/videos/{video['id']}"))
        assert status == 404
        status, _, _ = await fetch(http, "GET", b.url(url), {"Range": "bytes=0-99"})
        assert status == 404

        async def forgotten() -> bool:
            return len(reference) not in cached_files(b).values()

        await eventually(forgotten, 5, "node B dropping the deleted video from its cache")

        async def let_go() -> bool:
            return not open_cache_files(b)

        # A descriptor kept open would keep the removed file's disk space taken for ever.
        try:
            await eventually(let_go, 5, "node B closing the deleted video's file")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {open_cache_files(b)}") from None


# --- 4. a node that dies ----------------------------------------------------------

async def test_a_killed_node_loses_no_views_and_the_other_serves_on(env, node_dir, http,
                                                                   real_mp4, database_url):
    async with cluster(env, node_dir, TWO) as nodes:
        a, b = nodes["a"], nodes["b"]
        token = await sign_up(http, a)
        video = await upload_ready(http, a, token, real_mp4, nodes["worker"])
        video_id, url = video["id"], video["stream_url"]
        status, _, reference = await fetch(http, "GET", a.url(url))
        assert status == 200

        # Two viewers watch through B: two views, counted in Redis, not yet in PostgreSQL.
        await asyncio.gather(*(watch(http, b.base, video_id, 0.5, agent=browser(i))
                               for i in range(2)))
        assert await views_of(http, b.base, video_id) == 2
        assert await asyncio.to_thread(stored_views, database_url, video_id) == 0

        # B dies with a download and a viewer's progress reports in flight.
        download = await SlowReader.get(b.base, url)
        assert download.status == 200
        await download.read_for(0.1, 64 * 1024)
        watching = asyncio.ensure_future(watch(http, b.base, video_id, 5.0, agent=browser(9)))
        await asyncio.sleep(0.2)
        await b.kill()
        assert b.proc.returncode == -signal.SIGKILL
        try:
            await download.read_for(5.0, 10 * 1024 * 1024)
        finally:
            download.close()
        assert download.ended, "a download from the killed node hung"
        assert download.body == reference[:len(download.body)]
        with pytest.raises(aiohttp.ClientError):
            await watching

        # A serves on: the video, its stream, the views counted through B.
        status, _, body = await fetch(http, "GET", a.url(url))
        assert status == 200 and body == reference
        status, _, body = await fetch(http, "GET", a.url(url), {"Range": "bytes=-100"})
        assert status == 206 and body == reference[-100:]
        assert await views_of(http, a.base, video_id) == 2

        # A graceful stop flushes what Redis holds, B's views included.
        await a.stop()
        assert a.proc.returncode == 0, a.log()[-3000:]
        assert await asyncio.to_thread(stored_views, database_url, video_id) == 2
