"""Media through each kind of storage, files in STORAGE_DIR and an S3 bucket, over real HTTP.

Uploads (multipart and tus), avatars, processing and the files it serves,
deletes and the orphan sweep, checked against what the store really holds: the
directory, or the bucket listed with a client of its own. A bucket that cannot
be reached answers 503 and leaves nothing behind; a tus upload it interrupts
is finished once the bucket is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
from collections.abc import AsyncIterator
from typing import Any

import aiobotocore.session
import pytest
from aiohttp.test_utils import TestClient
from botocore.config import Config as BotoConfig
from PIL import Image
from tusclient import client as tus_client

from server.catalog.handlers import CATALOG_KEY
from server.core.config import Config
from server.core.keys import CONFIG_KEY
from server.core.storage import STORAGE_KEY_RE, StorageLocation, new_storage_key
from server.ingest.jobs import work
from server.ingest.processing import WORK_DIR
from server.storage.keys import NODE_CACHE_KEY

from .conftest import fake_mp4, make_ready, new_user_token, query, upload, upload_ready
from .outages import PostgresProxy, free_port
from .test_tus import KeptOpen, create, head, patch, upload_id

FILE_COLUMNS = ("storage_key", "original_key", "poster_key", "storyboard_key",
                "storyboard_vtt_key")


# --- what the store holds, seen from outside the server ---------------------------

@contextlib.asynccontextmanager
async def bucket(location: StorageLocation) -> AsyncIterator[Any]:
    session = aiobotocore.session.get_session()
    async with session.create_client(
            "s3", endpoint_url=location.endpoint, region_name=location.region or "us-east-1",
            config=BotoConfig(s3={"addressing_style": "path"})) as s3:
        yield s3


async def stored(config: Config) -> set[str]:
    """The keys of the stored media (not markers, uploads in progress or scratch files)."""
    if config.storage is None:
        names = os.listdir(config.storage_dir) if config.storage_dir.exists() else []
    else:
        location = config.storage
        async with bucket(location) as s3:
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket=location.bucket, Prefix=location.prefix)
            names = [item["Key"][len(location.prefix):] async for page in pages
                     for item in page.get("Contents", ())]
    return {name for name in names if STORAGE_KEY_RE.fullmatch(name)}


async def read(config: Config, key: str) -> bytes:
    if config.storage is None:
        return (config.storage_dir / key).read_bytes()
    location = config.storage
    async with bucket(location) as s3:
        response = await s3.get_object(Bucket=location.bucket, Key=location.prefix + key)
        async with response["Body"] as body:
            data: bytes = await body.read()
            return data


async def put(config: Config, key: str, data: bytes) -> None:
    if config.storage is None:
        (config.storage_dir / key).write_bytes(data)
        return
    location = config.storage
    async with bucket(location) as s3:
        await s3.put_object(Bucket=location.bucket, Key=location.prefix + key, Body=data)


def local_media(config: Config) -> set[str]:
    """Stored-looking files in STORAGE_DIR itself, and uploads being staged there."""
    return {name for name in os.listdir(config.storage_dir)
            if STORAGE_KEY_RE.fullmatch(name) or name.startswith(".upload-")}


def cached(config: Config) -> set[str]:
    directory = config.node_cache_dir
    return set(os.listdir(directory)) if directory.exists() else set()


@pytest.fixture
async def site(instance: Any, backend: StorageLocation | None) -> TestClient:
    """The app on a real socket, its media in the backend under test."""
    client: TestClient = await instance(storage=backend)
    return client


def config_of(client: TestClient) -> Config:
    return client.server.app[CONFIG_KEY]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def streamed(client: TestClient, url: str, **headers: str) -> tuple[int, bytes]:
    resp = await client.get(url, headers=headers)
    return resp.status, await resp.read()


async def cache_filled(client: TestClient) -> None:
    cache = client.server.app[NODE_CACHE_KEY]
    if cache is not None:
        await cache.wait_fills()


# --- uploads -------------------------------------------------------------------

async def test_a_multipart_upload_is_stored_and_streamed(site):
    config = config_of(site)
    data = fake_mp4(300_000, seed=7)
    token = await new_user_token(site)
    video = await upload_ready(site, token, data)
    [key] = await stored(config)
    assert await read(config, key) == data
    if config.storage is not None:
        assert local_media(config) == set()  # staged here, stored in the bucket
    # Twice each: from the store (or forwarded from the bucket), then from the node's cache.
    for _ in range(2):
        status, body = await streamed(site, video["stream_url"], Range="bytes=1000-50999")
        assert status == 206 and body == data[1000:51000]
        assert await streamed(site, video["stream_url"]) == (200, data)
        await cache_filled(site)


async def test_a_tus_upload_is_stored_and_streamed(site, real_mp4):
    config = config_of(site)
    data = real_mp4.read_bytes()
    token = await new_user_token(site)
    endpoint = str(site.make_url("/uploads"))

    def send() -> dict[str, str]:
        uploader = tus_client.TusClient(endpoint, headers=bearer(token)).uploader(
            file_stream=KeptOpen(data), chunk_size=128 * 1024,
            metadata={"title": "By tus", "filename": "clip.mp4"})
        uploader.upload()
        return uploader.request.response_headers

    last = await asyncio.to_thread(send)
    video_id = int(last["tubelet-video-id"])
    [key] = await stored(config)
    assert await read(config, key) == data
    assert os.listdir(config.storage_dir / "tus") == []
    if config.storage is not None:
        assert local_media(config) == set()
    await make_ready(site.server.app, video_id)
    assert await streamed(site, f"/videos/{video_id}/stream") == (200, data)


async def test_a_tus_upload_the_bucket_interrupts_is_finished_once_it_is_back(
        instance, s3_location, database_url, api_error):
    # The proxy of the PostgreSQL outage tests forwards any TCP link: here, to the bucket.
    assert s3_location.endpoint is not None
    proxy = PostgresProxy(s3_location.endpoint)
    await proxy.start()
    try:
        site = await instance(storage=dataclasses.replace(
            s3_location, endpoint=f"http://127.0.0.1:{proxy.port}"))
        config = config_of(site)
        data = fake_mp4(200_000, seed=3)
        token = await new_user_token(site)
        location = await create(site, token, len(data))
        assert (await patch(site, token, location, 0, data[:100_000])).status == 204
        proxy.cut()
        resp = await patch(site, token, location, 100_000, data[100_000:])
        await api_error(resp, 503, "unavailable")
        # Every byte is kept on this node's disk, and no video was made.
        assert (config.storage_dir / "tus" / upload_id(location)).read_bytes() == data
        assert query(database_url, "SELECT count(*) FROM videos") == [(0,)]
        assert local_media(config) == set()
        proxy.restore()
        resp = await head(site, token, location)
        assert resp.status == 200, await resp.text()
        assert resp.headers["Upload-Offset"] == str(len(data))
        video_id = int(resp.headers["Tubelet-Video-Id"])
    finally:
        await proxy.close()
    assert query(database_url, "SELECT id FROM videos") == [(video_id,)]
    direct = dataclasses.replace(config, storage=s3_location)
    [key] = await stored(direct)
    assert await read(direct, key) == data
    assert not (config.storage_dir / "tus" / upload_id(location)).exists()


async def test_an_unreachable_bucket_is_503_and_leaves_nothing(instance, database_url,
                                                              api_error, monkeypatch):
    # Signed requests need credentials; none is ever checked, as nothing listens.
    if "AWS_ACCESS_KEY_ID" not in os.environ:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unused")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unused")
    closed = StorageLocation("s3", bucket="tubelet", prefix="nowhere/",
                             endpoint=f"http://127.0.0.1:{free_port()}", region="us-east-1")
    site = await instance(storage=closed)
    config = config_of(site)
    token = await new_user_token(site)
    await api_error(await upload(site, token, fake_mp4(50_000)), 503, "unavailable")
    assert query(database_url, "SELECT count(*) FROM videos") == [(0,)]
    assert local_media(config) == set()
    resp = await site.put("/users/me/avatar", data=png(), headers=bearer(token))
    await api_error(resp, 503, "unavailable")
    assert query(database_url, "SELECT count(*) FROM users WHERE avatar_key IS NOT NULL") \
        == [(0,)]


# --- avatars -----------------------------------------------------------------------

def png(size: int = 64) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (size, size), os.urandom(size * size * 3)).save(out, "PNG")
    return out.getvalue()


async def test_avatars_are_stored_read_and_replaced(site):
    config = config_of(site)
    token = await new_user_token(site)
    resp = await site.put("/users/me/avatar", data=png(), headers=bearer(token))
    assert resp.status == 200, await resp.text()
    first = (await resp.json())["avatar_url"]
    [old] = await stored(config)
    for _ in range(2):  # from the store, then from the node's cache
        assert await streamed(site, first) == (200, await read(config, old))
    resp = await site.put("/users/me/avatar", data=png(), headers=bearer(token))
    second = (await resp.json())["avatar_url"]
    [new] = await stored(config)
    assert new != old and old not in cached(config)
    status, body = await streamed(site, second)
    assert status == 200 and body == await read(config, new) and body[:3] == b"\xff\xd8\xff"


# --- processing, artifacts and deletes ------------------------------------------------

async def test_processing_stores_what_the_artifact_routes_serve_and_delete_removes_it(
        site, real_mp4, database_url, api_error):
    config = config_of(site)
    token = await new_user_token(site)
    resp = await upload(site, token, real_mp4.read_bytes())
    assert resp.status == 201, await resp.text()
    video_id = (await resp.json())["id"]

    await work(config, wait=False)

    video = await (await site.get(f"/videos/{video_id}")).json()
    assert video["status"] == "ready", video
    [row] = query(database_url, f"SELECT {', '.join(FILE_COLUMNS)} FROM videos WHERE id = %s",
                  (video_id,))
    keys = dict(zip(FILE_COLUMNS, row, strict=True))
    assert await stored(config) == set(keys.values())
    assert await read(config, keys["original_key"]) == real_mp4.read_bytes()
    assert os.listdir(config.storage_dir / WORK_DIR) == []
    if config.storage is not None:
        assert local_media(config) == set()

    for name, column in [("poster.jpg", "poster_key"), ("storyboard.jpg", "storyboard_key"),
                         ("storyboard.vtt", "storyboard_vtt_key")]:
        status, body = await streamed(site, f"/videos/{video_id}/{name}")
        assert status == 200 and body == await read(config, keys[column]), name
    assert (await read(config, keys["storyboard_vtt_key"])).startswith(b"WEBVTT")
    status, body = await streamed(site, video["stream_url"])
    assert status == 200 and len(body) == video["size"]
    assert body == await read(config, keys["storage_key"])
    await cache_filled(site)

    resp = await site.delete(f"/videos/{video_id}", headers=bearer(token))
    assert resp.status == 204
    assert await stored(config) == set()
    assert cached(config).isdisjoint(keys.values())
    await api_error(await site.get(f"/videos/{video_id}/poster.jpg"), 404)


async def test_the_orphan_sweep_removes_what_no_row_names(site):
    config = config_of(site)
    token = await new_user_token(site)
    await upload_ready(site, token, fake_mp4(20_000))
    [named] = await stored(config)
    stray = new_storage_key("jpg")
    await put(config, stray, b"left by a crash")
    assert await stored(config) == {named, stray}
    await asyncio.sleep(1.1)  # object times have whole seconds
    assert await site.server.app[CATALOG_KEY].sweep_orphans(min_age=0) == 1
    assert await stored(config) == {named}
