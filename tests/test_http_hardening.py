"""The HTTP server under the app: request head timeout, HTTP versions, nosniff.

Tests that need the production server build run the app with server.core.http.AppRunner,
as `python -m server` does, on a free port; one runs `python -m server` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from server.app import create_app
from server.core import http
from server.core.config import Config

from .conftest import REDIS_URL, fake_mp4, new_user_token, upload_ready

SLACK = 1.5  # scheduling on a shared 2-core machine
ROOT = Path(__file__).resolve().parent.parent


class Records(logging.Handler):
    """The messages of one logger, kept for a test to read."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class Served:
    """An app served by the production server build on 127.0.0.1, on a free port."""

    app: web.Application
    port: int
    access: list[str] = field(default_factory=list)

    def make_url(self, path: str) -> URL:
        return URL(f"http://127.0.0.1:{self.port}{path}")

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(make_config: Callable[..., Config]) -> AsyncIterator[Serve]:
    """Serves create_app(config) with server.core.http.AppRunner; the access log is kept."""
    runners: list[http.AppRunner] = []

    async def start(**overrides: Any) -> Served:
        config = make_config(**overrides)
        app = create_app(config)
        access = logging.getLogger(f"tests.access.{secrets.token_hex(4)}")
        access.setLevel(logging.INFO)
        access.propagate = False
        records = Records()
        access.addHandler(records)
        runner = http.AppRunner(app, header_timeout=config.header_timeout, access_log=access,
                                access_log_format='%s %b "%r"', shutdown_timeout=2)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return Served(app, runner.addresses[0][1], records.lines)

    yield start
    for runner in runners:
        await runner.cleanup()


async def read_response(reader: asyncio.StreamReader,
                        within: float = 5) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length: status, headers (lower-case names), body."""
    status_line = await asyncio.wait_for(reader.readline(), within)
    assert status_line, "the server closed the connection"
    headers: dict[str, str] = {}
    while (line := await asyncio.wait_for(reader.readline(), within)) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), within) if length else b""
    return int(status_line.split()[1]), headers, body


async def closed_after(reader: asyncio.StreamReader, within: float) -> tuple[float, bytes]:
    """Seconds until the server closed the connection, and what it sent before."""
    started = time.monotonic()
    try:
        data = await asyncio.wait_for(reader.read(), within)
    except ConnectionResetError:
        data = b""
    return time.monotonic() - started, data


# --- the request head timeout -------------------------------------------------------

HEAD = b"GET /videos HTTP/1.1\r\nHost: x\r\n"  # never finished: no blank line


async def dribble(writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
    """Send `data` a byte at a time, as a slowloris client does, until the server hangs up."""
    try:
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(every)
    except ConnectionError:
        pass


async def test_slow_request_heads_are_cut_off_while_others_are_served(serve):
    timeout = 2.0
    served = await serve(header_timeout=timeout)
    slow = [await served.connect() for _ in range(50)]
    silent = [await served.connect() for _ in range(5)]  # connect and send nothing at all
    feeders = [asyncio.create_task(dribble(w, HEAD, 1.0)) for _, w in slow]
    try:
        waits = [asyncio.create_task(closed_after(r, timeout + 10)) for r, _ in slow + silent]
        await asyncio.sleep(1.0)
        # Meanwhile a normal client is served at once, on a connection of its own.
        reader, writer = await served.connect()
        writer.write(b"GET /videos HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await read_response(reader, within=2)
        assert status == 200 and "items" in json.loads(body)
        writer.close()
        results = await asyncio.gather(*waits)
    finally:
        for task in feeders:
            task.cancel()
        for _, w in slow + silent:
            w.close()
    # Each connection was closed by the server (without an answer), one timeout after it
    # opened: not at once, and not after aiohttp's 75 s keep-alive timeout.
    seconds = sorted(elapsed for elapsed, _ in results)
    assert all(data == b"" for _, data in results)
    assert seconds[0] >= timeout - 0.5, seconds
    assert seconds[-1] <= timeout + SLACK, seconds


async def test_idle_keep_alive_connection_is_kept_past_the_header_timeout(serve):
    served = await serve(header_timeout=1.0)
    reader, writer = await served.connect()
    try:
        for _ in range(2):
            writer.write(b"GET /videos HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = await read_response(reader)
            assert status == 200 and headers.get("connection") != "close"
            await asyncio.sleep(2.5)  # idle between requests: aiohttp's keepalive_timeout
    finally:
        writer.close()


async def test_slow_head_after_a_response_is_cut_off(serve):
    """On a kept-alive connection the timeout runs from the next head's first byte."""
    timeout = 1.0
    served = await serve(header_timeout=timeout)
    reader, writer = await served.connect()
    try:
        writer.write(b"GET /videos HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        await asyncio.sleep(timeout + 0.5)  # idle: still open
        feeder = asyncio.create_task(dribble(writer, HEAD, 0.3))
        elapsed, data = await closed_after(reader, timeout + 10)
        feeder.cancel()
    finally:
        writer.close()
    assert data == b""
    assert timeout - 0.3 <= elapsed <= timeout + SLACK


async def test_slow_body_is_not_cut_off(serve):
    """The timeout is for the head: a body may take its time."""
    served = await serve(header_timeout=1.0)
    body = json.dumps({"email": "nobody@example.com", "password": "not the password"}).encode()
    reader, writer = await served.connect()
    try:
        writer.write(b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        started = time.monotonic()
        await dribble(writer, body, 2.5 / len(body))
        status, headers, answer = await read_response(reader)
    finally:
        writer.close()
    assert time.monotonic() - started >= 2.0
    assert status == 401, answer
    assert json.loads(answer)["error"]["code"] == "invalid_credentials"


# --- HTTP versions ---------------------------------------------------------------------

@pytest.mark.parametrize("request_line", [
    b"GET /videos HTTP/2.0",
    b"GET /videos HTTP/0.9",
    b"GET /videos",  # no version: the parser reads it as HTTP/0.9
])
async def test_unsupported_http_versions_get_505(serve, request_line):
    served = await serve()
    reader, writer = await served.connect()
    try:
        writer.write(request_line + b"\r\nHost: x\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 5)  # to EOF: the server hangs up
    finally:
        writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in
               (line.partition(":") for line in lines)}
    # The status line names a version this server speaks, not the client's.
    assert status_line == "HTTP/1.0 505 HTTP Version Not Supported"
    assert headers["connection"] == "close"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == "http_version_not_supported" and error["message"]


async def test_supported_versions_are_answered_and_others_never_200(serve):
    served = await serve()
    for raw, expected in [
        (b"GET /videos HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"GET /videos HTTP/1.0\r\n\r\n", 200),
        (b"GET /videos HTTP/1.2\r\nHost: x\r\n\r\n", 400),  # the parser refuses it
        (b"POST /auth/login HTTP/2.0\r\nContent-Length: 2\r\n\r\n{}", 505),
    ]:
        reader, writer = await served.connect()
        try:
            writer.write(raw)
            status, _, _ = await read_response(reader)
        finally:
            writer.close()
        assert status == expected, raw


async def test_bad_version_after_a_good_request_on_one_connection(serve):
    served = await serve()
    reader, writer = await served.connect()
    try:
        writer.write(b"GET /videos HTTP/1.1\r\nHost: x\r\n\r\nGET /videos HTTP/2.0\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        assert (await read_response(reader))[0] == 505
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


# --- the production entry point ---------------------------------------------------------

@contextlib.asynccontextmanager
async def python_m_server(config: Config, **env: str) -> AsyncIterator[int]:
    """`python -m server` on the test database and Redis prefix; yields its port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    environ = {
        **os.environ, "HOST": "127.0.0.1", "PORT": str(port),
        "DATABASE_URL": config.database_url, "REDIS_URL": REDIS_URL,
        "REDIS_PREFIX": config.redis_prefix, "STORAGE_DIR": str(config.storage_dir),
        "JWT_SECRET": config.jwt_secret, "ACCESS_LOG": "0", "LOG_LEVEL": "WARNING", **env,
    }
    log_path = config.storage_dir.parent / f"server-{port}.log"
    with open(log_path, "wb") as log_file:  # noqa: ASYNC230 (a local file, opened once)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", cwd=ROOT, env=environ, stdout=log_file,
            stderr=log_file)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            if proc.returncode is not None:
                raise AssertionError(log_path.read_text())
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the server process did not start")
        yield port
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def test_python_m_server_has_the_header_timeout_and_version_check(make_config):
    async with python_m_server(make_config(), HEADER_TIMEOUT="1") as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        feeder = asyncio.create_task(dribble(writer, HEAD, 0.3))
        elapsed, data = await closed_after(reader, 10)
        feeder.cancel()
        writer.close()
        assert data == b"" and elapsed <= 1 + SLACK
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /videos HTTP/2.0\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert reply.startswith(b"HTTP/1.0 505 "), reply[:200]


# --- X-Content-Type-Options -------------------------------------------------------------

async def test_json_responses_and_errors_say_nosniff(client):
    token = await new_user_token(client)
    answers = [
        await client.get("/videos"),
        await client.get("/videos/999999"),
        await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"}),
        await client.get("/auth/me"),
        await client.post("/auth/login", data=b"{not json",
                          headers={"Content-Type": "application/json"}),
        await client.delete("/nowhere"),
    ]
    for resp in answers:
        assert resp.content_type == "application/json", (resp.url, resp.status)
        assert resp.headers.get("X-Content-Type-Options") == "nosniff", (resp.url, resp.status)
    assert [r.status for r in answers] == [200, 404, 200, 401, 400, 404]


SIZE = 10_000


@pytest.mark.parametrize(("method", "headers", "status"), [
    ("GET", {}, 200),  # the direct path
    ("GET", {"Range": "bytes=0-99"}, 206),  # the direct path
    ("HEAD", {}, 200),
    ("GET", {"Range": "bytes=0-9,100-109"}, 206),
    ("GET", {"Range": "bytes=0-99", "If-Range": "{etag}"}, 206),
    ("GET", {"If-None-Match": "{etag}"}, 304),
    ("GET", {"If-Match": '"other"'}, 412),
    ("GET", {"Range": "bytes=99999-"}, 416),
])
async def test_every_stream_response_says_nosniff(client, method, headers, status):
    token = await new_user_token(client)
    video = await upload_ready(client, token, fake_mp4(SIZE))
    etag = (await client.head(video["stream_url"])).headers["ETag"]
    resp = await client.request(method, video["stream_url"],
                                headers={k: v.format(etag=etag) for k, v in headers.items()})
    await resp.read()
    assert resp.status == status
    assert resp.headers.getall("X-Content-Type-Options") == ["nosniff"]
