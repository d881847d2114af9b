"""Streams from S3 storage through each node's cache: forwarded while cold, sent from
the node's disk once warm, redirected to presigned URLs when asked, dropped from every
node's cache on delete, and a 503 (never a 500) when the bucket cannot be reached."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.core.keys import DB_KEY
from server.core.storage import StorageLocation
from server.delivery.handler import FILES_KEY
from server.storage.keys import NODE_CACHE_KEY, drop_unnamed

from .conftest import fake_mp4, make_ready, new_user_token, until
from .test_streaming import parse_multipart

SIZE = 3_000_000
DATA = fake_mp4(SIZE, seed=7)
# More than the sockets between a server and a slow reader hold.
BIG = fake_mp4(40_000_000, seed=8)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def node(instance: Any, s3_location: StorageLocation, tmp_path: Path) -> Any:
    """Starts an app instance on S3 storage with a cache directory of its own."""
    count = 0

    async def start(**overrides: Any) -> Any:
        nonlocal count
        count += 1
        values = {"storage": s3_location, "cache_dir": tmp_path / f"cache-{count}",
                  "storage_dir": tmp_path / f"scratch-{count}"}
        values.update(overrides)
        return await instance(**values)

    return start


async def upload_ready(client: Any, token: str, data: bytes) -> dict[str, Any]:
    """Upload (from a file-like body: aiohttp warns about multi-MB bytes) and mark ready."""
    form = aiohttp.FormData()
    form.add_field("title", "A video")
    form.add_field("file", io.BytesIO(data), filename="clip.mp4",
                   content_type="application/octet-stream")
    resp = await client.post("/videos/upload", data=form, headers=bearer(token))
    assert resp.status == 201, await resp.text()
    video: dict[str, Any] = await resp.json()
    await make_ready(client.server.app, video["id"])
    return video


async def stored_video(client: Any) -> tuple[dict[str, Any], Path]:
    token = await new_user_token(client)
    video = await upload_ready(client, token, DATA)
    files = client.server.app[FILES_KEY]
    loaded = await files.load(video["id"])
    assert loaded is not None
    return video, loaded.path


async def test_cold_ranges_are_forwarded_then_served_from_the_warm_cache(node):
    client = await node()
    video, cached = await stored_video(client)
    cache = client.server.app[NODE_CACHE_KEY]
    assert cache is not None
    await cache.wait_fills()
    await cache.evict(cached.name)  # the upload's own node starts cold, as another would
    url = f"/videos/{video['id']}/stream"

    resp = await client.get(url, headers={"Range": "bytes=1000-1999"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 1000-1999/{SIZE}"
    assert await resp.read() == DATA[1000:2000]
    assert cache.counts.misses >= 1
    await cache.wait_fills()
    assert cached.read_bytes() == DATA  # filled whole, in the background

    hits = cache.counts.hits
    resp = await client.get(url, headers={"Range": "bytes=-500"})
    assert resp.status == 206
    assert await resp.read() == DATA[-500:]
    resp = await client.get(url)
    assert resp.status == 200
    assert await resp.read() == DATA
    assert cache.counts.hits > hits


async def test_every_kind_of_answer_while_cold(node):
    client = await node()
    video, cached = await stored_video(client)
    cache = client.server.app[NODE_CACHE_KEY]
    url = f"/videos/{video['id']}/stream"
    for headers, check in [
        ({}, lambda body, resp: body == DATA and resp.status == 200),
        ({"Range": "bytes=0-0"}, lambda body, resp: body == DATA[:1]),
        ({"Range": f"bytes={SIZE - 10}-{SIZE + 100}"}, lambda body, resp: body == DATA[-10:]),
    ]:
        await cache.wait_fills()
        await cache.evict(cached.name)
        resp = await client.get(url, headers=headers)
        assert check(await resp.read(), resp), headers

    await cache.wait_fills()
    await cache.evict(cached.name)
    resp = await client.get(url, headers={"Range": "bytes=0-9,2000000-2000009"})
    assert resp.status == 206
    parts = parse_multipart(resp.headers["Content-Type"], await resp.read())
    assert [body for _, body in parts] == [DATA[0:10], DATA[2000000:2000010]]

    await cache.wait_fills()
    await cache.evict(cached.name)
    resp = await client.head(url)
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(SIZE)
    etag = resp.headers["ETag"]
    resp = await client.get(url, headers={"If-None-Match": etag})
    assert resp.status == 304
    resp = await client.get(url, headers={"Range": f"bytes={SIZE}-"})
    assert resp.status == 416


async def test_a_second_node_streams_what_the_first_stored(node):
    first = await node()
    video, _ = await stored_video(first)
    second = await node()
    cache = second.server.app[NODE_CACHE_KEY]
    url = f"/videos/{video['id']}/stream"
    resp = await second.get(url, headers={"Range": "bytes=100-199"})
    assert resp.status == 206
    assert await resp.read() == DATA[100:200]
    await cache.wait_fills()
    assert cache.counts.fills == 1
    assert cache.cached_bytes == SIZE


async def test_a_delete_evicts_the_file_from_other_nodes(node):
    first = await node()
    token = await new_user_token(first)
    video = await upload_ready(first, token, DATA)
    second = await node()
    url = f"/videos/{video['id']}/stream"
    assert (await second.get(url)).status == 200
    await second.server.app[NODE_CACHE_KEY].wait_fills()
    loaded = await second.server.app[FILES_KEY].load(video["id"])
    assert loaded is not None and loaded.path.exists()

    resp = await first.delete(f"/videos/{video['id']}", headers=bearer(token))
    assert resp.status == 204

    async def evicted() -> bool:
        return not loaded.path.exists()

    await until(evicted, 10, "the other node dropping the deleted video's file")
    assert (await second.get(url)).status == 404


async def test_the_bucket_down_is_a_503_for_cold_files_while_warm_ones_still_play(
        node, s3_location):
    client = await node()
    video, cached = await stored_video(client)
    cache = client.server.app[NODE_CACHE_KEY]
    await cache.wait_fills()
    url = f"/videos/{video['id']}/stream"
    assert (await client.get(url, headers={"Range": "bytes=0-99"})).status == 206

    down = StorageLocation("s3", bucket=s3_location.bucket, prefix=s3_location.prefix,
                           endpoint="http://127.0.0.1:9", region="us-east-1")
    other = await node(storage=down)
    resp = await other.get(url, headers={"Range": "bytes=0-99"})
    assert resp.status == 503
    body = await resp.json()
    assert body["error"]["code"] == "unavailable"
    # The first node has the file on its disk and needs no bucket for it.
    resp = await client.get(url, headers={"Range": "bytes=0-99"})
    assert resp.status == 206
    assert await resp.read() == DATA[:100]
    assert cached.exists()


async def test_presigned_redirects(node, http):
    client = await node(stream_redirect="presigned")
    video, _ = await stored_video(client)
    url = f"/videos/{video['id']}/stream"
    resp = await client.get(url, allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Cache-Control"] == "no-store"
    location = resp.headers["Location"]
    assert "X-Amz-Signature=" in location and "X-Amz-Expires=" in location
    # The signature covers no Range: the player seeks at the bucket.
    async with http.get(location, headers={"Range": "bytes=10-19"}) as got:
        assert got.status == 206
        assert await got.read() == DATA[10:20]


async def test_presigned_urls_of_private_videos_are_short_lived(node):
    client = await node(stream_redirect="presigned")
    token = await new_user_token(client)
    video = await upload_ready(client, token, DATA)
    resp = await client.patch(f"/videos/{video['id']}", json={"visibility": "private"},
                              headers=bearer(token))
    assert resp.status == 200, await resp.text()
    resp = await client.get(f"/videos/{video['id']}/stream", allow_redirects=False)
    assert resp.status in (403, 404)
    resp = await client.get(f"/videos/{video['id']}", headers=bearer(token))
    signed = (await resp.json())["stream_url"]
    resp = await client.get(signed, allow_redirects=False)
    assert resp.status == 302
    expires = int(resp.headers["Location"].split("X-Amz-Expires=")[1].split("&")[0])
    assert expires <= 300


async def test_concurrent_cold_requests_fill_the_cache_once(node):
    first = await node()
    video, _ = await stored_video(first)
    second = await node()
    url = f"/videos/{video['id']}/stream"

    async def ranged(start: int) -> bytes:
        resp = await second.get(url, headers={"Range": f"bytes={start}-{start + 9999}"})
        assert resp.status == 206
        return await resp.read()

    bodies = await asyncio.gather(*(ranged(i * 100_000) for i in range(20)))
    assert bodies == [DATA[i * 100_000:i * 100_000 + 10_000] for i in range(20)]
    cache = second.server.app[NODE_CACHE_KEY]
    await cache.wait_fills()
    assert cache.counts.fills == 1


async def test_a_stream_forwarded_from_the_bucket_is_cut_off_by_a_delete(node, http):
    client = await node()
    token = await new_user_token(client)
    video = await upload_ready(client, token, BIG)
    other = await node(cache_max_bytes=0)  # never caches: every byte is forwarded
    url = other.make_url(f"/videos/{video['id']}/stream")
    async with http.get(url) as resp:
        assert resp.status == 200
        await resp.content.readexactly(1000)
        deleted = await client.delete(f"/videos/{video['id']}", headers=bearer(token))
        assert deleted.status == 204
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                            asyncio.IncompleteReadError, ConnectionError)):
            async with asyncio.timeout(10):
                while True:
                    if not await resp.content.read(65536):
                        break
                    await asyncio.sleep(0.05)
    assert (await other.get(f"/videos/{video['id']}/stream")).status == 404


def open_deleted(key: str) -> list[str]:
    """This process's descriptors on a removed file named `key`."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if key in target and target.endswith("(deleted)"):
                found.append(target)
    return found


async def test_the_most_used_file_stays_and_evicted_files_are_closed(node):
    client = await node(cache_max_bytes=int(SIZE * 2.5))
    token = await new_user_token(client)
    app = client.server.app
    cache = app[NODE_CACHE_KEY]
    videos = [await upload_ready(client, token, fake_mp4(SIZE, seed=20 + i)) for i in range(3)]
    paths = []
    for video in videos:
        loaded = await app[FILES_KEY].load(video["id"])
        assert loaded is not None
        paths.append(loaded.path)
    await cache.wait_fills()
    for path in paths:
        await cache.evict(path.name)  # start cold: the uploads' own node filled nothing yet
    first, second, third = (f"/videos/{video['id']}/stream" for video in videos)
    for url in (first, second):
        assert (await client.get(url)).status == 200
        await cache.wait_fills()
        assert (await client.get(url, headers={"Range": "bytes=0-99"})).status == 206
    # The first file is opened once and then served from its kept descriptor, often.
    for _ in range(5):
        assert (await client.get(first, headers={"Range": "bytes=0-99"})).status == 206
    assert (await client.get(third)).status == 200
    await cache.wait_fills()
    assert paths[0].exists() and paths[2].exists()
    assert not paths[1].exists()  # the least recently used went
    assert cache.cached_bytes <= cache.max_bytes
    # And nothing holds the evicted file open: its space is free.
    assert open_deleted(paths[1].name) == []


async def test_files_no_row_names_are_dropped_from_the_cache(node):
    client = await node()
    video, cached = await stored_video(client)
    cache = client.server.app[NODE_CACHE_KEY]
    await cache.wait_fills()
    assert (await client.get(f"/videos/{video['id']}/stream")).status == 200
    await cache.wait_fills()
    assert cached.exists()
    stray = cache.path("0123456789abcdef0123456789abcdef.mp4")
    stray.write_bytes(b"left by a video deleted while this node was away")
    await cache.start()  # a restart finds it
    assert await drop_unnamed(cache, client.server.app[DB_KEY]) == 1
    assert not stray.exists()
    assert cached.exists()
