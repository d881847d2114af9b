"""Profiles: GET /users/me and /users/{id}, PATCH /users/me, avatars (PUT
/users/me/avatar, GET /users/{id}/avatar.jpg), with garbage of every kind."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from server.accounts.avatars import MAX_BYTES, sniff_image
from server.accounts.profiles import clean_bio, clean_name, etag_matches
from server.accounts.standing import STANDING_KEY
from server.app import create_app
from server.catalog.handlers import CATALOG_KEY
from server.core.config import RateSpec
from server.core.errors import Invalid
from server.core.keys import CONFIG_KEY, DB_KEY

from .conftest import fake_mp4, new_user_token, query, register, upload_ready

PASSWORD = "correct horse battery"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def me(client: TestClient, token: str) -> dict[str, Any]:
    resp = await client.get("/users/me", headers=bearer(token))
    assert resp.status == 200, await resp.text()
    return await resp.json()


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def bands(width: int, height: int, colours: list[tuple[int, int, int]]) -> Image.Image:
    """Vertical bands of equal width, left to right."""
    image = Image.new("RGB", (width, height))
    step = width // len(colours)
    for i, colour in enumerate(colours):
        image.paste(colour, (i * step, 0, (i + 1) * step, height))
    return image


def noise(width: int, height: int) -> Image.Image:
    return Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))


def near(pixel: Any, colour: tuple[int, int, int], slack: int = 40) -> bool:
    return all(abs(p - c) <= slack for p, c in zip(pixel, colour, strict=True))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header that declares `width` x `height` pixels, and a scrap of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + png_chunk(b"IEND", b""))


def stored(client: TestClient) -> set[str]:
    directory: Path = client.server.app[CONFIG_KEY].storage_dir
    return {p.name for p in directory.glob("*.jpg")} if directory.exists() else set()


async def put_avatar(client: TestClient, token: str, body: bytes,
                     content_type: str = "image/png") -> Any:
    return await client.put("/users/me/avatar", data=io.BytesIO(body) if body else body,
                            headers={**bearer(token), "Content-Type": content_type})


async def ban(client: TestClient, user_id: int) -> None:
    app = client.server.app
    async with app[DB_KEY].transaction() as cur:
        announcement = await app[STANDING_KEY].set_ban(cur, user_id, None, "spam")
    announcement.announce()


# --- reading profiles -----------------------------------------------------------

async def test_me_and_the_public_profile(client, database_url, api_error):
    user = await register(client)
    token = (await (await client.post("/auth/login", json={
        "email": user["email"], "password": PASSWORD})).json())["access_token"]
    mine = await me(client, token)
    assert mine == {**user, "role": "user", "bio": "", "avatar_url": None}
    resp = await client.get("/auth/me", headers=bearer(token))
    assert await resp.json() == mine

    await upload_ready(client, token, fake_mp4(2048))
    unlisted = await upload_ready(client, token, fake_mp4(2048, seed=2))
    query(database_url, "UPDATE videos SET visibility = 'unlisted' WHERE id = %s",
          (unlisted["id"],))
    resp = await client.get(f"/users/{user['id']}")
    assert resp.status == 200
    profile = await resp.json()
    assert profile == {
        "id": user["id"], "name": user["name"], "bio": "", "avatar_url": None,
        "created_at": user["created_at"], "subscriber_count": 0, "video_count": 1,
    }
    assert "email" not in profile


@pytest.mark.parametrize("raw", ["0", "01", "-1", "abc", "1.5", "9" * 30, "%C2%B2", "me2"])
async def test_unknown_or_garbage_ids_are_404(client, api_error, raw):
    await api_error(await client.get(f"/users/{raw}"), 404)
    await api_error(await client.get(f"/users/{raw}/avatar.jpg"), 404)


async def test_unknown_user_and_me_without_a_token(client, api_error):
    await api_error(await client.get("/users/424242"), 404, "not_found")
    await api_error(await client.get("/users/me"), 401, "unauthorized")
    await api_error(await client.patch("/users/me", json={"name": "x"}), 401)
    await api_error(await client.put("/users/me/avatar", data=b"x"), 401)


async def test_a_banned_user_has_no_public_profile(client, api_error):
    user = await register(client)
    token = (await (await client.post("/auth/login", json={
        "email": user["email"], "password": PASSWORD})).json())["access_token"]
    resp = await put_avatar(client, token, encode(noise(64, 64), "PNG"))
    assert resp.status == 200
    avatar = (await resp.json())["avatar_url"]
    await ban(client, user["id"])
    await api_error(await client.get(f"/users/{user['id']}"), 404)
    await api_error(await client.get(avatar), 404)


# --- editing ---------------------------------------------------------------------

async def test_edit_name_and_bio(client):
    token = await new_user_token(client)
    resp = await client.patch("/users/me", json={"name": "  Ada Lovelace ",
                                                 "bio": "Maths.\r\nEngines.\tNotes. "},
                              headers=bearer(token))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["name"] == "Ada Lovelace" and body["bio"] == "Maths.\nEngines.\tNotes."
    resp = await client.patch("/users/me", json={"bio": ""}, headers=bearer(token))
    assert (await resp.json())["name"] == "Ada Lovelace"
    public = await (await client.get(f"/users/{body['id']}")).json()
    assert public["name"] == "Ada Lovelace" and public["bio"] == ""
    resp = await client.patch("/users/me", json={"name": "é" * 50}, headers=bearer(token))
    assert resp.status == 200


@pytest.mark.parametrize("body, status", [
    ({}, 422),
    ({"nickname": "x"}, 422),
    ({"name": ""}, 422),
    ({"name": "   "}, 422),
    ({"name": None}, 422),
    ({"name": 42}, 422),
    ({"name": ["a"]}, 422),
    ({"name": "x" * 51}, 422),
    ({"name": "a\nb"}, 422),
    ({"name": "bell\x07"}, 422),
    ({"name": "nul\x00"}, 422),
    ({"name": "evil\u202egnp.exe"}, 422),
    ({"name": "line\u2028break"}, 422),
    ({"name": "\ud800"}, 422),
    ({"bio": "x" * 1001}, 422),
    ({"bio": "esc\x1b[31m"}, 422),
    ({"bio": {"a": 1}}, 422),
    ({"name": "ok", "bio": 5}, 422),
    ([], 422),
    ("name", 422),
])
async def test_garbage_profile_edits_are_refused(client, api_error, body, status):
    token = await new_user_token(client)
    before = await me(client, token)
    resp = await client.patch("/users/me", json=body, headers=bearer(token))
    await api_error(resp, status)
    assert await me(client, token) == before


async def test_profile_edit_body_must_be_json(client, api_error):
    token = await new_user_token(client)
    resp = await client.patch("/users/me", data=b'{"name": "x"}',
                              headers={**bearer(token), "Content-Type": "text/plain"})
    await api_error(resp, 415)
    resp = await client.patch("/users/me", data=b"{nope",
                              headers={**bearer(token), "Content-Type": "application/json"})
    await api_error(resp, 400, "invalid_json")


@pytest.mark.parametrize("value, cleaned", [
    ("  a  ", "a"), ("A\u0301", "\u00c1"), ("x" * 50, "x" * 50), ("日本", "日本"),
])
def test_clean_name(value, cleaned):
    assert clean_name(value) == cleaned


@pytest.mark.parametrize("value", ["", " ", "x" * 51, "a\tb", "\x7f", "\u2066x", "\u2029"])
def test_clean_name_refuses(value):
    with pytest.raises(Invalid):
        clean_name(value)


def test_clean_bio():
    assert clean_bio(" a\r\nb\tc \n") == "a\nb\tc"
    assert clean_bio("") == ""
    with pytest.raises(Invalid):
        clean_bio("x\x0bz")


# --- avatars ------------------------------------------------------------------------

async def test_an_avatar_is_redrawn_as_a_square_jpeg(client, api_error):
    token = await new_user_token(client)
    user = await me(client, token)
    red, green, blue = (255, 0, 0), (0, 200, 0), (0, 0, 255)
    resp = await put_avatar(client, token,
                            encode(bands(600, 200, [red, green, blue]), "PNG"))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    url = body["avatar_url"]
    assert url.startswith(f"/users/{user['id']}/avatar.jpg?v=")
    assert (await me(client, token))["avatar_url"] == url
    assert (await (await client.get(f"/users/{user['id']}")).json())["avatar_url"] == url

    resp = await client.get(url)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "image/jpeg"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "immutable" in resp.headers["Cache-Control"]
    etag = resp.headers["ETag"]
    data = await resp.read()
    assert sniff_image(data) == "JPEG"
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (256, 256)
        # The centre square of red|green|blue is all green.
        for xy in [(2, 2), (253, 2), (128, 128), (2, 253), (253, 253)]:
            assert near(image.getpixel(xy), green), xy

    resp = await client.get(url, headers={"If-None-Match": etag})
    assert resp.status == 304
    # Without the version the URL names whatever the avatar is now: revalidated.
    resp = await client.get(f"/users/{user['id']}/avatar.jpg")
    assert resp.status == 200 and resp.headers["Cache-Control"] == "public, no-cache"
    assert resp.headers["ETag"] == etag
    resp = await client.head(url)
    assert resp.status == 200


async def test_an_avatar_is_turned_upright_and_loses_its_metadata(client):
    token = await new_user_token(client)
    red, blue = (255, 0, 0), (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: turn 90 degrees clockwise to show
    exif[0x010F] = "SecretCam"
    exif[0x8825] = {1: "N"}  # GPS
    upload = encode(bands(600, 300, [red, blue]), "JPEG", exif=exif.tobytes(), quality=95,
                    comment=b"secret comment", icc_profile=b"secret profile" * 10)
    resp = await put_avatar(client, token, upload, content_type="image/jpeg")
    assert resp.status == 200, await resp.text()
    resp = await client.get((await resp.json())["avatar_url"])
    data = await resp.read()
    for secret in (b"SecretCam", b"secret comment", b"secret profile"):
        assert secret not in data
    with Image.open(io.BytesIO(data)) as image:
        assert not {"exif", "comment", "icc_profile"} & set(image.info)
        assert not image.getexif()
        # Shown upright, red is on top and blue below.
        assert near(image.getpixel((128, 10)), red)
        assert near(image.getpixel((128, 245)), blue)


@pytest.mark.parametrize("fmt, mode", [("GIF", "P"), ("WEBP", "RGB"), ("PNG", "RGBA"),
                                       ("JPEG", "L"), ("PNG", "I;16")])
async def test_every_supported_format_is_taken(client, fmt, mode):
    token = await new_user_token(client)
    image = Image.new(mode, (300, 120), {"RGBA": (0, 0, 0, 0), "I;16": 30000}.get(mode, 90))
    resp = await put_avatar(client, token, encode(image, fmt),
                            content_type="application/octet-stream")
    assert resp.status == 200, await resp.text()
    resp = await client.get((await resp.json())["avatar_url"])
    with Image.open(io.BytesIO(await resp.read())) as out:
        assert out.format == "JPEG" and out.size == (256, 256) and out.mode == "RGB"
        if mode == "RGBA":
            assert near(out.getpixel((128, 128)), (255, 255, 255))  # transparent: white


async def test_a_new_avatar_replaces_the_old_file(client):
    token = await new_user_token(client)
    first = await (await put_avatar(client, token, encode(noise(80, 80), "PNG"))).json()
    files = stored(client)
    assert len(files) == 1
    second = await (await put_avatar(client, token, encode(noise(80, 80), "PNG"))).json()
    assert second["avatar_url"] != first["avatar_url"]
    assert len(stored(client)) == 1 and stored(client) != files
    # The orphan sweep knows avatars: it keeps this one and removes a stray file.
    stray = client.server.app[CONFIG_KEY].storage_dir / ("ab" * 16 + ".jpg")
    stray.write_bytes(b"stray")
    assert await client.server.app[CATALOG_KEY].sweep_orphans(min_age=0) == 1
    assert len(stored(client)) == 1 and not stray.exists()
    resp = await client.get(second["avatar_url"])
    assert resp.status == 200


@pytest.mark.parametrize("body, status, code", [
    (b"", 422, "validation_error"),
    (b"hello, I am plain text and no image at all", 415, "unsupported_media_type"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", 415, "unsupported_media_type"),
    (b"%PDF-1.7\n", 415, "unsupported_media_type"),
    (b"\xff\xd8\xff", 422, "invalid_image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, 422, "invalid_image"),
    (b"GIF89a" + b"\xff" * 20, 422, "invalid_image"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 30, 422, "invalid_image"),
    (png_bomb(), 422, "image_too_large"),
    (png_bomb(20_000, 20_000), 422, "image_too_large"),
    (png_bomb(0x7FFFFFFF, 1), 422, None),
])
async def test_what_is_not_a_usable_image_is_refused(client, api_error, body, status, code):
    token = await new_user_token(client)
    resp = await put_avatar(client, token, body)
    await api_error(resp, status, code)
    assert (await me(client, token))["avatar_url"] is None
    assert stored(client) == set()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
async def test_a_truncated_image_is_refused(client, api_error, fmt):
    token = await new_user_token(client)
    whole = encode(noise(200, 200), fmt)
    await api_error(await put_avatar(client, token, whole[:len(whole) // 2]), 422,
                    "invalid_image")
    assert stored(client) == set()


async def test_a_body_past_the_limit_is_413(client, api_error):
    token = await new_user_token(client)
    resp = await put_avatar(client, token, b"\x89PNG\r\n\x1a\n" + b"\x00" * MAX_BYTES)
    await api_error(resp, 413, "payload_too_large")


async def test_an_undeclared_body_is_cut_off_at_the_limit(client):
    """Chunked, with no Content-Length: the server stops reading past the limit."""
    token = await new_user_token(client)
    server = client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"PUT /users/me/avatar HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer " + token.encode() + b"\r\n"
                 b"Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"\x00" * (256 * 1024)
    try:
        for _ in range(MAX_BYTES // len(chunk) + 8):
            writer.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            await writer.drain()
    except ConnectionError:
        pass  # the server answered and closed before the rest was sent
    status = await asyncio.wait_for(reader.readline(), 5)
    assert status.startswith(b"HTTP/1.1 413"), status
    writer.close()


def test_if_none_match():
    assert etag_matches('"a"', '"a"')
    assert etag_matches('W/"a", "b"', '"a"')
    assert etag_matches("*", '"a"')
    assert not etag_matches('"b"', '"a"')
    assert not etag_matches(None, '"a"')


def test_avatar_files_are_named_like_every_stored_file():
    from server.core.storage import STORAGE_KEY_RE, new_storage_key

    assert STORAGE_KEY_RE.fullmatch(new_storage_key("jpg"))



async def test_avatar_uploads_are_rate_limited(aiohttp_client, make_config, api_error):
    """Decoding is costly: past the upload limit an account's avatars get 429, before
    a byte of the body is decoded."""
    client = await aiohttp_client(create_app(make_config(rate_limit_upload=RateSpec(2, 3600))))
    token = await new_user_token(client)
    image = encode(noise(32, 32), "PNG")
    for _ in range(2):
        assert (await put_avatar(client, token, image)).status == 200
    resp = await put_avatar(client, token, image)
    await api_error(resp, 429)
    assert int(resp.headers["Retry-After"]) > 0
