"""Upload, list, read and delete: real multipart over HTTP, real PostgreSQL, real files."""

from __future__ import annotations

import asyncio
import io
import os

import psycopg2
import pytest
from aiohttp import ClientSession, FormData

from server.app import create_app

from .conftest import fake_mp4, login, make_ready, new_user_token, register, upload, upload_ready


def stored_files(config) -> list[str]:
    """The stored files (not the .tubelet directory naming the storage's database)."""
    if not config.storage_dir.exists():
        return []
    return sorted(name for name in os.listdir(config.storage_dir) if name != ".tubelet")


def video_rows(database_url: str) -> int:
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM videos")
        (count,) = cur.fetchone()
    conn.close()
    return count


async def test_upload_returns_metadata_and_serves_bytes(client):
    token = await new_user_token(client)
    data = fake_mp4(50_000)
    resp = await upload(client, token, data, title="  My clip ", description="hello")
    assert resp.status == 201
    video = await resp.json()
    assert set(video) >= {"id", "title", "description", "author_id", "size", "content_type",
                          "created_at", "stream_url"}
    assert video["title"] == "My clip" and video["description"] == "hello"
    assert video["size"] == len(data) and video["content_type"] == "video/mp4"
    assert video["stream_url"] == f"/videos/{video['id']}/stream"
    assert video["status"] == "processing" and video["poster_url"] is None
    got = await client.get(f"/videos/{video['id']}")
    assert got.status == 200
    meta = await got.json()
    assert meta["views"] == 0 and meta["title"] == "My clip"
    # Nothing is streamed until processing has made the video ready.
    assert (await client.get(video["stream_url"])).status == 404
    await make_ready(client.server.app, video["id"])
    stream = await client.get(video["stream_url"])
    assert await stream.read() == data


@pytest.mark.parametrize("head, content_type", [
    (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00", "video/quicktime"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04\x42\xf3\x81\x08"
     b"\x42\x82\x84webm\x42\x87\x81\x04\x42\x85\x81\x02", "video/webm"),
    (b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04\x42\xf3\x81\x08"
     b"\x42\x82\x88matroska\x42\x87\x81\x04\x42\x85\x81\x02", "video/x-matroska"),
    (b"OggS\x00\x02" + b"\x00" * 20, "video/ogg"),
])
async def test_type_comes_from_magic_bytes(client, head, content_type):
    token = await new_user_token(client)
    # The client claims a misleading name and type; only the bytes count.
    form = FormData()
    form.add_field("title", "x")
    form.add_field("file", head + b"\x00" * 4096, filename="evil.exe",
                   content_type="text/html")
    resp = await client.post("/videos/upload", data=form,
                             headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 201, await resp.text()
    video = await resp.json()
    assert video["content_type"] == content_type
    await make_ready(client.server.app, video["id"])
    stream = await client.get(video["stream_url"])
    assert stream.headers["Content-Type"] == content_type


@pytest.mark.parametrize("payload", [
    b"<html><body>not a video</body></html>" * 10,
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,
    b"MZ" + b"\x00" * 100,
    b"ftyp",  # too short to be anything
    b"",
])
async def test_non_video_is_415_and_leaves_nothing(client, config, database_url, api_error,
                                                   payload):
    token = await new_user_token(client)
    resp = await upload(client, token, payload, filename="video.mp4")
    await api_error(resp, 415, "unsupported_media_type")
    assert stored_files(config) == []
    assert video_rows(database_url) == 0


async def test_too_large_is_413_and_leaves_nothing(aiohttp_client, make_config, database_url,
                                                   api_error):
    config = make_config(max_upload_bytes=100_000)
    client = await aiohttp_client(create_app(config))
    token = await new_user_token(client)
    ok = await upload(client, token, fake_mp4(100_000))
    assert ok.status == 201
    resp = await upload(client, token, fake_mp4(100_001))
    await api_error(resp, 413, "payload_too_large")
    assert len(stored_files(config)) == 1
    assert video_rows(database_url) == 1


async def test_declared_huge_body_rejected_before_reading(aiohttp_server, make_config):
    config = make_config(max_upload_bytes=100_000)
    server = await aiohttp_server(create_app(config))
    async with ClientSession() as session:
        email = "big@example.com"
        creds = {"email": email, "password": "correct horse battery"}
        await (await session.post(server.make_url("/auth/register"), json=creds)).read()
        token = (await (await session.post(server.make_url("/auth/login"),
                                           json=creds)).json())["access_token"]
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /videos/upload HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=zz\r\n"
        b"Content-Length: 50000000000\r\n\r\n--zz\r\n"
    )
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 5)
    assert status.startswith(b"HTTP/1.1 413")
    writer.close()


async def test_missing_fields_and_bad_multipart(client, config, api_error):
    token = await new_user_token(client)
    auth = {"Authorization": f"Bearer {token}"}
    form = FormData()
    form.add_field("file", fake_mp4(1000), filename="a.mp4")
    await api_error(await client.post("/videos/upload", data=form, headers=auth), 422)
    form = FormData(default_to_multipart=True)
    form.add_field("title", "only a title")
    await api_error(await client.post("/videos/upload", data=form, headers=auth), 422)
    form = FormData()
    form.add_field("title", "t" * 201)
    form.add_field("file", fake_mp4(1000), filename="a.mp4")
    await api_error(await client.post("/videos/upload", data=form, headers=auth), 422)
    resp = await client.post("/videos/upload", json={"title": "x"}, headers=auth)
    await api_error(resp, 415)
    resp = await client.post(
        "/videos/upload", data=b"--zz\r\ngarbage without headers",
        headers={**auth, "Content-Type": "multipart/form-data; boundary=zz"})
    assert 400 <= resp.status < 500
    await api_error(resp, resp.status)
    resp = await client.post(
        "/videos/upload", data=b"nothing", headers={**auth, "Content-Type": "multipart/form-data"})
    assert 400 <= resp.status < 500
    assert stored_files(config) == []


async def test_upload_requires_auth(client, api_error):
    resp = await upload(client, "not-a-token", fake_mp4(1000))
    await api_error(resp, 401)


async def test_client_filename_never_becomes_a_path(client, config, tmp_path):
    token = await new_user_token(client)
    for name in ("../../escape.mp4", "/etc/passwd", "..\\..\\x.mp4", "con.mp4"):
        resp = await upload(client, token, fake_mp4(2000), filename=name)
        assert resp.status == 201
    files = stored_files(config)
    assert len(files) == 4
    assert all(len(f) == 32 + 4 and f.endswith(".mp4") for f in files), files
    assert not (tmp_path / "escape.mp4").exists()


async def test_aborted_upload_leaves_no_file_or_row(aiohttp_server, config, database_url):
    server = await aiohttp_server(create_app(config))
    async with ClientSession() as session:
        creds = {"email": "abort@example.com", "password": "correct horse battery"}
        await (await session.post(server.make_url("/auth/register"), json=creds)).read()
        token = (await (await session.post(server.make_url("/auth/login"),
                                           json=creds)).json())["access_token"]
    reader, writer = await asyncio.open_connection(server.host, server.port)
    head = (b"--zz\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nT\r\n"
            b"--zz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n"
            b"Content-Type: video/mp4\r\n\r\n")
    writer.write(
        b"POST /videos/upload HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=zz\r\n"
        b"Content-Length: 10000000\r\n\r\n" + head + fake_mp4(500_000)
    )
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.transport.abort()  # the client vanishes mid-file
    for _ in range(50):
        await asyncio.sleep(0.1)
        if not stored_files(config):
            break
    assert stored_files(config) == []
    assert video_rows(database_url) == 0


async def test_list_is_newest_first_with_keyset_pagination(client, api_error):
    token = await new_user_token(client)
    ids = []
    for i in range(5):
        ids.append((await upload_ready(client, token, fake_mp4(1000, seed=i), title=f"v{i}"))["id"])
    seen = []
    cursor = None
    while True:
        url = "/videos?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(url)).json()
        seen += [item["id"] for item in page["items"]]
        assert len(page["items"]) <= 2
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)
    first = (await (await client.get("/videos")).json())["items"][0]
    assert first["title"] == "v4" and "author_name" in first and first["views"] == 0
    for bad in ("limit=0", "limit=-1", "limit=abc", "limit=1000", "cursor=x", "cursor=-5"):
        await api_error(await client.get(f"/videos?{bad}"), 422)


async def test_get_unknown_video(client, api_error):
    for raw in ("999", "abc", "0", "-3"):
        await api_error(await client.get(f"/videos/{raw}"), 404)


async def test_delete_by_author_only(client, config, api_error):
    owner = await new_user_token(client)
    intruder = await new_user_token(client)
    resp = await upload(client, owner, fake_mp4(3000))
    video = await resp.json()
    assert len(stored_files(config)) == 1
    resp = await client.delete(f"/videos/{video['id']}",
                               headers={"Authorization": f"Bearer {intruder}"})
    await api_error(resp, 403, "forbidden")
    await api_error(await client.delete(f"/videos/{video['id']}"), 401)
    resp = await client.delete(f"/videos/{video['id']}",
                               headers={"Authorization": f"Bearer {owner}"})
    assert resp.status == 204
    assert stored_files(config) == []
    await api_error(await client.get(f"/videos/{video['id']}"), 404)
    await api_error(await client.get(video["stream_url"]), 404)
    resp = await client.delete(f"/videos/{video['id']}",
                               headers={"Authorization": f"Bearer {owner}"})
    await api_error(resp, 404)


async def test_unknown_route_and_method_are_json(client, api_error):
    await api_error(await client.get("/nope/nothing"), 404)
    await api_error(await client.put("/videos/upload"), 405)


async def test_upload_streams_to_disk(client, config):
    """A body larger than any in-memory limit goes through in chunks."""
    token = await new_user_token(client)
    data = fake_mp4(12 * 1024 * 1024)
    form = FormData()
    form.add_field("title", "big")
    form.add_field("file", io.BytesIO(data), filename="big.mp4")
    resp = await client.post("/videos/upload", data=form,
                             headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 201
    video = await resp.json()
    assert video["size"] == len(data)
    assert (config.storage_dir / stored_files(config)[0]).read_bytes() == data


async def test_duration_is_probed(client, real_mp4):
    token = await new_user_token(client)
    resp = await upload(client, token, real_mp4.read_bytes())
    video = await resp.json()
    assert video["duration"] == pytest.approx(12, abs=0.5)


async def test_register_login_helpers_roundtrip(client):
    user = await register(client)
    assert (await login(client, user["email"]))["access_token"]
