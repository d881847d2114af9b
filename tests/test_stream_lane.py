"""The stream's fast lane (server.delivery.lane) on the production server build.

Every request is sent as raw bytes over a real socket to the app served by
server.core.http.AppRunner (as `python -m server` serves it, access log off), and
compared with the same bytes sent to the app on aiohttp's plain test server, which
has no lane: what the lane takes must be answered byte for byte as the handler
answers it (the Date aside), and what it does not take must reach aiohttp intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from server.app import create_app
from server.core import http
from server.core.config import Config
from server.core.http import LANE_KEY, REQUEST_STATS_KEY
from server.delivery.handler import FILES_KEY
from server.delivery.lane import StreamLane

from .conftest import fake_mp4, new_user_token, require_tool, upload_ready
from .test_http_hardening import read_response
from .test_private_stream import bearer

SIZE = 200_000
BIG = 16 * 1024 * 1024  # more than a loopback socket takes at once


@dataclass
class Lane:
    """The app on the production build, and the same app on aiohttp's test server."""

    app: web.Application
    port: int
    plain_port: int
    video: dict[str, Any]
    data: bytes
    token: str

    async def big_video(self, client: Any, seed: int) -> tuple[bytes, dict[str, Any], str]:
        """A BIG video (more than a socket takes at once), cached in the lane's process:
        its bytes, its JSON and its stream's path."""
        data = fake_mp4(BIG, seed=seed)
        video = await upload_ready(client, self.token, io.BytesIO(data))  # type: ignore[arg-type]
        path = f"/videos/{video['id']}/stream"
        await self.exchange(get(path, "Range: bytes=0-0"))
        return data, video, path

    @property
    def lane(self) -> StreamLane:
        lane = self.app[LANE_KEY]
        assert isinstance(lane, StreamLane)
        return lane

    async def exchange(self, raw: bytes, *, plain: bool = False,
                       within: float = 5) -> tuple[int, dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.plain_port if plain else self.port)
        try:
            writer.write(raw)
            if raw.startswith(b"HEAD "):  # a header block and no body
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), within)
                return int(head.split()[1]), {}, head.split(b"\r\n")[0]
            return await read_response(reader, within)
        finally:
            writer.close()

    async def both(self, raw: bytes) -> tuple[tuple[int, dict[str, str], bytes], bool]:
        """The production build's answer, checked against the plain server's; and whether
        the lane took it."""
        before = self.lane.taken
        answer = await self.exchange(raw)
        taken = self.lane.taken > before
        plain = await self.exchange(raw, plain=True)
        status, headers, body = answer
        assert status == plain[0], (raw, answer[:2], plain[:2])
        assert body == plain[2]
        assert without_date(headers) == without_date(plain[1])
        return answer, taken


def without_date(headers: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name != "date"}


def get(path: str, *fields: str, version: str = "1.1", method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.fixture
async def served(client: Any, make_config: Callable[..., Config],
                 config: Config) -> AsyncIterator[Callable[..., Any]]:
    runners: list[http.AppRunner] = []

    async def start(metrics: bool = False, **runner_args: Any) -> Lane:
        token = await new_user_token(client)
        data = fake_mp4(SIZE)
        video = await upload_ready(client, token, data)
        app = create_app(make_config(metrics_token="t" * 32) if metrics else config)
        runner = http.AppRunner(app, header_timeout=runner_args.pop("header_timeout", 10.0),
                                access_log=None, shutdown_timeout=2, **runner_args)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        lane = Lane(app, runner.addresses[0][1], client.server.port, video, data, token)
        # The first request loads the video into the process's cache (aiohttp answers it).
        status, _, _ = await lane.exchange(get(f"/videos/{video['id']}/stream",
                                               "Range: bytes=0-0"))
        assert status == 206
        return lane

    yield start
    for runner in runners:
        await runner.cleanup()


TAKEN = [
    (),
    ("Range: bytes=0-1023",),
    ("Range: bytes=1000-",),
    ("Range: bytes=199999-",),
    ("Range: bytes=150000-999999",),
    ("range:bytes=5-5",),
    ("RANGE: \t bytes=10-20 \t",),
    ("Range: bytes=0009-0019",),
    ("Connection: keep-alive", "Range: bytes=0-99"),
    ("User-Agent: Lavf/59.27.100", "Accept: */*", "Range: bytes=0-", "Icy-MetaData: 1"),
    ("Accept-Encoding: identity;q=1, *;q=0", "Referer: http://127.0.0.1/watch/1",
     "Cookie: a=b", "Sec-Fetch-Dest: video", "Range: bytes=0-"),
    ("X-Obs-Text: caf\xe9",),
]


@pytest.mark.parametrize("fields", TAKEN)
async def test_the_lane_answers_as_the_handler_does(served, fields):
    lane = await served()
    (status, headers, body), taken = await lane.both(
        get(f"/videos/{lane.video['id']}/stream", *fields))
    assert taken, fields
    assert status in (200, 206)
    assert headers["x-content-type-options"] == "nosniff"
    if status == 206:
        first, last = map(int, headers["content-range"].split()[1].split("/")[0].split("-"))
        assert body == lane.data[first:last + 1]
    else:
        assert body == lane.data


@pytest.mark.parametrize("raw", [
    "HEAD {p} HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET {p} HTTP/1.0\r\nHost: x\r\n\r\n",
    "GET {p}?t=1 HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET http://127.0.0.1{p} HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET {p} HTTP/1.1\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nRange: bytes=2-3\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1,5-9\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\nRange: bytes=-100\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\nRange: bytes=300000-\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\nRange: bytes=9-1\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\nRange: items=0-1\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\nIf-Range: \"nope\"\r\nRange: bytes=0-9\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\nIf-None-Match: *\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: Tue, 01 Dec 2099 00:00:00 GMT\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\nHost : y\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\nX-A: b\nRange: bytes=0-1\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\nX-A: \x01\r\n\r\n",
    "GET /videos/0{id}/stream HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /videos/999999/stream HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /videos/{id}/stream/ HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET //videos/{id}/stream HTTP/1.1\r\nHost: x\r\n\r\n",
    "get {p} HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\nProxy-Connection: close\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\n" + "X-Many: 1\r\n" * 130 + "\r\n",
])
async def test_what_the_lane_leaves_is_answered_by_aiohttp(served, raw):
    lane = await served()
    video_id = lane.video["id"]
    request = raw.format(p=f"/videos/{video_id}/stream", id=video_id).encode("latin-1")
    before = lane.lane.taken
    answer = await lane.exchange(request)
    assert lane.lane.taken == before, raw
    plain = await lane.exchange(request, plain=True)
    assert answer[0] == plain[0], (raw, answer[:2], plain[:2])
    assert answer[2] == plain[2]
    assert answer[0] != 500


async def test_a_private_video_is_left_to_the_handler(served, client):
    lane = await served()
    resp = await client.patch(f"/videos/{lane.video['id']}", json={"visibility": "private"},
                              headers=bearer(lane.token))
    assert resp.status == 200, await resp.text()
    path = f"/videos/{lane.video['id']}/stream"
    for _ in range(50):  # the change reaches the second instance through the change feed
        status, _, _ = await lane.exchange(get(path))
        if status != 200:
            break
        await asyncio.sleep(0.05)
    before = lane.lane.taken
    status, _, body = await lane.exchange(get(path))
    assert status in (401, 403, 404)
    assert lane.lane.taken == before
    assert b'"error"' in body


async def test_one_connection_goes_on_through_aiohttp_after_another_request(served):
    lane = await served()
    path = f"/videos/{lane.video['id']}/stream"
    reader, writer = await asyncio.open_connection("127.0.0.1", lane.port)
    try:
        before = lane.lane.taken
        for first in (0, 5000, 100, 199_000):
            writer.write(get(path, f"Range: bytes={first}-{first + 999}"))
            status, headers, body = await read_response(reader)
            assert status == 206
            assert body == lane.data[first:first + 1000]
        assert lane.lane.taken == before + 4
        writer.write(get(f"/videos/{lane.video['id']}"))
        status, headers, body = await read_response(reader)
        assert status == 200 and headers["content-type"].startswith("application/json")
        writer.write(get(path, "Range: bytes=10-19"))
        status, _, body = await read_response(reader)
        assert (status, body) == (206, lane.data[10:20])
        assert lane.lane.taken == before + 4  # aiohttp has the connection now
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order(served):
    lane = await served()
    path = f"/videos/{lane.video['id']}/stream"
    reader, writer = await asyncio.open_connection("127.0.0.1", lane.port)
    try:
        writer.write(get(path, "Range: bytes=0-9") + get(path, "Range: bytes=20-29")
                     + get(f"/videos/{lane.video['id']}"))
        assert (await read_response(reader))[2] == lane.data[0:10]
        assert (await read_response(reader))[2] == lane.data[20:30]
        assert (await read_response(reader))[0] == 200
    finally:
        writer.close()


async def test_connection_close_is_honoured(served):
    lane = await served()
    reader, writer = await asyncio.open_connection("127.0.0.1", lane.port)
    before = lane.lane.taken
    writer.write(get(f"/videos/{lane.video['id']}/stream", "Connection: close",
                     "Range: bytes=0-9"))
    status, headers, body = await read_response(reader)
    assert (status, headers["connection"], body) == (206, "close", lane.data[:10])
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert lane.lane.taken == before + 1
    writer.close()


async def test_a_body_larger_than_the_socket_takes_goes_out_whole_before_the_next(
        served, client, tmp_path):
    lane = await served()
    data, video, path = await lane.big_video(client, seed=7)
    reader, writer = await asyncio.open_connection("127.0.0.1", lane.port, limit=2**26)
    try:
        before = lane.lane.taken
        writer.write(get(path))
        await asyncio.sleep(0.3)  # the socket fills; the rest waits for this reader
        writer.write(get(path, "Range: bytes=100-199"))  # must wait for the body
        status, headers, body = await read_response(reader, within=30)
        assert (status, int(headers["content-length"])) == (200, BIG)
        assert body == data
        status, _, body = await read_response(reader)
        assert (status, body) == (206, data[100:200])
        assert lane.lane.taken == before + 2
    finally:
        writer.close()
    files = lane.app[FILES_KEY].cache
    handle = files._files.get(video["id"])
    assert handle is not None and handle.refs == 1  # every response released the file


async def test_a_slow_reader_of_a_long_body_is_not_cut_off_by_idle_timers(served, client):
    # Both timers look for a connection idle between requests; a lane response in
    # progress is not one, however long it takes.
    lane = await served(keepalive_timeout=0.5, header_timeout=0.5)
    data, video, path = await lane.big_video(client, seed=9)
    reader, writer = await asyncio.open_connection("127.0.0.1", lane.port, limit=2**16)
    try:
        before = lane.lane.taken
        writer.write(get(path))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ")
        body = bytearray()
        loop = asyncio.get_running_loop()
        started = loop.time()
        while len(body) < BIG:
            chunk = await asyncio.wait_for(reader.read(256 * 1024), 5)
            assert chunk, f"cut off after {len(body)} bytes"
            body += chunk
            if loop.time() - started < 2.0:
                await asyncio.sleep(0.05)  # slower than the timers
        assert bytes(body) == data
        assert lane.lane.taken == before + 1
        writer.write(get(path, "Range: bytes=5-9"))  # and the connection is still good
        assert (await read_response(reader))[2] == data[5:10]
    finally:
        writer.close()


async def test_a_client_gone_mid_body_releases_the_file(served, client):
    lane = await served()
    data, video, path = await lane.big_video(client, seed=3)
    reader, writer = await asyncio.open_connection("127.0.0.1", lane.port)
    writer.write(get(path))
    await reader.readexactly(1000)
    writer.transport.abort()
    handle = lane.app[FILES_KEY].cache._files.get(video["id"])
    assert handle is not None
    for _ in range(100):
        if handle.refs == 1 and not handle.streams:
            break
        await asyncio.sleep(0.05)
    assert handle.refs == 1 and not handle.streams
    status, _, body = await lane.exchange(get(path, "Range: bytes=0-9"))
    assert (status, body) == (206, data[:10])


async def test_a_delete_cuts_off_a_lane_response_in_flight(served, client):
    lane = await served()
    data, video, path = await lane.big_video(client, seed=5)
    reader, writer = await asyncio.open_connection("127.0.0.1", lane.port)
    before = lane.lane.taken
    writer.write(get(path))
    await reader.readexactly(1000)
    assert lane.lane.taken == before + 1
    resp = await client.delete(f"/videos/{video['id']}", headers=bearer(lane.token))
    assert resp.status == 204
    received = 1000
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            received += len(chunk)
    assert received < BIG  # cut off, not sent whole
    writer.close()
    status, _, _ = await lane.exchange(get(path))
    assert status == 404


async def test_idle_lane_connections_keep_the_keep_alive_and_header_timeouts(served):
    lane = await served(keepalive_timeout=1.0, header_timeout=1.0)
    path = f"/videos/{lane.video['id']}/stream"
    reader, writer = await asyncio.open_connection("127.0.0.1", lane.port)
    writer.write(get(path, "Range: bytes=0-9"))
    assert (await read_response(reader))[0] == 206
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # idle: closed by keep-alive
    assert asyncio.get_running_loop().time() - started < 3
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", lane.port)
    writer.write(get(path, "Range: bytes=0-9"))
    assert (await read_response(reader))[0] == 206
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert asyncio.get_running_loop().time() - started < 3
    writer.close()


async def test_lane_answers_are_counted_under_the_stream_route(served):
    lane = await served(metrics=True)
    route = next(r for r in lane.app[REQUEST_STATS_KEY] if r.label == "/videos/{id}/stream")
    before = route.statuses[206]
    (status, _, _), taken = await lane.both(
        get(f"/videos/{lane.video['id']}/stream", "Range: bytes=0-9"))
    assert taken and status == 206
    assert route.statuses[206] == before + 1


async def test_the_access_log_gets_the_same_line_from_the_lane(client, config):
    app = create_app(config)
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    access = logging.getLogger("tests.lane.access")
    access.setLevel(logging.INFO)
    access.propagate = False
    access.addHandler(Keep())
    runner = http.AppRunner(app, header_timeout=10.0, access_log=access,
                            access_log_format='%a %s %b "%r" "%{User-Agent}i" "%{Referer}i"')
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        token = await new_user_token(client)
        data = fake_mp4(SIZE)
        video = await upload_ready(client, token, data)
        for _ in range(2):  # aiohttp answers the first (a cache miss), the lane the second
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get(f"/videos/{video['id']}/stream", "Range: bytes=0-99",
                             "user-agent: test/1.0"))
            assert (await read_response(reader))[2] == data[:100]
            writer.close()
        assert app[LANE_KEY].taken == 1  # type: ignore[attr-defined]
        assert len(records) == 2 and records[0] == records[1]
        assert records[1].startswith("127.0.0.1 206 ")
        assert records[1].endswith(
            f'"GET /videos/{video["id"]}/stream HTTP/1.1" "test/1.0" "-"')
    finally:
        await runner.cleanup()


async def test_curl_resumes_a_download_through_the_lane(served, tmp_path):
    curl = require_tool("curl")
    lane = await served()
    url = f"http://127.0.0.1:{lane.port}/videos/{lane.video['id']}/stream"
    out = tmp_path / "part.mp4"
    out.write_bytes(lane.data[:123_457])
    before = lane.lane.taken
    done = await asyncio.to_thread(
        subprocess.run, [curl, "-sS", "-f", "-C", "-", "-o", str(out), url],
        capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == lane.data
    assert lane.lane.taken == before + 1


async def test_the_text_access_line_is_aiohttps_default_line(client, config):
    """TextAccessLogger writes aiohttp's default format itself; the lines must not differ."""
    from aiohttp.web_log import AccessLogger

    from server.core.logs import TextAccessLogger

    lines: dict[type, list[str]] = {AccessLogger: [], TextAccessLogger: []}
    token = await new_user_token(client)
    video = await upload_ready(client, token, fake_mp4(SIZE))
    for cls, records in lines.items():

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord, records: list[str] = records) -> None:
                records.append(record.getMessage())

        access = logging.getLogger(f"tests.lane.text.{cls.__name__}")
        access.setLevel(logging.INFO)
        access.propagate = False
        access.addHandler(Keep())
        app = create_app(config)
        runner = http.AppRunner(app, header_timeout=10.0, access_log=access,
                                access_log_class=cls)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            port = runner.addresses[0][1]
            for raw in (get(f"/videos/{video['id']}/stream", "Range: bytes=0-99",
                            "Referer: http://x/watch/1", "User-Agent: mpv 0.35"),
                        get(f"/videos/{video['id']}/stream", "Range: bytes=0-99"),
                        get("/videos?limit=1", "User-Agent: curl/8"),
                        get("/nowhere", version="1.0")):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(raw)
                await read_response(reader)
                writer.close()
            for _ in range(50):
                if len(records) == 4:
                    break
                await asyncio.sleep(0.02)
        finally:
            await runner.cleanup()

    def timeless(line: str) -> str:  # the two runs differ in their second
        return line.split("] ", 1)[1] if "] " in line else line

    assert len(lines[TextAccessLogger]) == 4
    assert [timeless(line) for line in lines[TextAccessLogger]] == [
        timeless(line) for line in lines[AccessLogger]]
    assert lines[TextAccessLogger][0].startswith("127.0.0.1 [")
    assert lines[TextAccessLogger][0].endswith(
        f'"GET /videos/{video["id"]}/stream HTTP/1.1" 206 {lines[AccessLogger][0].split()[-4]}'
        ' "http://x/watch/1" "mpv 0.35"')
