"""Resumable uploads (tus 1.0): tuspy and raw HTTP against a real server, PostgreSQL and disk."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import os
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError
from tusclient.storage.filestorage import FileStorage

from server.app import create_app
from server.core import http
from server.core.config import RateSpec
from server.core.errors import ApiError
from server.core.keys import CONFIG_KEY
from server.ingest import tus_rules, tus_store
from server.ingest.tus_rules import (
    Checksum,
    cors_headers,
    parse_checksum,
    parse_integer,
    parse_metadata,
    video_fields,
)

from .conftest import fake_mp4, new_user_token, query

OCTETS = "application/offset+octet-stream"
FRONT = "https://front.example"


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def tus(token: str | None = None, **headers: str) -> dict[str, str]:
    out = {"Tus-Resumable": "1.0.0"}
    if token is not None:
        out["Authorization"] = f"Bearer {token}"
    out.update({name.replace("_", "-"): value for name, value in headers.items()})
    return out


async def create(client: TestClient, token: str, length: int, title: str = "A clip",
                 **headers: str) -> str:
    resp = await client.post("/uploads", headers=tus(
        token, Upload_Length=str(length), Upload_Metadata=f"title {b64(title)}", **headers))
    assert resp.status == 201, await resp.text()
    return resp.headers["Location"]


async def patch(client: TestClient, token: str, location: str, offset: int,
                data: bytes, **headers: str) -> Any:
    return await client.patch(location, data=data, headers=tus(
        token, Upload_Offset=str(offset), Content_Type=OCTETS, **headers))


async def head(client: TestClient, token: str, location: str) -> Any:
    return await client.head(location, headers=tus(token))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_original(database_url: str, storage_dir: Path, video_id: int) -> bytes:
    [(key, original, status)] = query(
        database_url, "SELECT storage_key, original_key, status FROM videos WHERE id = %s",
        (video_id,))
    return (storage_dir / (original or key)).read_bytes()


class KeptOpen(io.BytesIO):
    """A file for tuspy, which closes a stream it was given once it has its fingerprint."""

    def close(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass


def upload_id(location: str) -> str:
    return location.rsplit("/", 1)[1]


class RawConnection:
    """One HTTP/1.1 request written by hand, so a test can stop it mid-body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, client: TestClient) -> RawConnection:
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, str, dict[str, str], bytes]:
        raw = await asyncio.wait_for(self.reader.read(), 10)
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        _, status, reason = (lines[0].split(" ", 2) + [""])[:3]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status), reason, headers, body

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def request_head(method: str, path: str, headers: list[tuple[str, bytes | str]]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: test", b"Connection: close"]
    for name, value in headers:
        lines.append(name.encode() + b": " + (value if isinstance(value, bytes)
                                              else value.encode()))
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def raw_request(client: TestClient, method: str, path: str,
                      headers: list[tuple[str, bytes | str]],
                      body: bytes = b"") -> tuple[int, str, dict[str, str], bytes]:
    conn = await RawConnection.open(client)
    try:
        await conn.send(request_head(method, path, headers) + body)
        return await conn.response()
    finally:
        await conn.close()


async def start_patch(client: TestClient, token: str, location: str, offset: int,
                      declared: int, first: bytes) -> RawConnection:
    """A PATCH whose body has only begun: `first` of `declared` bytes sent."""
    conn = await RawConnection.open(client)
    await conn.send(request_head("PATCH", location, [
        ("Tus-Resumable", "1.0.0"), ("Authorization", f"Bearer {token}"),
        ("Content-Type", OCTETS), ("Upload-Offset", str(offset)),
        ("Content-Length", str(declared)),
    ]) + first)
    return conn


async def offset_becomes(client: TestClient, token: str, location: str, expected: int,
                         within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while True:
        resp = await head(client, token, location)
        if resp.status == 200 and int(resp.headers["Upload-Offset"]) == expected:
            return
        assert time.monotonic() < deadline, (resp.status, dict(resp.headers))
        await asyncio.sleep(0.05)


class ProductionServer(TestServer):
    """The app as `python -m server` runs it: a client that goes away mid-request does
    not cancel its handler (aiohttp's test server cancels it)."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        kwargs.pop("handler_cancellation", None)
        return http.AppRunner(self.app, header_timeout=10.0, **kwargs)


@pytest.fixture(params=["test-server", "production-server"])
async def served(request, aiohttp_client, make_config) -> TestClient:
    """A client of the app on either server: both ways of noticing a dropped client."""
    app = create_app(make_config())
    if request.param == "test-server":
        return await aiohttp_client(app)
    return await aiohttp_client(ProductionServer(app))


# --- pure header rules -----------------------------------------------------

@pytest.mark.parametrize("value", [
    None, "", " ", "-1", "+1", "1.0", "1e3", "0x10", "1 2", "99999999999999999999",
    "9223372036854775808", "\u0661\u0662", "\uff11", "12\x00",
])
def test_integer_headers_refuse_anything_but_plain_digits(value):
    with pytest.raises(ApiError) as caught:
        parse_integer(value, "Upload-Offset")
    assert caught.value.status == 400


@pytest.mark.parametrize("value, expected", [
    ("0", 0), ("007", 7), ("9223372036854775807", 2**63 - 1),
])
def test_integer_headers(value, expected):
    assert parse_integer(value, "Upload-Length") == expected


@pytest.mark.parametrize("value, expected", [
    (None, {}),
    ("", {}),
    (f"title {b64('Hi')}", {"title": b"Hi"}),
    (f"title {b64('Hi')},is_private", {"title": b"Hi", "is_private": None}),
    (f" title {b64('Hi')} , filename {b64('a.mp4')}", {"title": b"Hi", "filename": b"a.mp4"}),
    (f"title {b64('Ünïcødé ✓')}", {"title": "Ünïcødé ✓".encode()}),
    ("empty ", {"empty": None}),
])
def test_metadata(value, expected):
    assert parse_metadata(value) == expected


@pytest.mark.parametrize("value", [
    "title !!!!",             # not base64
    "title YWJj=",            # bad padding
    "title YQ",               # unpadded
    f"title {b64('a')},title {b64('b')}",
    "ti tle YQ==",
    f"title {b64('a')} extra",
    ",",
    "t\u00eftle YQ==",        # non-ASCII key
    "title Y\u00e9==",        # non-ASCII value
    ",".join(f"k{i} YQ==" for i in range(40)),
])
def test_malformed_metadata_is_400(value):
    with pytest.raises(ApiError) as caught:
        parse_metadata(value)
    assert caught.value.status == 400


@pytest.mark.parametrize("metadata, fields, filename", [
    ({"title": b"T", "description": b"D"}, {"title": "T", "description": "D"}, None),
    ({"filename": b"holiday.mov"}, {"title": "holiday", "description": ""}, "holiday.mov"),
    ({"name": b"C:\\clips\\a.b.mp4"}, {"title": "a.b", "description": ""}, "C:\\clips\\a.b.mp4"),
    ({"title": b"  ", "filename": b".hidden"}, {"title": ".hidden", "description": ""},
     ".hidden"),
    ({}, {"title": "", "description": ""}, None),
])
def test_video_fields_from_metadata(metadata, fields, filename):
    assert video_fields(metadata) == (fields, filename)


def test_metadata_that_is_not_utf8_is_422():
    with pytest.raises(ApiError) as caught:
        video_fields({"title": b"\xff\xfe"})
    assert caught.value.status == 422


@pytest.mark.parametrize("value", [
    "sha1", "crc32 AAAA", "sha1 !!!!", f"sha1 {b64('short')}", "sha1  x", "",
    f"sha1 {b64(hashlib.sha1().digest())} more",
])
def test_malformed_checksums_are_400(value):
    with pytest.raises(ApiError) as caught:
        parse_checksum(value)
    assert caught.value.status == 400


def test_checksums():
    digest = hashlib.md5(b"abc").digest()
    assert parse_checksum(f"MD5 {b64(digest)}") == Checksum("md5", digest)
    assert parse_checksum(None) is None


@pytest.mark.parametrize("origin, allowed, preflight, expected", [
    (None, ("https://a.example",), False, {}),
    ("https://b.example", ("https://a.example",), False, {}),
    ("not an origin", ("*",), False, {}),
    ("https://a.example", ("https://a.example/",), False,
     {"Access-Control-Allow-Origin": "https://a.example", "Vary": "Origin",
      "Access-Control-Expose-Headers": tus_rules.CORS_EXPOSED_HEADERS}),
    ("HTTPS://A.example:443", ("https://a.example",), True,
     {"Access-Control-Allow-Origin": "HTTPS://A.example:443", "Vary": "Origin",
      "Access-Control-Allow-Methods": tus_rules.CORS_METHODS,
      "Access-Control-Allow-Headers": tus_rules.CORS_REQUEST_HEADERS,
      "Access-Control-Max-Age": tus_rules.CORS_MAX_AGE}),
    ("http://any.example", ("*",), False,
     {"Access-Control-Allow-Origin": "http://any.example", "Vary": "Origin",
      "Access-Control-Expose-Headers": tus_rules.CORS_EXPOSED_HEADERS}),
])
def test_cors_headers(origin, allowed, preflight, expected):
    assert cors_headers(origin, allowed, preflight=preflight) == expected


# --- the protocol over HTTP ------------------------------------------------

async def test_options_describes_the_server(client, config):
    resp = await client.options("/uploads")
    assert resp.status == 200
    assert resp.headers["Tus-Version"] == "1.0.0"
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    assert set(resp.headers["Tus-Extension"].split(",")) == {
        "creation", "creation-with-upload", "termination", "expiration", "checksum"}
    assert int(resp.headers["Tus-Max-Size"]) == config.max_upload_bytes
    assert "sha1" in resp.headers["Tus-Checksum-Algorithm"].split(",")


async def test_tuspy_upload_interrupted_then_resumed(served, database_url, real_mp4, tmp_path):
    client = served
    config = client.server.app[CONFIG_KEY]
    token = await new_user_token(client)
    data = real_mp4.read_bytes()
    chunk = 32 * 1024
    assert len(data) > 6 * chunk
    endpoint = str(client.make_url("/uploads"))
    # Where tuspy keeps upload URLs between runs; each session opens it afresh.
    stored_urls = str(tmp_path / "tus-urls.json")
    metadata = {"title": "Resumed clip", "description": "über tus", "filename": "clip.mp4"}

    def first_session() -> str:
        with contextlib.closing(FileStorage(stored_urls)) as urls:
            uploader = tus_client.TusClient(
                endpoint, headers={"Authorization": f"Bearer {token}"},
            ).uploader(file_stream=KeptOpen(data), chunk_size=chunk, metadata=metadata,
                       store_url=True, url_storage=urls)
            for _ in range(3):
                uploader.upload_chunk()
            assert uploader.offset == 3 * chunk
            return uploader.url

    url = await asyncio.to_thread(first_session)
    location = "/" + url.split("/", 3)[3]
    assert location.startswith("/uploads/")
    # Then the connection dies in the middle of the next PATCH: what arrived is kept.
    sent = data[3 * chunk:3 * chunk + 50_000]
    conn = await start_patch(client, token, location, 3 * chunk, chunk * 4, sent)
    await asyncio.sleep(0.5)
    await conn.close()
    await offset_becomes(client, token, location, 3 * chunk + len(sent))

    def second_session() -> tuple[int, dict[str, str]]:
        # A new client and uploader, finding the upload's URL in the stored URLs.
        with contextlib.closing(FileStorage(stored_urls)) as urls:
            uploader = tus_client.TusClient(
                endpoint, headers={"Authorization": f"Bearer {token}"},
            ).uploader(file_stream=KeptOpen(data), chunk_size=chunk, metadata=metadata,
                       store_url=True, url_storage=urls, upload_checksum=True)
            resumed_at = uploader.offset
            assert uploader.url == url
            uploader.upload()
            return resumed_at, uploader.request.response_headers

    resumed_at, last = await asyncio.to_thread(second_session)
    assert resumed_at == 3 * chunk + len(sent)
    video_id = int(last["tubelet-video-id"])
    assert int(last["upload-offset"]) == len(data)
    assert sha256(stored_original(database_url, config.storage_dir, video_id)) == sha256(data)
    video = await (await client.get(f"/videos/{video_id}")).json()
    assert video["status"] == "processing"
    assert video["title"] == "Resumed clip" and video["description"] == "über tus"
    assert video["size"] == len(data) and video["content_type"] == "video/mp4"
    # The finished upload still answers HEAD with its video; its bytes moved to the video.
    resp = await head(client, token, location)
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Upload-Offset"] == resp.headers["Upload-Length"] == str(len(data))
    assert resp.headers["Tubelet-Video-Id"] == str(video_id)
    assert not (config.storage_dir / "tus" / upload_id(location)).exists()


async def test_head_reports_offset_length_and_metadata(client):
    token = await new_user_token(client)
    metadata = f"title {b64('Clip')},filename {b64('c.mp4')},flag"
    resp = await client.post("/uploads", headers=tus(token, Upload_Length="1000",
                                                     Upload_Metadata=metadata))
    assert resp.status == 201
    location = resp.headers["Location"]
    assert location.startswith("/uploads/") and len(upload_id(location)) == 32
    expires = resp.headers["Upload-Expires"]
    assert expires.endswith(" GMT")
    resp = await patch(client, token, location, 0, fake_mp4(400))
    assert resp.status == 204 and resp.headers["Upload-Offset"] == "400"
    assert "Upload-Expires" in resp.headers
    resp = await head(client, token, location)
    assert resp.status == 200
    assert resp.headers["Upload-Offset"] == "400" and resp.headers["Upload-Length"] == "1000"
    assert resp.headers["Upload-Metadata"] == metadata
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    assert "Tubelet-Video-Id" not in resp.headers


async def test_creation_with_upload_makes_the_video_at_once(client, config, database_url,
                                                            real_mp4):
    token = await new_user_token(client)
    data = real_mp4.read_bytes()
    resp = await client.post("/uploads", data=data, headers=tus(
        token, Upload_Length=str(len(data)), Content_Type=OCTETS,
        Upload_Metadata=f"filename {b64('beach day.mp4')}"))
    assert resp.status == 201, await resp.text()
    assert resp.headers["Upload-Offset"] == str(len(data))
    video_id = int(resp.headers["Tubelet-Video-Id"])
    video = await (await client.get(f"/videos/{video_id}")).json()
    assert video["title"] == "beach day" and video["status"] == "processing"
    assert stored_original(database_url, config.storage_dir, video_id) == data
    resp = await head(client, token, resp.headers["Location"])
    assert resp.headers["Tubelet-Video-Id"] == str(video_id)


async def test_creation_with_a_partial_body_keeps_it(client):
    token = await new_user_token(client)
    data = fake_mp4(10_000)
    resp = await client.post("/uploads", data=data[:4000], headers=tus(
        token, Upload_Length=str(len(data)), Content_Type=OCTETS,
        Upload_Metadata=f"title {b64('x')}"))
    assert resp.status == 201 and resp.headers["Upload-Offset"] == "4000"
    location = resp.headers["Location"]
    resp = await patch(client, token, location, 4000, data[4000:])
    assert resp.status == 204 and "Tubelet-Video-Id" in resp.headers


async def test_wrong_offset_is_409(client):
    token = await new_user_token(client)
    location = await create(client, token, 1000)
    assert (await patch(client, token, location, 0, fake_mp4(100))).status == 204
    for wrong in (0, 50, 101, 1000):
        resp = await patch(client, token, location, wrong, b"x" * 10)
        assert resp.status == 409, wrong
        assert (await resp.json())["error"]["code"] == "offset_mismatch"
    assert (await head(client, token, location)).headers["Upload-Offset"] == "100"


@pytest.mark.parametrize("version", [None, "0.2.2", "1.0", "1.0.0 "])
async def test_missing_or_wrong_tus_resumable_is_412(client, api_error, version):
    token = await new_user_token(client)
    location = await create(client, token, 1000)
    headers = {"Authorization": f"Bearer {token}"}
    if version is not None:
        headers["Tus-Resumable"] = version
    for method, path, extra in (
        ("POST", "/uploads", {"Upload-Length": "10"}),
        ("HEAD", location, {}),
        ("PATCH", location, {"Upload-Offset": "0", "Content-Type": OCTETS}),
        ("DELETE", location, {}),
    ):
        if version == "1.0.0 ":
            status, _, got, _ = await raw_request(client, method, path, [
                *[(k, v) for k, v in headers.items() if k != "Tus-Resumable"],
                ("Tus-Resumable", b"1.0.0x"), *extra.items(), ("Content-Length", "0")])
            assert status == 412 and got["tus-version"] == "1.0.0"
            continue
        resp = await client.request(method, path, headers={**headers, **extra})
        assert resp.status == 412, (method, await resp.text())
        assert resp.headers["Tus-Version"] == "1.0.0"
        if method != "HEAD":
            await api_error(resp, 412, "unsupported_tus_version")
    # OPTIONS needs no version.
    assert (await client.options(location)).status == 200
    assert (await head(client, token, location)).headers["Upload-Offset"] == "0"


async def test_sizes_past_the_limits_are_413(client, make_config, aiohttp_client, api_error):
    small = await aiohttp_client(create_app(make_config(max_upload_bytes=100_000)))
    token = await new_user_token(small)
    resp = await small.post("/uploads", headers=tus(token, Upload_Length="100001",
                                                    Upload_Metadata=f"title {b64('x')}"))
    await api_error(resp, 413, "payload_too_large")
    location = await create(small, token, 10_000)
    # Declared past the upload's length: refused before reading.
    resp = await patch(small, token, location, 0, fake_mp4(10_001))
    await api_error(resp, 413, "payload_too_large")

    # Chunked, so only counting finds it.
    async def body() -> Any:
        for _ in range(11):
            yield b"\x00" * 1000

    resp = await small.patch(location, data=body(), headers=tus(
        token, Upload_Offset="0", Content_Type=OCTETS))
    await api_error(resp, 413, "payload_too_large")
    assert (await head(small, token, location)).headers["Upload-Offset"] == "0"
    resp = await small.post("/uploads", data=b"x" * 20, headers=tus(
        token, Upload_Length="10", Content_Type=OCTETS, Upload_Metadata=f"title {b64('x')}"))
    await api_error(resp, 413)


async def test_patch_needs_the_offset_content_type(client, api_error):
    token = await new_user_token(client)
    location = await create(client, token, 1000)
    resp = await client.patch(location, data=b"abc", headers=tus(
        token, Upload_Offset="0", Content_Type="application/octet-stream"))
    await api_error(resp, 415, "unsupported_media_type")


@pytest.mark.parametrize("header, value", [
    ("Upload-Offset", b"-1"), ("Upload-Offset", b"+0"), ("Upload-Offset", b"1e3"),
    ("Upload-Offset", b"99999999999999999999999"), ("Upload-Offset", b"\xd9\xa1"),
    ("Upload-Offset", b"0x0"), ("Upload-Offset", b"\xff"), ("Upload-Offset", b""),
    ("Upload-Checksum", b"sha1 !!!"), ("Upload-Checksum", b"crc32 AAAAAA=="),
    ("Upload-Checksum", b"sha1 \xc3\xa9"),
])
async def test_garbage_patch_headers_are_400(client, header, value):
    token = await new_user_token(client)
    location = await create(client, token, 1000)
    headers: list[tuple[str, bytes | str]] = [
        ("Tus-Resumable", "1.0.0"), ("Authorization", f"Bearer {token}"),
        ("Content-Type", OCTETS), ("Content-Length", "3"),
    ]
    if header != "Upload-Offset":
        headers.append(("Upload-Offset", "0"))
    headers.append((header, value))
    status, _, _, body = await raw_request(client, "PATCH", location, headers, b"abc")
    assert status == 400, body
    assert b'"error"' in body


@pytest.mark.parametrize("header, value, status", [
    ("Upload-Length", b"-5", 400), ("Upload-Length", b"5.0", 400),
    ("Upload-Length", b"\xef\xbc\x95", 400), ("Upload-Length", b"", 400),
    ("Upload-Length", b"99999999999999999999", 400), ("Upload-Length", b"0", 415),
    ("Upload-Metadata", b"title %%%", 400), ("Upload-Metadata", b"title YQ=", 400),
    ("Upload-Metadata", b"title YQ==,title YQ==", 400),
    ("Upload-Metadata", b"t\xc3\xaftle YQ==", 400),
    ("Upload-Metadata", b"title /w==", 422),        # not UTF-8
    ("Upload-Metadata", b"description YQ==", 422),  # no title nor filename
    ("Upload-Metadata", b"title " + b64("x" * 201).encode(), 422),
    ("Upload-Defer-Length", b"1", 400), ("Upload-Concat", b"partial", 400),
])
async def test_garbage_creation_headers(client, header, value, status):
    token = await new_user_token(client)
    headers: list[tuple[str, bytes | str]] = [
        ("Tus-Resumable", "1.0.0"), ("Authorization", f"Bearer {token}"),
        ("Content-Length", "0"),
    ]
    if header != "Upload-Length" and header != "Upload-Defer-Length":
        headers.append(("Upload-Length", "100"))
    if header != "Upload-Metadata":
        headers.append(("Upload-Metadata", f"title {b64('x')}"))
    headers.append((header, value))
    got, _, _, body = await raw_request(client, "POST", "/uploads", headers)
    assert got == status, body
    assert b'"error"' in body


async def test_uploads_belong_to_their_creator(client, api_error):
    owner = await new_user_token(client)
    other = await new_user_token(client)
    location = await create(client, owner, 1000)
    assert (await head(client, other, location)).status == 404
    await api_error(await patch(client, other, location, 0, b"abc"), 404)
    await api_error(await client.delete(location, headers=tus(other)), 404)
    for method in ("POST", "HEAD", "PATCH", "DELETE"):
        path = "/uploads" if method == "POST" else location
        resp = await client.request(method, path, headers=tus(
            None, Upload_Length="10", Upload_Offset="0", Content_Type=OCTETS))
        assert resp.status == 401, method
        assert resp.headers["Tus-Resumable"] == "1.0.0"
    # Not a word of it changed, and ids that cannot exist are just as unknown.
    assert (await head(client, owner, location)).headers["Upload-Offset"] == "0"
    assert (await head(client, owner, "/uploads/nothing-like-an-id")).status == 404
    assert (await head(client, owner, "/uploads/" + "0" * 32)).status == 404


async def test_checksums_verify_each_chunk(served):
    client = served
    token = await new_user_token(client)
    data = fake_mp4(3000)
    location = await create(client, token, len(data))
    good = b64(hashlib.sha1(data[:1000]).digest())
    bad = b64(hashlib.sha1(b"something else").digest())
    resp = await patch(client, token, location, 0, data[:1000], Upload_Checksum=f"sha1 {bad}")
    assert resp.status == 460
    assert (await resp.json())["error"]["code"] == "checksum_mismatch"
    assert (await head(client, token, location)).headers["Upload-Offset"] == "0"
    resp = await patch(client, token, location, 0, data[:1000], Upload_Checksum=f"sha1 {good}")
    assert resp.status == 204 and resp.headers["Upload-Offset"] == "1000"
    md5 = b64(hashlib.md5(data[1000:2000]).digest())
    resp = await patch(client, token, location, 1000, data[1000:2000],
                       Upload_Checksum=f"md5 {md5}")
    assert resp.status == 204 and resp.headers["Upload-Offset"] == "2000"
    # A checksummed body cut short cannot be verified: none of it is kept.
    sha = b64(hashlib.sha1(data[2000:]).digest())
    conn = await RawConnection.open(client)
    await conn.send(request_head("PATCH", location, [
        ("Tus-Resumable", "1.0.0"), ("Authorization", f"Bearer {token}"),
        ("Content-Type", OCTETS), ("Upload-Offset", "2000"), ("Content-Length", "1000"),
        ("Upload-Checksum", f"sha1 {sha}")]) + data[2000:2500])
    await asyncio.sleep(0.3)
    await conn.close()
    await asyncio.sleep(0.3)
    await offset_becomes(client, token, location, 2000)
    resp = await patch(client, token, location, 2000, data[2000:], Upload_Checksum=f"sha1 {sha}")
    assert resp.status == 204 and "Tubelet-Video-Id" in resp.headers


async def test_a_concurrent_patch_is_423(served):
    client = served
    token = await new_user_token(client)
    data = fake_mp4(200_000)
    location = await create(client, token, len(data))
    conn = await start_patch(client, token, location, 0, 100_000, data[:30_000])
    await asyncio.sleep(0.3)
    resp = await patch(client, token, location, 0, data[:10])
    assert resp.status == 423
    assert (await resp.json())["error"]["code"] == "upload_locked"
    assert (await client.delete(location, headers=tus(token))).status == 423
    # The first request's client goes away: its bytes stay and the lease is released.
    await conn.close()
    await offset_becomes(client, token, location, 30_000)
    resp = await patch(client, token, location, 30_000, data[30_000:])
    assert resp.status == 204, await resp.text()


async def test_a_lapsed_lease_of_a_dead_process_frees_the_upload(client, database_url):
    token = await new_user_token(client)
    location = await create(client, token, 1000)
    query(database_url, "UPDATE uploads SET lock_token = gen_random_uuid(), "
          "locked_until = now() + interval '1.5 seconds' WHERE id = %s",
          (upload_id(location),))
    assert (await patch(client, token, location, 0, fake_mp4(100))).status == 423
    await asyncio.sleep(1.7)
    assert (await patch(client, token, location, 0, fake_mp4(100))).status == 204


async def test_a_writer_that_lost_its_lease_stops_and_records_nothing(client, config,
                                                                     database_url, monkeypatch):
    monkeypatch.setattr(tus_store, "RENEW_EVERY", 0.2)
    token = await new_user_token(client)
    data = fake_mp4(100_000)
    location = await create(client, token, len(data))
    conn = await start_patch(client, token, location, 0, len(data), data[:20_000])
    await asyncio.sleep(0.3)
    # Another process took the upload over (the lease looked lapsed to it).
    query(database_url, "UPDATE uploads SET lock_token = gen_random_uuid(), received = 0 "
          "WHERE id = %s", (upload_id(location),))
    await asyncio.sleep(0.6)
    await conn.send(data[20_000:])
    status, _, _, _ = await conn.response()
    await conn.close()
    assert status == 503
    [(received,)] = query(database_url, "SELECT received FROM uploads WHERE id = %s",
                          (upload_id(location),))
    assert received == 0
    # Not a byte was written after the lease was lost, so none can land on the new holder's.
    assert (config.storage_dir / "tus" / upload_id(location)).stat().st_size <= 20_000


async def test_a_patch_holds_no_database_connection_while_its_body_streams(
        aiohttp_client, make_config):
    client = await aiohttp_client(create_app(make_config(db_pool_size=1, db_timeout=2.0)))
    token = await new_user_token(client)
    data = fake_mp4(100_000)
    location = await create(client, token, len(data))
    conns = [await start_patch(client, token, location, 0, len(data), data[:10_000])]
    other = await create(client, token, len(data))
    conns.append(await start_patch(client, token, other, 0, len(data), data[:10_000]))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    assert (await client.get("/videos")).status == 200
    assert (await head(client, token, location)).status == 200
    assert time.monotonic() - started < 1.0
    for conn in conns:
        await conn.send(data[10_000:])
        status, _, headers, _ = await conn.response()
        await conn.close()
        assert status == 204 and "tubelet-video-id" in headers


async def test_offset_survives_a_restart_and_unrecorded_bytes_are_cut(
        client, instance, config, database_url, real_mp4):
    token = await new_user_token(client)
    data = real_mp4.read_bytes()
    half = len(data) // 2
    location = await create(client, token, len(data))
    assert (await patch(client, token, location, 0, data[:half])).status == 204
    # A process died after writing bytes it never recorded.
    path = config.storage_dir / "tus" / upload_id(location)
    with open(path, "ab") as out:
        out.write(os.urandom(len(data) - half + 1000))
    await client.close()
    restarted = await instance()
    resp = await head(restarted, token, location)
    assert resp.headers["Upload-Offset"] == str(half)
    resp = await patch(restarted, token, location, half, data[half:])
    assert resp.status == 204, await resp.text()
    video_id = int(resp.headers["Tubelet-Video-Id"])
    assert sha256(stored_original(database_url, config.storage_dir, video_id)) == sha256(data)


async def test_a_finish_cut_short_is_completed_by_head(client, config, database_url):
    token = await new_user_token(client)
    data = fake_mp4(5000)
    location = await create(client, token, len(data))
    assert (await patch(client, token, location, 0, data[:4000])).status == 204
    # The last bytes were written and recorded, then the process died before the video.
    with open(config.storage_dir / "tus" / upload_id(location), "ab") as out:
        out.write(data[4000:])
    query(database_url, "UPDATE uploads SET received = length WHERE id = %s",
          (upload_id(location),))
    resp = await head(client, token, location)
    assert resp.status == 200 and resp.headers["Upload-Offset"] == str(len(data))
    video_id = int(resp.headers["Tubelet-Video-Id"])
    again = await head(client, token, location)
    assert again.headers["Tubelet-Video-Id"] == str(video_id)
    assert query(database_url, "SELECT count(*) FROM videos") == [(1,)]
    assert stored_original(database_url, config.storage_dir, video_id) == data


async def test_a_finish_whose_answer_was_lost_finds_its_video(client, config, database_url):
    token = await new_user_token(client)
    data = fake_mp4(5000)
    first = await create(client, token, len(data))
    resp = await patch(client, token, first, 0, data)
    video_id = int(resp.headers["Tubelet-Video-Id"])
    [(key,)] = query(database_url, "SELECT storage_key FROM videos WHERE id = %s",
                     (video_id,))
    # As if the video was committed but the upload never learned it.
    query(database_url, "UPDATE uploads SET video_id = NULL, finished_at = NULL, "
          "storage_key = %s WHERE id = %s", (key, upload_id(first)))
    (config.storage_dir / "tus" / upload_id(first)).write_bytes(data)
    resp = await head(client, token, first)
    assert resp.headers["Tubelet-Video-Id"] == str(video_id)
    assert query(database_url, "SELECT count(*) FROM videos") == [(1,)]
    assert not (config.storage_dir / "tus" / upload_id(first)).exists()


async def test_bytes_that_are_not_a_video_are_415_and_removed(client, config, database_url):
    token = await new_user_token(client)
    data = b"<html>" + secrets.token_bytes(5000)
    location = await create(client, token, len(data))
    assert (await patch(client, token, location, 0, data[:3000])).status == 204
    resp = await patch(client, token, location, 3000, data[3000:])
    assert resp.status == 415
    assert (await resp.json())["error"]["code"] == "unsupported_media_type"
    assert (await head(client, token, location)).status == 404
    assert list((config.storage_dir / "tus").iterdir()) == []
    assert query(database_url, "SELECT count(*) FROM videos") == [(0,)]


async def test_termination_removes_the_upload(client, config):
    token = await new_user_token(client)
    location = await create(client, token, 1000)
    assert (await patch(client, token, location, 0, fake_mp4(500))).status == 204
    path = config.storage_dir / "tus" / upload_id(location)
    assert path.stat().st_size == 500
    resp = await client.delete(location, headers=tus(token))
    assert resp.status == 204 and resp.headers["Tus-Resumable"] == "1.0.0"
    assert not path.exists()
    assert (await head(client, token, location)).status == 404
    assert (await patch(client, token, location, 500, b"x")).status == 404


async def test_unfinished_uploads_expire_and_their_files_go(aiohttp_client, make_config):
    config = make_config(upload_expiry=1)
    client = await aiohttp_client(create_app(config))
    token = await new_user_token(client)
    location = await create(client, token, 1000)
    resp = await patch(client, token, location, 0, fake_mp4(500))
    assert resp.status == 204
    path = config.storage_dir / "tus" / upload_id(location)
    assert path.exists()
    deadline = time.monotonic() + 8
    while path.exists():
        assert time.monotonic() < deadline, "the expired upload's file was not removed"
        await asyncio.sleep(0.1)
    assert (await head(client, token, location)).status in (404, 410)
    assert (await patch(client, token, location, 500, b"x" * 10)).status in (404, 410)


async def test_an_expired_upload_is_gone_before_the_sweep(client, database_url, api_error):
    token = await new_user_token(client)
    location = await create(client, token, 1000)
    query(database_url, "UPDATE uploads SET expires_at = now() - interval '1 second' "
          "WHERE id = %s", (upload_id(location),))
    assert (await head(client, token, location)).status == 410
    await api_error(await patch(client, token, location, 0, b"abc"), 410, "upload_expired")


async def test_open_uploads_per_user_are_bounded(aiohttp_client, make_config, api_error):
    # Room in the upload rate limit (RATE_LIMIT_UPLOAD), so the bound on open uploads answers.
    client = await aiohttp_client(create_app(make_config(
        rate_limit_upload=RateSpec(tus_store.MAX_OPEN_UPLOADS + 5, 3600))))
    token = await new_user_token(client)
    for _ in range(tus_store.MAX_OPEN_UPLOADS):
        await create(client, token, 1000)
    resp = await client.post("/uploads", headers=tus(
        token, Upload_Length="10", Upload_Metadata=f"title {b64('x')}"))
    await api_error(resp, 429, "too_many_uploads")


async def test_method_override_for_proxies_without_patch(client):
    token = await new_user_token(client)
    data = fake_mp4(1000)
    location = await create(client, token, len(data))
    resp = await client.post(location, data=data, headers=tus(
        token, Upload_Offset="0", Content_Type=OCTETS, X_HTTP_Method_Override="PATCH"))
    assert resp.status == 204 and "Tubelet-Video-Id" in resp.headers
    assert (await client.post(location, headers=tus(token))).status == 405


async def test_cors_for_listed_origins_only(aiohttp_client, make_config):
    client = await aiohttp_client(create_app(make_config(allowed_origins=(FRONT,))))
    token = await new_user_token(client)
    resp = await client.options("/uploads/" + "a" * 32, headers={
        "Origin": FRONT, "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "tus-resumable,upload-offset,content-type,"
                                          "authorization,upload-checksum"})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == FRONT
    assert "PATCH" in resp.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"tus-resumable", "upload-offset", "upload-length", "upload-metadata",
            "upload-checksum", "content-type", "authorization", "upload-defer-length",
            "upload-concat"} <= allowed
    resp = await client.options("/uploads", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in resp.headers
    resp = await client.post("/uploads", headers={
        **tus(token, Upload_Length="100", Upload_Metadata=f"title {b64('x')}"),
        "Origin": FRONT})
    assert resp.status == 201
    assert resp.headers["Access-Control-Allow-Origin"] == FRONT
    exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Location", "Upload-Offset", "Upload-Length", "Tus-Version", "Tus-Resumable",
            "Tus-Max-Size", "Tus-Extension", "Upload-Metadata", "Upload-Expires",
            "Tubelet-Video-Id"} <= exposed
    # Errors too, so the page can read why.
    resp = await client.post("/uploads", headers={"Origin": FRONT, "Tus-Resumable": "1.0.0"})
    assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == FRONT
    resp = await client.post("/uploads", headers={
        **tus(token, Upload_Length="100", Upload_Metadata=f"title {b64('x')}"),
        "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_tuspy_reports_a_server_refusal(client, tmp_path):
    token = await new_user_token(client)
    clip = tmp_path / "notes.txt"
    clip.write_bytes(b"just some text, not a video" * 100)
    endpoint = str(client.make_url("/uploads"))

    def run() -> int:
        uploader = tus_client.TusClient(
            endpoint, headers={"Authorization": f"Bearer {token}"},
        ).uploader(file_stream=KeptOpen(clip.read_bytes()), chunk_size=1000,
                   metadata={"title": "notes"})
        try:
            uploader.upload()
        except TusCommunicationError as exc:
            return int(exc.status_code)
        return 0

    assert await asyncio.to_thread(run) == 415


async def test_a_large_patch_streams_to_disk_in_flat_memory(client, config):
    import tracemalloc

    token = await new_user_token(client)
    size = 64 * 1024 * 1024
    location = await create(client, token, size + 1)
    block = fake_mp4(64 * 1024)

    async def body() -> Any:
        for _ in range(size // len(block)):
            yield block

    tracemalloc.start()
    try:
        resp = await client.patch(location, data=body(), headers=tus(
            token, Upload_Offset="0", Content_Type=OCTETS, Content_Length=str(size)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert resp.status == 204 and resp.headers["Upload-Offset"] == str(size)
    assert (config.storage_dir / "tus" / upload_id(location)).stat().st_size == size
    assert peak < 8 * 1024 * 1024, peak
