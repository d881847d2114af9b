"""The stream handler's shortcuts answer exactly as the general path would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server.keys import FILE_CACHE_KEY
from server.ranges import Validators, plan_ranges
from server.streaming import SharedFile, VideoFileCache, simple_range, video_file

from .conftest import fake_mp4, new_user_token, upload

SIZE = 10_000


@pytest.mark.parametrize("header", [
    "bytes=0-0", "bytes=0-1023", "bytes=500-", "bytes=9999-", "bytes=9000-999999",
    "bytes=0009-0019", "bytes=10000-", "bytes=20000-30000", "bytes=5-2", "bytes=-500",
    "bytes=0-9,20-29", "BYTES=10-19", "bytes= 10-19", "bytes=10-19 ", "bytes=1-a",
    "bytes=", "bytes=-0", "items=0-10", "bytes=" + "9" * 20 + "-", "bytes=1-" + "9" * 20,
])
@pytest.mark.parametrize("size", [SIZE, 1, 0])
def test_simple_range_agrees_with_plan_ranges(header, size):
    shortcut = simple_range(header, size)
    if shortcut is not None:
        assert shortcut == plan_ranges(header, size)


def _video(path: Path):
    return video_file(path, path.stat().st_size, "video/mp4", Validators('"k"', 0), 60)


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


def test_shared_file_keeps_its_own_position(tmp_path):
    path = tmp_path / "v.mp4"
    path.write_bytes(bytes(range(100)))
    fd = os.open(path, os.O_RDONLY)
    try:
        a, b = SharedFile(fd), SharedFile(fd)
        a.seek(10)
        b.seek(50)
        buf = bytearray(3)
        assert a.readinto(buf) == 3 and bytes(buf) == bytes([10, 11, 12])
        assert b.readinto(buf) == 3 and bytes(buf) == bytes([50, 51, 52])
        assert a.tell() == 13
    finally:
        os.close(fd)


async def test_file_deleted_behind_the_cache_is_404(client, api_error, config):
    data = fake_mp4(SIZE)
    token = await new_user_token(client)
    resp = await upload(client, token, data)
    video = await resp.json()
    resp = await client.get(video["stream_url"], headers={"Range": "bytes=0-9"})
    assert resp.status == 206 and await resp.read() == data[:10]
    client.app[FILE_CACHE_KEY].recheck = 0
    for stored in config.storage_dir.iterdir():
        stored.unlink()  # as a delete in another process whose eviction never arrived
    resp = await client.get(video["stream_url"], headers={"Range": "bytes=0-9"})
    await api_error(resp, 404, "not_found")
