"""The node's read-through cache of bucket media, against the real S3 and a real disk.

Slow and failing buckets are real too: `Relay` is a TCP relay in front of the
S3 endpoint that slows responses down or cuts them off; other processes of the
same node are real processes (`python -c FILLER`) sharing the cache directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from server.core.storage import StorageLocation, new_storage_key
from server.storage.cache import FILL_DIR, NodeCache
from server.storage.s3 import S3Store

from .outages import free_port

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024

# Another process of this node, sharing the cache directory: for each key, when told
# to (a line on stdin), wants it `wants` times, waits for the fill and prints its counts
# as JSON. argv: endpoint bucket prefix region directory size max_bytes wants key...
FILLER = """
import asyncio, dataclasses, json, sys
from pathlib import Path
from server.core.storage import StorageLocation
from server.storage.cache import NodeCache
from server.storage.s3 import S3Store

async def main(endpoint, bucket, prefix, region, directory, size, max_bytes, wants, *keys):
    location = StorageLocation("s3", bucket=bucket, prefix=prefix, endpoint=endpoint,
                               region=region)
    store, stack = await S3Store.open(location)
    async with stack:
        cache = NodeCache(store, Path(directory), int(max_bytes))
        await cache.start()
        print("ready", flush=True)
        for key in keys:
            await asyncio.to_thread(sys.stdin.readline)
            for _ in range(int(wants)):
                cache.want(key, int(size))
            await cache.wait_fills()
            print(json.dumps(dataclasses.asdict(cache.counts)), flush=True)

asyncio.run(main(*sys.argv[1:]))
"""

# Holds `.fill/<key>.lock` as a filling process does: its pid inside, and a flock on it.
LOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, str(os.getpid()).encode())
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(30)
"""


# --- real slow and failing buckets -------------------------------------------

class Relay:
    """A TCP relay to the S3 endpoint. `rate` (bytes/s) slows what the bucket sends;
    `cut_after` aborts both connections once that many response bytes went through."""

    def __init__(self, endpoint: str, rate: float | None = None,
                 cut_after: int | None = None) -> None:
        parts = urlsplit(endpoint)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.rate = rate
        self.cut_after = cut_after
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self.writers += [writer, up_writer]
        sent = [0]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       response: bool) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(16384):
                    if response and self.cut_after is not None:
                        room = self.cut_after - sent[0]
                        if room <= len(data):
                            dst.write(data[:room])
                            await dst.drain()
                            writer.transport.abort()
                            up_writer.transport.abort()
                            return
                    dst.write(data)
                    await dst.drain()
                    if response:
                        sent[0] += len(data)
                        if self.rate:
                            await asyncio.sleep(len(data) / self.rate)
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        if self.server is not None:
            await self.server.wait_closed()


# --- fixtures and helpers ----------------------------------------------------

def at(location: StorageLocation, endpoint: str) -> StorageLocation:
    return StorageLocation("s3", bucket=location.bucket, prefix=location.prefix,
                           endpoint=endpoint, region=location.region)


@contextlib.asynccontextmanager
async def opened(location: StorageLocation) -> AsyncIterator[S3Store]:
    store, stack = await S3Store.open(location)
    async with stack:
        yield store


@pytest.fixture
async def store(s3_location: StorageLocation) -> AsyncIterator[S3Store]:
    async with opened(s3_location) as opened_store:
        yield opened_store


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


async def new_cache(store: S3Store, directory: Path, max_bytes: int = 64 * MIB) -> NodeCache:
    cache = NodeCache(store, directory, max_bytes)
    await cache.start()
    return cache


async def stored(store: S3Store, size: int, extension: str = "mp4") -> tuple[str, bytes]:
    key = new_storage_key(extension)
    data = os.urandom(size)
    await store.put_bytes(key, data)
    return key, data


async def fill(cache: NodeCache, key: str, size: int) -> None:
    """want() and wait for the fill; an exception the fill let escape fails the test."""
    before = asyncio.all_tasks()
    cache.want(key, size)
    started = asyncio.all_tasks() - before
    await cache.wait_fills()
    for task in started:
        assert task.done()
        assert task.exception() is None, repr(task.exception())


def leftovers(directory: Path) -> list[str]:
    """Files in the fill directory: parts and locks (none once fills are over)."""
    return sorted(entry.name for entry in os.scandir(directory / FILL_DIR))


def cached(directory: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(directory) if entry.is_file())


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    """A live process that is not this one: `sleep 30`, killed at teardown."""
    proc = subprocess.Popen(["sleep", "30"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def lock_held(lock: Path) -> Iterator[int]:
    """Another live process holding `lock` (pid inside, flock on it); its pid."""
    proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(lock)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


class Filler:
    """Another process of this node with its own NodeCache on the same directory."""

    def __init__(self, location: StorageLocation, directory: Path, keys: list[str], size: int,
                 max_bytes: int = 64 * MIB, wants: int = 1) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FILLER, location.endpoint or "", location.bucket,
             location.prefix, location.region or "us-east-1", str(directory), str(size),
             str(max_bytes), str(wants), *keys],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        assert line.strip() == "ready", line + self.errors()

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    async def counts(self) -> dict[str, int]:
        """Its counts once the fill it was told to do has ended."""
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        assert line, self.errors()
        counts: dict[str, int] = json.loads(line)
        return counts

    def errors(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def fillers() -> Iterator[list[Filler]]:
    started: list[Filler] = []
    yield started
    for filler in started:
        filler.kill()


# --- filling -----------------------------------------------------------------

async def test_a_cold_want_fills_the_file_byte_for_byte(store, cache_dir):
    key, data = await stored(store, 3 * MIB + 17)
    cache = await new_cache(store, cache_dir)
    assert not cache.path(key).exists()
    await fill(cache, key, len(data))
    assert cache.path(key).read_bytes() == data
    assert (cache.counts.fills, cache.counts.misses, cache.counts.fill_failures) == (1, 1, 0)
    assert cache.cached_bytes == len(data)
    assert leftovers(cache_dir) == []
    # A cache started later on the same directory knows the file.
    again = await new_cache(store, cache_dir)
    assert again.cached_bytes == len(data)
    await cache.close()
    await again.close()


async def test_twenty_wants_make_one_fill(store, cache_dir):
    key, data = await stored(store, 2 * MIB)
    cache = await new_cache(store, cache_dir)
    before = asyncio.all_tasks()
    for _ in range(20):
        cache.want(key, len(data))
    assert len(asyncio.all_tasks() - before) == 1
    await cache.wait_fills()
    assert cache.counts.fills == 1 and cache.counts.misses == 20
    assert cache.path(key).read_bytes() == data
    await cache.close()


async def test_processes_sharing_the_directory_fill_once(s3_location, store, cache_dir,
                                                         fillers):
    """Four processes of one node told at the same instant to fill the same file,
    for many files in turn: each file is fetched once."""
    size = 2 * MIB
    files = [await stored(store, size) for _ in range(20)]
    keys = [key for key, _ in files]
    await new_cache(store, cache_dir)  # creates the directory before the processes race
    fillers += [Filler(s3_location, cache_dir, keys, size, wants=10) for _ in range(4)]
    for filler in fillers:
        await filler.ready()
    fills = []
    for _ in keys:
        for filler in fillers:
            filler.go()
        counts = [await filler.counts() for filler in fillers]
        fills.append(sum(c["fills"] for c in counts) - sum(fills))
        assert sum(c["fill_failures"] for c in counts) == 0, counts
    assert fills == [1] * len(keys), f"fills of each file: {fills}"
    for key, data in files:
        assert cache_dir.joinpath(key).read_bytes() == data
    assert leftovers(cache_dir) == []


async def test_a_lock_of_a_live_process_is_left_alone(store, cache_dir):
    key, data = await stored(store, 100_000)
    lock = cache_dir / FILL_DIR / f"{key}.lock"
    lock.parent.mkdir(parents=True)
    with lock_held(lock) as holder:
        cache = await new_cache(store, cache_dir)
        assert lock.read_text() == str(holder), "start() removed a live process's lock"
        await fill(cache, key, len(data))
        assert not cache.path(key).exists()
        assert (cache.counts.fills, cache.counts.fill_failures) == (0, 0)
        assert lock.read_text() == str(holder)
    # The holder died without a word (SIGKILL): its lock no longer holds anyone back.
    await fill(cache, key, len(data))
    assert cache.path(key).read_bytes() == data
    assert cache.counts.fills == 1
    assert leftovers(cache_dir) == []
    await cache.close()


async def test_a_lock_of_a_dead_process_is_taken_over(store, cache_dir):
    key, data = await stored(store, 100_000)
    cache = await new_cache(store, cache_dir)
    lock = cache_dir / FILL_DIR / f"{key}.lock"
    lock.write_text(str(dead_pid()))  # the process died after start() looked
    await fill(cache, key, len(data))
    assert cache.path(key).read_bytes() == data
    assert cache.counts.fills == 1
    assert leftovers(cache_dir) == []
    await cache.close()


# --- crashes ------------------------------------------------------------------

async def test_leftovers_of_a_crash_are_removed_at_start(store, cache_dir, live_pid):
    key, data = await stored(store, 100_000)
    fill_dir = cache_dir / FILL_DIR
    fill_dir.mkdir(parents=True)
    gone = dead_pid()
    (fill_dir / f"{key}.{gone}.part").write_bytes(data[:5000])
    (fill_dir / f"{key}.lock").write_text(str(gone))
    other = new_storage_key("mp4")
    (fill_dir / f"{other}.{live_pid}.part").write_bytes(b"still being written")
    cache = await new_cache(store, cache_dir)
    # The dead process's part and lock are gone; a live process's part is its own.
    assert leftovers(cache_dir) == [f"{other}.{live_pid}.part"]
    assert cache.cached_bytes == 0
    await fill(cache, key, len(data))
    assert cache.path(key).read_bytes() == data
    await cache.close()


async def test_a_process_killed_mid_fill_leaves_no_file_in_place(s3_location, store, cache_dir,
                                                                 fillers):
    key, data = await stored(store, 4 * MIB)
    relay = Relay(s3_location.endpoint or "", rate=1 * MIB)
    slow = at(s3_location, await relay.start())
    try:
        await new_cache(store, cache_dir)
        filler = Filler(slow, cache_dir, [key], len(data))
        fillers.append(filler)
        await filler.ready()
        filler.go()
        part = cache_dir / FILL_DIR / f"{key}.{filler.proc.pid}.part"
        deadline = time.monotonic() + 10
        while not (part.exists() and part.stat().st_size > 256 * 1024):
            assert time.monotonic() < deadline, filler.errors()
            await asyncio.sleep(0.02)
        os.kill(filler.proc.pid, signal.SIGKILL)
        filler.kill()
    finally:
        await relay.close()
    assert 0 < part.stat().st_size < len(data)
    assert not (cache_dir / key).exists()
    assert (cache_dir / FILL_DIR / f"{key}.lock").read_text() == str(filler.proc.pid)

    cache = await new_cache(store, cache_dir)
    assert leftovers(cache_dir) == []
    assert cache.cached_bytes == 0
    await fill(cache, key, len(data))
    assert cache.path(key).read_bytes() == data
    await cache.close()


async def test_the_final_path_only_ever_holds_the_whole_file(s3_location, store, cache_dir):
    key, data = await stored(store, 3 * MIB)
    relay = Relay(s3_location.endpoint or "", rate=4 * MIB)
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.add(os.stat(cache_dir / key).st_size)

    async with opened(at(s3_location, await relay.start())) as slow:
        cache = await new_cache(slow, cache_dir)
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            await fill(cache, key, len(data))
            await asyncio.sleep(0.05)
        finally:
            done.set()
            watcher.join()
            await relay.close()
        await cache.close()
    assert seen == {len(data)}


# --- eviction -----------------------------------------------------------------

async def test_the_least_recently_used_file_goes_first(store, cache_dir):
    size = 100_000
    (a, data_a), (b, _), (c, data_c) = [await stored(store, size) for _ in range(3)]
    cache = await new_cache(store, cache_dir, max_bytes=2 * size + size // 2)
    await fill(cache, a, size)
    await fill(cache, b, size)
    cache.used(a, size)  # a was streamed again: b is now the least recently used
    await fill(cache, c, size)
    assert cached(cache_dir) == sorted([a, c])
    assert cache.path(a).read_bytes() == data_a and cache.path(c).read_bytes() == data_c
    assert cache.counts.evictions == 1
    assert cache.cached_bytes == 2 * size <= cache.max_bytes
    await cache.close()


async def test_fills_at_once_stay_within_the_limit(store, cache_dir):
    size = 100_000
    keys = [(await stored(store, size))[0] for _ in range(3)]
    cache = await new_cache(store, cache_dir, max_bytes=2 * size + size // 2)
    for key in keys:
        cache.want(key, size)
    await cache.wait_fills()
    on_disk = sum(cache.path(key).stat().st_size for key in cached(cache_dir))
    assert cache.cached_bytes == on_disk
    assert on_disk <= cache.max_bytes, f"{on_disk} bytes cached, limit {cache.max_bytes}"
    await cache.close()


async def test_a_file_larger_than_the_cache_is_never_cached(store, cache_dir):
    small, _ = await stored(store, 50_000)
    big, data = await stored(store, 300_000)
    cache = await new_cache(store, cache_dir, max_bytes=200_000)
    await fill(cache, small, 50_000)
    await fill(cache, big, len(data))
    assert cached(cache_dir) == [small]  # and nothing was evicted for it
    assert (cache.counts.fills, cache.counts.evictions) == (1, 0)
    assert leftovers(cache_dir) == []
    assert await cache.read_small(big) == data
    assert cached(cache_dir) == [small]
    await cache.close()


async def test_start_trims_a_directory_over_the_limit(store, cache_dir):
    keys = [(await stored(store, 100_000))[0] for _ in range(3)]
    cache = await new_cache(store, cache_dir)
    for key in keys:
        await fill(cache, key, 100_000)
        await asyncio.sleep(0.01)  # distinct modification times: the oldest goes first
    await cache.close()
    smaller = await new_cache(store, cache_dir, max_bytes=250_000)
    assert cached(cache_dir) == sorted(keys[1:])
    assert smaller.cached_bytes == 200_000
    await smaller.close()


# --- failures -----------------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a disk that fills up."""
    directory = tmp_path / "tiny"
    directory.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(directory)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"cannot mount a tmpfs: {done.stderr}")
        pytest.skip(f"cannot mount a tmpfs: {done.stderr}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


async def test_a_full_disk_fails_the_fill_and_leaves_nothing(store, tiny_disk):
    key, data = await stored(store, 2 * MIB)
    cache = await new_cache(store, tiny_disk, max_bytes=64 * MIB)
    await fill(cache, key, len(data))
    assert (cache.counts.fills, cache.counts.fill_failures) == (0, 1)
    assert cached(tiny_disk) == [] and leftovers(tiny_disk) == []
    assert cache.cached_bytes == 0
    # read_small still answers, from the bucket, and leaves nothing behind either.
    assert await cache.read_small(key) == data
    assert cached(tiny_disk) == [] and leftovers(tiny_disk) == []
    await cache.close()


async def test_a_disk_already_full_fails_the_fill_and_leaves_nothing(store, tiny_disk):
    key, data = await stored(store, 100_000)
    cache = await new_cache(store, tiny_disk, max_bytes=64 * MIB)
    filler = tiny_disk / "operator-file"
    with contextlib.suppress(OSError), open(filler, "wb") as out:
        out.write(b"x" * 2 * MIB)
    await fill(cache, key, len(data))
    assert (cache.counts.fills, cache.counts.fill_failures) == (0, 1)
    assert cached(tiny_disk) == ["operator-file"] and leftovers(tiny_disk) == []
    await cache.close()


async def test_an_object_deleted_meanwhile_fails_the_fill_cleanly(store, cache_dir):
    key, data = await stored(store, 100_000)
    cache = await new_cache(store, cache_dir)
    await store.delete(key)
    await fill(cache, key, len(data))
    assert (cache.counts.fills, cache.counts.fill_failures) == (0, 1)
    assert cached(cache_dir) == [] and leftovers(cache_dir) == []
    await cache.close()


async def test_an_object_of_another_size_is_not_cached(store, cache_dir):
    """The database says one size, the bucket holds another (replaced meanwhile)."""
    key, data = await stored(store, 100_000)
    cache = await new_cache(store, cache_dir)
    await fill(cache, key, len(data) + 1)
    assert (cache.counts.fills, cache.counts.fill_failures) == (0, 1)
    assert cached(cache_dir) == [] and leftovers(cache_dir) == []
    await cache.close()


async def test_an_unreachable_bucket_fails_the_fill_cleanly(s3_location, store, cache_dir):
    key, data = await stored(store, 100_000)
    nowhere = at(s3_location, f"http://127.0.0.1:{free_port()}")
    async with opened(nowhere) as unreachable:
        cache = await new_cache(unreachable, cache_dir)
        await fill(cache, key, len(data))
        assert (cache.counts.fills, cache.counts.fill_failures) == (0, 1)
        assert cached(cache_dir) == [] and leftovers(cache_dir) == []
        await cache.close()


async def test_a_bucket_that_drops_the_connection_mid_file_fails_the_fill_cleanly(
        s3_location, store, cache_dir):
    key, data = await stored(store, 2 * MIB)
    relay = Relay(s3_location.endpoint or "", cut_after=MIB)
    try:
        async with opened(at(s3_location, await relay.start())) as failing:
            cache = await new_cache(failing, cache_dir)
            await fill(cache, key, len(data))
            assert (cache.counts.fills, cache.counts.fill_failures) == (0, 1)
            assert cached(cache_dir) == [] and leftovers(cache_dir) == []
            await cache.close()
    finally:
        await relay.close()
    # The next fill, with the bucket back, succeeds.
    cache = await new_cache(store, cache_dir)
    await fill(cache, key, len(data))
    assert cache.path(key).read_bytes() == data
    await cache.close()


# --- small files ----------------------------------------------------------------

async def test_read_small_serves_the_second_read_from_disk(store, cache_dir):
    key, data = await stored(store, 20_000, "jpg")
    cache = await new_cache(store, cache_dir)
    assert await cache.read_small(key) == data
    assert cache.path(key).read_bytes() == data
    assert (cache.counts.misses, cache.counts.hits) == (1, 0)
    await store.delete(key)
    with pytest.raises(FileNotFoundError):
        await store.get_bytes(key)
    assert await cache.read_small(key) == data
    assert (cache.counts.misses, cache.counts.hits) == (1, 1)
    assert leftovers(cache_dir) == []
    await cache.close()


async def test_read_small_of_a_missing_object_says_so(store, cache_dir):
    cache = await new_cache(store, cache_dir)
    with pytest.raises(FileNotFoundError):
        await cache.read_small(new_storage_key("jpg"))
    assert cached(cache_dir) == [] and leftovers(cache_dir) == []
    await cache.close()


async def test_evict_removes_the_file_and_stops_a_fill_putting_it_back(
        s3_location, store, cache_dir):
    key, data = await stored(store, 2 * MIB)
    relay = Relay(s3_location.endpoint or "", rate=4 * MIB)
    try:
        async with opened(at(s3_location, await relay.start())) as slow:
            cache = await new_cache(slow, cache_dir)
            cache.want(key, len(data))
            await asyncio.sleep(0.2)  # the fill is under way
            await cache.evict(key)  # the video was deleted
            await cache.wait_fills()
            assert cached(cache_dir) == [] and leftovers(cache_dir) == []
            assert cache.cached_bytes == 0
            await cache.close()
    finally:
        await relay.close()
