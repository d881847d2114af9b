"""RFC 9110 conditional and range requests on /videos/{id}/stream, over real HTTP."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
from email.utils import formatdate

import pytest
from aiohttp import ClientSession

from server.app import create_app
from server.core.keys import DB_KEY

from .conftest import (
    fake_mp4,
    make_ready,
    new_user_token,
    read_until_cut_off,
    upload,
    upload_ready,
)

SIZE = 10_000
DATA = fake_mp4(SIZE)


@pytest.fixture
async def video(client):
    token = await new_user_token(client)
    resp = await upload(client, token, DATA)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    await make_ready(client.server.app, body["id"])
    body["token"] = token
    return body


def parse_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match, content_type
    delimiter = b"--" + match.group(1).encode()
    assert body.startswith(delimiter)
    assert body.endswith(delimiter + b"--\r\n")
    parts = []
    for chunk in body[len(delimiter):].split(b"\r\n" + delimiter)[:-1]:
        head, _, payload = chunk.partition(b"\r\n\r\n")
        headers = {}
        for line in head.strip(b"\r\n").split(b"\r\n"):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, payload))
    return parts


async def test_full_get_has_validators(client, video):
    resp = await client.get(video["stream_url"])
    assert resp.status == 200
    assert await resp.read() == DATA
    assert resp.headers["Content-Length"] == str(SIZE)
    assert resp.headers["Content-Type"] == "video/mp4"
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert re.fullmatch(r'"[^"]+"', resp.headers["ETag"])  # strong
    assert resp.headers["Last-Modified"].endswith("GMT")
    assert "max-age" in resp.headers["Cache-Control"]


async def test_head_has_headers_and_no_body(client, video):
    resp = await client.head(video["stream_url"])
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(SIZE)
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert "ETag" in resp.headers
    assert await resp.read() == b""


@pytest.mark.parametrize("header, start, end", [
    ("bytes=0-1023", 0, 1023),
    ("bytes=0-0", 0, 0),
    ("bytes=500-", 500, SIZE - 1),
    ("bytes=-500", SIZE - 500, SIZE - 1),
    ("bytes=9000-999999", 9000, SIZE - 1),         # last-pos clamped
    ("bytes=-999999", 0, SIZE - 1),                # suffix longer than the file
    ("BYTES=10-19", 10, 19),                       # unit is case-insensitive
    ("bytes= 10 - 19 ", 10, 19),                   # optional whitespace
    ("bytes=0-9,5-19", 0, 19),                     # overlapping ranges merged
    ("bytes=0-9,10-19", 0, 19),                    # adjacent ranges merged
])
async def test_single_range(client, video, header, start, end):
    resp = await client.get(video["stream_url"], headers={"Range": header})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
    assert resp.headers["Content-Length"] == str(end - start + 1)
    assert resp.headers["Content-Type"] == "video/mp4"
    assert "ETag" in resp.headers and "Last-Modified" in resp.headers
    assert await resp.read() == DATA[start:end + 1]


async def test_multiple_ranges_are_multipart(client, video):
    resp = await client.get(video["stream_url"], headers={"Range": "bytes=0-9, 5000-5099,-10"})
    assert resp.status == 206
    body = await resp.read()
    assert int(resp.headers["Content-Length"]) == len(body)
    assert resp.headers["Content-Type"].startswith("multipart/byteranges; boundary=")
    parts = parse_multipart(resp.headers["Content-Type"], body)
    expected = [(0, 9), (5000, 5099), (SIZE - 10, SIZE - 1)]
    assert len(parts) == len(expected)
    for (headers, payload), (start, end) in zip(parts, expected, strict=True):
        assert headers["content-type"] == "video/mp4"
        assert headers["content-range"] == f"bytes {start}-{end}/{SIZE}"
        assert payload == DATA[start:end + 1]


async def test_multipart_keeps_request_order_and_drops_unsatisfiable(client, video):
    resp = await client.get(video["stream_url"],
                            headers={"Range": "bytes=8000-8099,20000-,100-199"})
    assert resp.status == 206
    parts = parse_multipart(resp.headers["Content-Type"], await resp.read())
    assert [h["content-range"] for h, _ in parts] == [
        f"bytes 8000-8099/{SIZE}", f"bytes 100-199/{SIZE}"]


async def test_many_tiny_ranges_do_not_amplify(client, video):
    header = "bytes=" + ",".join(f"{i}-{i}" for i in range(0, 1000, 2))
    resp = await client.get(video["stream_url"], headers={"Range": header})
    # Too many ranges: the header is ignored and the plain representation is sent.
    assert resp.status == 200
    assert await resp.read() == DATA


@pytest.mark.parametrize("header", [
    "bytes=10000-", "bytes=20000-30000", "bytes=-0", "bytes=10000-10000,20000-",
    "bytes=5-2", "bytes=abc", "bytes=1-a", "bytes=", "bytes=--1",
])
async def test_unsatisfiable_or_invalid_is_416(client, video, api_error, header):
    resp = await client.get(video["stream_url"], headers={"Range": header})
    await api_error(resp, 416, "range_not_satisfiable")
    assert resp.headers["Content-Range"] == f"bytes */{SIZE}"
    assert "Cache-Control" not in resp.headers  # a shared cache must not keep it


@pytest.mark.parametrize(("header", "part"), [
    ("bytes=0-1,-0", (0, 1)), ("bytes=-0,100-199", (100, 199)), ("bytes=7-9,5-2", (7, 9)),
])
async def test_ranges_selecting_nothing_leave_the_rest(client, video, header, part):
    resp = await client.get(video["stream_url"], headers={"Range": header})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes {part[0]}-{part[1]}/{SIZE}"
    assert await resp.read() == DATA[part[0]:part[1] + 1]


@pytest.mark.parametrize("header", ["items=0-10", "pages=1", "0-10", "bytes0-10"])
async def test_unknown_unit_is_ignored(client, video, header):
    resp = await client.get(video["stream_url"], headers={"Range": header})
    assert resp.status == 200
    assert await resp.read() == DATA


async def test_head_ignores_range(client, video):
    resp = await client.head(video["stream_url"], headers={"Range": "bytes=0-9"})
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(SIZE)


async def test_conditional_get(client, video):
    first = await client.get(video["stream_url"])
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    await first.read()
    url = video["stream_url"]

    resp = await client.get(url, headers={"If-None-Match": etag})
    assert resp.status == 304
    assert resp.headers["ETag"] == etag
    assert await resp.read() == b""
    resp = await client.get(url, headers={"If-None-Match": f'"nope", W/{etag}'})
    assert resp.status == 304  # weak comparison for If-None-Match
    resp = await client.get(url, headers={"If-None-Match": "*"})
    assert resp.status == 304
    resp = await client.get(url, headers={"If-Modified-Since": modified})
    assert resp.status == 304
    # If-None-Match wins over If-Modified-Since when present.
    resp = await client.get(url, headers={"If-None-Match": '"other"',
                                          "If-Modified-Since": modified})
    assert resp.status == 200
    await resp.read()
    resp = await client.get(url, headers={"If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"})
    assert resp.status == 200
    await resp.read()
    # Evaluated before Range.
    resp = await client.get(url, headers={"If-None-Match": etag, "Range": "bytes=0-1"})
    assert resp.status == 304
    resp = await client.head(url, headers={"If-None-Match": etag})
    assert resp.status == 304


async def test_preconditions_fail_with_412(client, video, api_error):
    first = await client.get(video["stream_url"])
    etag = first.headers["ETag"]
    await first.read()
    url = video["stream_url"]
    resp = await client.get(url, headers={"If-Match": '"something-else"'})
    await api_error(resp, 412, "precondition_failed")
    assert "Cache-Control" not in resp.headers
    resp = await client.get(url, headers={"If-Match": f"W/{etag}"})  # weak never matches
    await api_error(resp, 412)
    resp = await client.get(url, headers={"If-Unmodified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"})
    await api_error(resp, 412)
    resp = await client.get(url, headers={"If-Match": etag, "Range": "bytes=0-1"})
    assert resp.status == 206
    resp = await client.get(url, headers={"If-Match": "*"})
    assert resp.status == 200
    await resp.read()
    future = formatdate(4102444800, usegmt=True)  # 2100
    resp = await client.get(url, headers={"If-Unmodified-Since": future, "Range": "bytes=0-1"})
    assert resp.status == 206
    resp = await client.get(url, headers={"If-Unmodified-Since": "garbage"})
    assert resp.status == 200  # an invalid date is ignored
    await resp.read()


async def test_if_range(client, video):
    first = await client.get(video["stream_url"])
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    await first.read()
    url = video["stream_url"]

    async def status(if_range: str) -> int:
        resp = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": if_range})
        body = await resp.read()
        assert body == (DATA[:10] if resp.status == 206 else DATA)
        return resp.status

    assert await status(etag) == 206
    assert await status(modified) == 206
    assert await status('"stale-etag"') == 200
    assert await status(f"W/{etag}") == 200        # weak validators never match If-Range
    assert await status("Sat, 01 Jan 2000 00:00:00 GMT") == 200
    assert await status("not a date") == 200


@pytest.mark.parametrize("raw", ["999999", "0", "-1", "abc", "1.5", "99999999999999999999999",
                                 "%20", "1e3", "١"])
async def test_unknown_or_malformed_id_is_404(client, api_error, raw):
    resp = await client.get(f"/videos/{raw}/stream")
    await api_error(resp, 404)
    resp = await client.head(f"/videos/{raw}/stream")
    assert resp.status == 404


async def test_stream_needs_no_database_round_trip(client, video):
    """Once a video is known, range requests are served without PostgreSQL."""
    resp = await client.get(video["stream_url"], headers={"Range": "bytes=0-1"})
    assert resp.status == 206
    pool = client.app[DB_KEY].pool
    pool.close()
    await pool.wait_closed()
    for start in range(0, 1000, 100):
        resp = await client.get(video["stream_url"], headers={"Range": f"bytes={start}-"})
        assert resp.status == 206
        assert await resp.read() == DATA[start:]


async def test_delete_evicts_cache_in_every_process(aiohttp_client, config, client, video,
                                                    api_error):
    other = await aiohttp_client(create_app(config))  # a second process on the same Redis
    resp = await other.get(video["stream_url"], headers={"Range": "bytes=0-1"})
    assert resp.status == 206
    resp = await client.delete(f"/videos/{video['id']}",
                               headers={"Authorization": f"Bearer {video['token']}"})
    assert resp.status == 204
    for _ in range(50):
        resp = await other.get(video["stream_url"])
        if resp.status == 404:
            break
        await resp.read()
        await asyncio.sleep(0.05)
    await api_error(resp, 404)
    resp = await client.get(video["stream_url"])
    await api_error(resp, 404)


async def test_client_disconnect_mid_stream_is_quiet(aiohttp_server, config, caplog):
    """A player that abandons a response (to seek) leaves no error in the log."""
    app = create_app(config)
    server = await aiohttp_server(app)
    big = fake_mp4(64 * 1024 * 1024)
    async with ClientSession() as session:
        from .conftest import session_upload

        token, video_id = await session_upload(session, server, big)
        caplog.set_level(logging.DEBUG)
        caplog.clear()
        for _ in range(5):
            async with session.get(server.make_url(f"/videos/{video_id}/stream")) as resp:
                assert resp.status == 200
                await resp.content.readexactly(64 * 1024)
                resp.close()  # drop the connection mid-body
        await asyncio.sleep(0.3)
        async with session.get(server.make_url(f"/videos/{video_id}/stream"),
                               headers={"Range": "bytes=0-99"}) as resp:
            assert resp.status == 206
            assert await resp.read() == big[:100]
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]


async def test_delete_cuts_off_responses_in_flight_everywhere(instance):
    """A player reading one long `bytes=0-` response stops soon after the delete too."""
    writer, reader = await instance(), await instance()
    token = await new_user_token(writer)
    data = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + os.urandom(24 * 2**20)
    video = await upload_ready(writer, token, io.BytesIO(data))  # type: ignore[arg-type]
    resp = await reader.get(video["stream_url"], headers={"Range": "bytes=0-"})
    assert resp.status == 206
    received = len(await resp.content.readexactly(65536))
    deleted = await writer.delete(f"/videos/{video['id']}",
                                  headers={"Authorization": f"Bearer {token}"})
    assert deleted.status == 204
    received = await read_until_cut_off(resp, received)
    assert received < len(data) // 2
