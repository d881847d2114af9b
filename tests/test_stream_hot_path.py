"""The stream handler's shortcuts answer exactly as the general path would."""

from __future__ import annotations

import asyncio
import logging
import os
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from server.core.ids import parse_video_id
from server.delivery.files import VideoFileCache, video_file
from server.delivery.handler import FILES_KEY, plain_span
from server.delivery.ranges import ByteRange, RangeOutcome, Validators, plan_ranges

from .conftest import fake_mp4, new_user_token, upload_ready

SIZE = 10_000


@pytest.mark.parametrize("header", [
    None, "bytes=0-0", "bytes=0-1023", "bytes=500-", "bytes=9999-", "bytes=9000-999999",
    "bytes=0009-0019", "bytes=10000-", "bytes=20000-30000", "bytes=5-2", "bytes=-500",
    "bytes=0-9,20-29", "BYTES=10-19", "bytes= 10-19", "bytes=10-19 ", "bytes=1-a",
    "bytes=", "bytes=-0", "items=0-10", "bytes=" + "9" * 20 + "-", "bytes=1-" + "9" * 20,
])
@pytest.mark.parametrize("size", [SIZE, 1, 0])
def test_plain_span_agrees_with_plan_ranges(header, size):
    span = plain_span(header, size)
    if span is None:
        return
    first, last, partial = span
    plan = plan_ranges(header, size)
    assert plan.outcome is (RangeOutcome.PARTIAL if partial else RangeOutcome.FULL)
    if partial:
        assert plan.ranges == (ByteRange(first, last),)
    else:
        assert (first, last) == (0, size - 1)


@pytest.mark.parametrize(("header", "span"), [
    (None, (0, SIZE - 1, False)), ("bytes=0-1023", (0, 1023, True)),
    ("bytes=500-", (500, SIZE - 1, True)), ("bytes=9000-999999", (9000, SIZE - 1, True)),
])
def test_plain_span_answers_what_players_send(header, span):
    assert plain_span(header, SIZE) == span


def _video(path: Path):
    return video_file(path.name, path, path.stat().st_size, "video/mp4", Validators('"k"', 0), 60)


def test_descriptor_outlives_eviction_until_released(tmp_path):
    path = tmp_path / "v.mp4"
    path.write_bytes(b"0123456789")
    cache = VideoFileCache()
    first = cache.open(1, _video(path))
    assert cache.open(1, _video(path)) is first  # one descriptor, shared
    first.release()
    cache.evict(1)  # a delete: the cache lets go while a request still sends
    assert os.pread(first.fd, 4, 2) == b"2345"
    first.release()
    with pytest.raises(OSError):
        os.fstat(first.fd)


def test_unlinked_file_counts_as_gone_after_recheck(tmp_path):
    path = tmp_path / "v.mp4"
    path.write_bytes(b"x")
    cache = VideoFileCache(recheck=0)
    cache.open(1, _video(path)).release()
    path.unlink()  # deleted while this process missed the eviction
    with pytest.raises(FileNotFoundError):
        cache.open(1, _video(path))


async def test_file_deleted_behind_the_cache_is_404(client, api_error, config):
    data = fake_mp4(SIZE)
    token = await new_user_token(client)
    video = await upload_ready(client, token, data)
    resp = await client.get(video["stream_url"], headers={"Range": "bytes=0-9"})
    assert resp.status == 206 and await resp.read() == data[:10]
    client.app[FILES_KEY].cache.recheck = 0
    for stored in config.storage_dir.iterdir():
        if stored.is_file():
            stored.unlink()  # as a delete in another process whose eviction never arrived
    resp = await client.get(video["stream_url"], headers={"Range": "bytes=0-9"})
    await api_error(resp, 404, "not_found")


# --- the direct response path, over a real socket ----------------------------------

async def _uploaded(client) -> tuple[bytes, str, str]:
    data = fake_mp4(SIZE)
    token = await new_user_token(client)
    video = await upload_ready(client, token, data)
    return data, video["stream_url"], (await client.get(video["stream_url"])).headers["ETag"]


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    status = await asyncio.wait_for(reader.readline(), 5)
    headers: dict[str, str] = {}
    while (line := await asyncio.wait_for(reader.readline(), 5)) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        assert name not in headers, f"{name} sent twice"
        headers[name] = value.strip()
    length = int(headers.get("Content-Length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 5) if length else b""
    return status.rstrip(), headers, body


def _without_date(headers) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name != "Date"}


@pytest.mark.parametrize("range_header", ["bytes=100-1123", "bytes=9990-", None])
async def test_direct_response_matches_the_general_path(client, range_header):
    """Conditional headers send a request down the general path; the answers agree."""
    data, url, etag = await _uploaded(client)
    plain = {"Range": range_header} if range_header else {}
    direct = await client.get(url, headers=plain)
    general = await client.get(url, headers={**plain, "If-Range": etag,
                                             "If-None-Match": '"something-else"'})
    assert direct.status == general.status == (206 if range_header else 200)
    assert await direct.read() == await general.read()
    assert _without_date(direct.headers) == _without_date(general.headers)
    assert direct.headers["Date"]


async def test_pipelined_requests_answered_in_order(client):
    """Direct and general answers share one connection, each after the one before."""
    data, url, etag = await _uploaded(client)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        request = "GET {} HTTP/1.1\r\nHost: x\r\n{}\r\n"
        writer.write("".join([
            request.format(url, "Range: bytes=0-9\r\n"),
            request.format(url, f"Range: bytes=10-19\r\nIf-Range: {etag}\r\n"),
            request.format(url, "Range: bytes=0-1,5000-5001\r\n"),
            request.format(url, "Range: bytes=20-\r\n"),
            request.format(url, ""),
        ]).encode())
        await writer.drain()
        answers = [await _read_response(reader) for _ in range(5)]
    finally:
        writer.close()
    assert [status for status, _, _ in answers] == [b"HTTP/1.1 206 Partial Content"] * 4 + [
        b"HTTP/1.1 200 OK"]
    assert answers[0][2] == data[0:10]
    assert answers[1][2] == data[10:20]
    assert answers[2][1]["Content-Type"].startswith("multipart/byteranges")
    assert answers[3][2] == data[20:]
    assert answers[4][2] == data


async def test_connection_close_is_honoured(client):
    data, url, _ = await _uploaded(client)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     f"Range: bytes=5-14\r\n\r\n".encode())
        status, headers, body = await _read_response(reader)
        assert status == b"HTTP/1.1 206 Partial Content" and body == data[5:15]
        assert headers["Connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and the server hangs up
    finally:
        writer.close()


async def test_http10_keep_alive_takes_the_general_path(client):
    data, url, _ = await _uploaded(client)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        for _ in range(2):
            writer.write(f"GET {url} HTTP/1.0\r\nConnection: keep-alive\r\n"
                         f"Range: bytes=0-3\r\n\r\n".encode())
            status, headers, body = await _read_response(reader)
            assert status == b"HTTP/1.0 206 Partial Content" and body == data[:4]
            assert headers["Connection"].lower() == "keep-alive"
    finally:
        writer.close()


@pytest.mark.parametrize("extra", [
    "Range: bytes=50-99\r\n",  # the direct path
    "Range: bytes=50-99\r\nIf-Range: {etag}\r\n",  # the general path
    "Range: bytes=0-1,50-99\r\n",  # multipart
    "",  # the whole file
])
async def test_file_shorter_than_promised_ends_the_connection(client, config, caplog, extra):
    """Once a header block is out, a failure may not be followed by another response."""
    data, url, etag = await _uploaded(client)
    (stored,) = [p for p in config.storage_dir.iterdir() if p.is_file()]
    os.truncate(stored, 60)  # damaged behind the database's back
    caplog.set_level(logging.ERROR, logger="server")
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        request = f"GET {url} HTTP/1.1\r\nHost: x\r\n{extra.format(etag=etag)}\r\n".encode()
        writer.write(request + f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        reply = await asyncio.wait_for(reader.read(), 5)  # to EOF: the server hangs up
    finally:
        writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.1 206", b"HTTP/1.1 200"))
    promised = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")))
    assert len(body) < promised
    assert b"HTTP/1.1" not in body  # no second response inside the first one's body
    assert any("failed mid-response" in r.getMessage() for r in caplog.records)


async def test_last_modified_is_never_after_date(client):
    for _ in range(3):
        _, url, _ = await _uploaded(client)
        resp = await client.get(url, headers={"Range": "bytes=0-0"})
        await resp.read()
        assert parsedate_to_datetime(resp.headers["Last-Modified"]) <= \
            parsedate_to_datetime(resp.headers["Date"])


@pytest.mark.parametrize(("raw", "expected"), [
    ("1", 1), ("42", 42), ("999999999999999999", 999999999999999999),
    ("0", None), ("04", None), ("-1", None), ("+1", None), ("1.0", None), ("", None),
    ("\u0661\u0662", None), ("1" * 19, None), (" 1", None),
])
def test_video_ids_have_one_spelling(raw, expected):
    assert parse_video_id(raw) == expected
