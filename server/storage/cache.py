"""This node's read-through cache of bucket media, on local disk (CACHE_DIR).

A stream is sent with sendfile from the cached file, exactly as from file
storage. A request for a file not cached yet is answered at once by forwarding
its range to the bucket, while the whole file is fetched into the cache in the
background, once per node however many requests ask:

- within a process, one fill task per key;
- across the processes of a node sharing CACHE_DIR, an flock on
  `.fill/<key>.lock`, which the kernel lets go of when its process ends, however
  it ends; the holder removes the file before letting go.

A fill writes `.fill/<key>.<pid>.part`, checks its size, fsyncs it and renames
it into place, so a half-written file is never served; parts and locks left by
a crash are removed when the cache starts. A full disk or a failed fill leaves
nothing behind, and requests go on being forwarded. Files are evicted least
recently used first to stay within CACHE_MAX_BYTES; a descriptor already open
on an evicted file keeps reading it. Each process keeps its own account of the
cache's bytes, seeded from the directory when it starts and kept up to date
with the files it sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from server.core.storage import STORAGE_KEY_RE, StorageUnavailable, write_atomic

from .store import MediaStore

log = logging.getLogger(__name__)

FILL_DIR = ".fill"
# Fills one process runs at once; more files wait their turn (and are forwarded meanwhile).
MAX_FILLS = 4


@dataclass(slots=True)
class CacheCounts:
    hits: int = 0
    misses: int = 0
    fills: int = 0
    fill_failures: int = 0
    evictions: int = 0

    def families(self, cached_bytes: int, limit: int) -> list[Metric]:
        requests = CounterMetricFamily(
            "tubelet_node_cache_requests", "Stream requests by whether this node's cache "
            "had the file (hit) or the range was forwarded to the bucket (miss)",
            labels=["result"])
        requests.add_metric(["hit"], self.hits)
        requests.add_metric(["miss"], self.misses)
        fills = CounterMetricFamily("tubelet_node_cache_fills",
                                    "Files fetched whole into the cache", labels=["result"])
        fills.add_metric(["ok"], self.fills)
        fills.add_metric(["failed"], self.fill_failures)
        evictions = CounterMetricFamily("tubelet_node_cache_evictions",
                                        "Files removed from the cache to make room or on delete")
        evictions.add_metric([], self.evictions)
        size = GaugeMetricFamily("tubelet_node_cache_bytes",
                                 "Bytes in the node's cache, and its limit", labels=["kind"])
        size.add_metric(["used"], cached_bytes)
        size.add_metric(["limit"], limit)
        return [requests, fills, evictions, size]


class NodeCache:
    def __init__(self, store: MediaStore, directory: Path, max_bytes: int) -> None:
        self.store = store
        self.directory = directory
        self.max_bytes = max_bytes
        self._fill_dir = directory / FILL_DIR
        # Least recently used first.
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0
        self._fills: dict[str, asyncio.Task[None]] = {}
        # Evicted while a fill of them ran: the fill must not put them back.
        self._dropped: set[str] = set()
        self._slots = asyncio.Semaphore(MAX_FILLS)
        self.counts = CacheCounts()
        # Told of every file evicted, so descriptors kept on it are closed and its
        # space is freed (the stream's open-file cache).
        self.on_evict: list[Callable[[str], None]] = []

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def path(self, key: str) -> Path:
        return self.directory / key

    async def start(self) -> None:
        found = await asyncio.to_thread(self._scan)
        for key, size in found:
            self._remember(key, size)
        await self._make_room(0)

    def _scan(self) -> list[tuple[str, int]]:
        self._fill_dir.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(self._fill_dir):
            if _leftover(Path(entry.path)):
                _remove(Path(entry.path))
        return self._scan_files()

    def _scan_files(self) -> list[tuple[str, int]]:
        """The cached files, (key, size), oldest first. Blocking."""
        files = []
        for entry in os.scandir(self.directory):
            if STORAGE_KEY_RE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                try:
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                files.append((stat.st_mtime, entry.name, stat.st_size))
        return [(name, size) for _, name, size in sorted(files)]

    def _resync(self, found: list[tuple[str, int]]) -> None:
        """Count the files on disk: those this process did not know of come first (oldest),
        those gone are dropped, the rest keep their order of use."""
        on_disk = dict(found)
        known = [(key, on_disk[key]) for key in self._sizes if key in on_disk]
        fresh = [(key, size) for key, size in found if key not in self._sizes]
        self._sizes = OrderedDict(fresh + known)
        self._bytes = sum(self._sizes.values())

    def keys(self) -> list[str]:
        return list(self._sizes)

    def _remember(self, key: str, size: int) -> None:
        old = self._sizes.pop(key, None)
        if old is not None:
            self._bytes -= old
        self._sizes[key] = size
        self._bytes += size

    def used(self, key: str, size: int) -> None:
        """A cached file was opened: it is now the most recently used."""
        if key in self._sizes:
            self._sizes.move_to_end(key)
        else:
            self._remember(key, size)  # filled by another process of this node

    def want(self, key: str, size: int) -> None:
        """A request found `key` not cached: fetch it in the background unless under way."""
        self.counts.misses += 1
        if key in self._fills or size > self.max_bytes:
            return
        task = asyncio.ensure_future(self._fill(key, size))
        self._fills[key] = task
        task.add_done_callback(lambda _: self._fills.pop(key, None))

    async def wait_fills(self) -> None:
        """Until the fills under way now have ended (tests and the benchmark)."""
        if self._fills:
            await asyncio.gather(*list(self._fills.values()), return_exceptions=True)

    async def _fill(self, key: str, size: int) -> None:
        async with self._slots:
            lock = self._fill_dir / f"{key}.lock"
            part = self._fill_dir / f"{key}.{os.getpid()}.part"
            try:
                held = await asyncio.to_thread(_take_lock, lock)
            except OSError as exc:
                self.counts.fill_failures += 1
                log.warning("could not cache %s: %s", key, exc)
                return
            if held is None:
                return  # another process of this node is fetching it
            try:
                if await asyncio.to_thread(_size_of, self.path(key)) == size:
                    self._remember(key, size)  # another process filled it meanwhile
                    return
                # Other processes of this node fill the same directory: count what is there.
                self._resync(await asyncio.to_thread(self._scan_files))
                await self._make_room(size)
                self._dropped.discard(key)
                await self.store.fetch(key, part)
                got = (await asyncio.to_thread(os.stat, part)).st_size
                if got != size:
                    raise OSError(f"fetched {got} bytes, expected {size}")
                if key in self._dropped:
                    return
                await asyncio.to_thread(os.replace, part, self.path(key))
                self._remember(key, size)
                self.counts.fills += 1
                # Fills that ran at once each made room for themselves alone.
                await self._make_room(0)
            except (OSError, StorageUnavailable) as exc:
                # FileNotFoundError included: the object was deleted meanwhile.
                self.counts.fill_failures += 1
                log.warning("could not cache %s: %s", key, exc)
            finally:
                await asyncio.to_thread(_remove, part)
                await asyncio.to_thread(_release_lock, lock, held)

    async def _make_room(self, size: int) -> None:
        while self._sizes and self._bytes + size > self.max_bytes:
            key, _ = next(iter(self._sizes.items()))
            await self.evict(key)

    async def evict(self, key: str) -> None:
        """Remove a file from this node's cache (a delete, or room for another)."""
        size = self._sizes.pop(key, None)
        if size is not None:
            self._bytes -= size
            self.counts.evictions += 1
        if key in self._fills:
            self._dropped.add(key)
        await asyncio.to_thread(_remove, self.path(key))
        for listener in self.on_evict:
            listener(key)

    async def read_small(self, key: str) -> bytes:
        """A small file (a poster, a storyboard) whole, through the cache."""
        try:
            data = await asyncio.to_thread(self.path(key).read_bytes)
        except FileNotFoundError:
            pass
        else:
            self.counts.hits += 1
            self.used(key, len(data))
            return data
        self.counts.misses += 1
        data = await self.store.get_bytes(key)
        if len(data) <= self.max_bytes:
            try:
                await self._make_room(len(data))
                # Unique: two requests of one process may fetch the same file at once.
                part = self._fill_dir / f"{key}.{secrets.token_hex(4)}.{os.getpid()}.part"
                await asyncio.to_thread(write_atomic, self.path(key), data, part)
                self._remember(key, len(data))
                await self._make_room(0)
            except OSError as exc:
                log.warning("could not cache %s: %s", key, exc)
        return data

    async def close(self) -> None:
        for task in list(self._fills.values()):
            task.cancel()
        await self.wait_fills()


async def read_whole(store: MediaStore, cache: NodeCache | None, key: str) -> bytes:
    """A small stored file (a poster, a storyboard, an avatar) whole: through this node's
    cache when media is in a bucket, from the store itself otherwise."""
    if cache is not None:
        return await cache.read_small(key)
    return await store.get_bytes(key)


def _owner_alive(pid: str) -> bool:
    """Whether the process that left a part still runs. Our own pid is an
    earlier process's (containers reuse pids): this one knows its own fills."""
    try:
        number = int(pid)
        os.kill(number, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return number != os.getpid()


def _leftover(path: Path) -> bool:
    """A part of a fill whose process is gone, or a lock nobody holds."""
    if path.name.endswith(".part"):
        return not _owner_alive(path.name.split(".")[-2])
    if not path.name.endswith(".lock"):
        return False
    held = _take_lock(path)
    if held is not None:
        _release_lock(path, held)
    return False


def _take_lock(lock: Path) -> int | None:
    """A descriptor holding an flock on `lock`, or None while another process holds it."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The holder before us removed the file after we opened it: lock the new one.
            if _inode_of(lock) == os.fstat(fd).st_ino:
                with contextlib.suppress(OSError):  # the pid is for people; a full disk
                    os.ftruncate(fd, 0)
                    os.write(fd, str(os.getpid()).encode("ascii"))
                return fd
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _release_lock(lock: Path, fd: int) -> None:
    # Removed while still held, so a process that opened it meanwhile sees it replaced.
    try:
        _remove(lock)
    finally:
        os.close(fd)


def _inode_of(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
