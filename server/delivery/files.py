"""What the stream serves: per-process metadata of stored files and their open descriptors.

A seeking player's many requests cost no database round trip: each process keeps
the file's headers and an open descriptor. Every cached video is forgotten as
soon as the change feed reports a change to it (`server.core.changes`).

With S3 storage the file is opened from this node's cache (`server.storage.cache`);
one not cached yet is no error but a forwarded range (`remote`), and a video
deleted or no longer playable leaves the node's cache too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from server.core.cache import LRU, SingleFlight
from server.core.db import Database
from server.core.storage import storage_path
from server.storage.cache import NodeCache

from .counts import StreamCounts
from .ranges import Validators, format_http_date
from .sendfile import HttpDate, header_fields, shut_down

if TYPE_CHECKING:
    from .remote import Redirects

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VideoFile:
    key: str
    path: Path
    size: int
    content_type: str
    validators: Validators
    # ETag, Last-Modified, Cache-Control, Accept-Ranges, X-Content-Type-Options: formatted
    # once, not per request.
    headers: Mapping[str, str]
    # The same with Content-Type and Server, as header lines for a direct response.
    fields: bytes
    # Served only with a signed URL, and kept by no shared cache.
    private: bool = False


def video_file(key: str, path: Path, size: int, content_type: str, validators: Validators,
               max_age: int, private: bool = False) -> VideoFile:
    headers = MappingProxyType({
        "ETag": validators.etag,
        "Last-Modified": format_http_date(validators.last_modified),
        "Cache-Control": f"{'private' if private else 'public'}, max-age={max_age}",
        "Accept-Ranges": "bytes",
        # Media a browser sniffed as HTML or script would run as this origin's page.
        "X-Content-Type-Options": "nosniff",
    })
    fields = header_fields({**headers, "Content-Type": content_type})
    return VideoFile(key, path, size, content_type, validators, headers, fields, private)


class Senders:
    """The connections sending one video now, so a delete can cut them off."""

    __slots__ = ("streams",)

    def __init__(self) -> None:
        self.streams: set[asyncio.BaseTransport] = set()

    def cut_off(self) -> int:
        """Close the connections still sending; how many there were.

        Shut down, not aborted: a transport aborted under loop.sendfile leaves the
        sendfile waiting for ever (CPython 3.11), with the handler and the file's
        descriptor; after a shutdown the send fails and the handler closes it."""
        cut = 0
        for transport in list(self.streams):
            if not transport.is_closing():
                sock = transport.get_extra_info("socket")
                if sock is None:
                    transport.abort()  # type: ignore[attr-defined]
                else:
                    shut_down(sock)
                cut += 1
        self.streams.clear()
        return cut


class OpenFile(Senders):
    """A read-only descriptor of a stored file, shared by the requests that stream it.

    The cache holds one reference and every request holds one while it sends, so
    an eviction never closes the descriptor under a sendfile in flight. A file
    unlinked meanwhile stays readable through it, which is what those requests want.
    """

    __slots__ = ("fd", "refs", "checked")

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.refs = 1
        self.checked = time.monotonic()

    def acquire(self, transport: asyncio.BaseTransport | None = None) -> OpenFile:
        self.refs += 1
        if transport is not None:
            self.streams.add(transport)
        return self

    def release(self, transport: asyncio.BaseTransport | None = None) -> None:
        if transport is not None:
            self.streams.discard(transport)
        self.refs -= 1
        if self.refs == 0:
            os.close(self.fd)


class VideoFileCache:
    """Per-process LRU of stream metadata and open files; misses are remembered briefly.

    Uploads and deletes reach every process through the change feed (`changed`).
    """

    def __init__(self, capacity: int = 8192, negative_ttl: float = 2.0,
                 open_files: int = 256, recheck: float = 1.0,
                 node_cache: NodeCache | None = None) -> None:
        self.capacity = capacity
        # With S3 storage: files are opened from this node's cache, and a file not
        # there is forwarded from the bucket, not a video gone.
        self.node_cache = node_cache
        # Responses forwarding a video's ranges from the bucket.
        self.proxying: dict[int, Senders] = {}
        self.negative_ttl = negative_ttl
        self.open_files = open_files
        self.recheck = recheck
        self._hits: LRU[int, VideoFile] = LRU(capacity)
        self._misses: dict[int, float] = {}
        self._files: LRU[int, OpenFile] = LRU(open_files)
        self.date = HttpDate()
        self.counts = StreamCounts()
        # Bumped by every change: a load that began before one must not cache
        # what it read, which the change may already have made stale.
        self.generation = 0

    def get(self, video_id: int) -> VideoFile | None | bool:
        """The cached file, None for a remembered miss, False when unknown."""
        found = self._hits.get(video_id)
        if found is not None:
            return found
        expires = self._misses.get(video_id)
        if expires is not None:
            if expires > time.monotonic():
                return None
            del self._misses[video_id]
        return False

    def put(self, video_id: int, value: VideoFile | None) -> None:
        if value is None:
            if len(self._misses) >= self.capacity:
                self._misses.clear()
            self._misses[video_id] = time.monotonic() + self.negative_ttl
            return
        self._hits.put(video_id, value)

    def evict(self, video_id: int) -> None:
        self._hits.pop(video_id)
        self._misses.pop(video_id, None)
        self._close(video_id)

    def open(self, video_id: int, video: VideoFile,
             transport: asyncio.BaseTransport | None = None) -> OpenFile:
        """The video's file, referenced for the caller, who must release() it.

        An open() and close() per request are a measurable share of a small
        range request, so descriptors are kept. Deletes evict them; should an
        eviction be missed, a kept descriptor whose file was unlinked counts as
        gone, as a fresh open() would, once its `recheck` seconds are up.
        """
        handle = self._files.get(video_id)
        if handle is not None:
            now = time.monotonic()
            if now - handle.checked >= self.recheck:
                if not os.fstat(handle.fd).st_nlink:
                    self._close(video_id)
                    raise FileNotFoundError(str(video.path))
                handle.checked = now
            if self.node_cache is not None:
                self.node_cache.used(video.key, video.size)
            return handle.acquire(transport)
        handle = OpenFile(os.open(video.path, os.O_RDONLY))
        if self.node_cache is not None:
            self.node_cache.used(video.key, video.size)
        for _, evicted in self._files.put(video_id, handle):
            evicted.release()
        return handle.acquire(transport)

    def open_present(self, video_id: int, video: VideoFile,
                     transport: asyncio.BaseTransport | None = None) -> OpenFile | None:
        """open(), or None with the video forgotten when its file is gone.

        Files are never rewritten in place: a kept descriptor reads the same bytes.
        """
        try:
            return self.open(video_id, video, transport)
        except FileNotFoundError:
            if self.node_cache is None:
                self.evict(video_id)
            return None

    def close(self) -> None:
        for _, handle in self._files.clear():
            handle.release()

    def _close(self, video_id: int) -> None:
        handle = self._files.pop(video_id)
        if handle is not None:
            handle.release()

    def close_key(self, key: str) -> None:
        """Close the kept descriptor of a file the node's cache evicted, freeing its space."""
        for video_id in list(self._files):
            cached = self._hits.get(video_id)
            if cached is not None and cached.key == key:
                self._close(video_id)

    def peek(self, video_id: int) -> VideoFile | None:
        return self._hits.get(video_id)

    def changed(self, video_id: int | None) -> tuple[list[Senders], bool] | None:
        """Forget one video, or (None) every video.

        The forgotten video's responses in flight, if any, and whether it was
        served without a signature (not private) until now.
        """
        self.generation += 1
        if video_id is not None:
            handle = self._files.get(video_id)
            cached = self._hits.get(video_id)
            self.evict(video_id)
            sending = [senders for senders in (handle, self.proxying.get(video_id))
                       if senders is not None and senders.streams]
            if not sending:
                return None
            return sending, cached is None or not cached.private
        self._hits.clear()
        self._misses.clear()
        self.close()
        return None


def etag_for(storage_key: str) -> str:
    # Stored files are never rewritten: the random storage key names one content.
    return f'"{storage_key}"'


class VideoFiles:
    """Loads a video's stream metadata once, however many requests ask at once."""

    def __init__(self, db: Database, storage_dir: Path, max_age: int,
                 private_max_age: int | None = None,
                 node_cache: NodeCache | None = None) -> None:
        self._db = db
        # Where files are opened: the storage directory, or this node's cache of the bucket.
        self._storage_dir = storage_dir if node_cache is None else node_cache.directory
        self._max_age = max_age
        self._private_max_age = max_age if private_max_age is None else private_max_age
        self.remote = node_cache
        # STREAM_REDIRECT=presigned: streams answer with a redirect to the bucket.
        self.redirect: Redirects | None = None
        self.cache = VideoFileCache(node_cache=node_cache)
        if node_cache is not None:
            node_cache.on_evict.append(self.cache.close_key)
        self._loads: SingleFlight[int, VideoFile | None] = SingleFlight()
        self._checks: set[asyncio.Future[None]] = set()

    def changed(self, video_id: int | None) -> None:
        """A change feed subscriber. Responses still sending a video that is no longer
        served (deleted, no longer playable, or made private: those may have been
        unsigned) are cut off too, so a player streaming one long `bytes=0-`
        response stops within a second or two, as new requests do. The author's
        player asks again with its signed URL."""
        known = None if video_id is None else self.cache.peek(video_id)
        found = self.cache.changed(video_id)
        cached_key = None if known is None or self.remote is None else known.key
        if video_id is not None and (found is not None or cached_key is not None):
            sending, was_open = found if found is not None else ([], False)
            check = asyncio.ensure_future(
                self._after_change(video_id, sending, was_open, cached_key))
            self._checks.add(check)
            check.add_done_callback(self._checks.discard)

    async def _after_change(self, video_id: int, sending: list[Senders], was_open: bool,
                            cached_key: str | None) -> None:
        """Cut off responses of a video no longer served, and drop its file from this
        node's cache."""
        try:
            row = await self._db.one("video_file", {"id": video_id})
        except Exception as exc:
            # The next request reloads and answers for itself; the change itself
            # is not lost, and this check is only about responses in flight.
            log.warning("could not check video %d after a change: %r", video_id, exc)
            return
        if row is None or (was_open and row["visibility"] == "private"):
            cut = sum(senders.cut_off() for senders in sending)
            if cut:
                log.info("video %d is gone or private: cut off %d response(s) in flight",
                         video_id, cut)
        if self.remote is not None and cached_key is not None and (
                row is None or row["storage_key"] != cached_key):
            await self.remote.evict(cached_key)

    async def close(self) -> None:
        for check in list(self._checks):
            check.cancel()
        if self._checks:
            await asyncio.gather(*self._checks, return_exceptions=True)
        self.cache.close()

    async def load(self, video_id: int) -> VideoFile | None:
        cache = self.cache
        cached = cache.get(video_id)
        if cached is not False:
            cache.counts.hits += 1
            return cached  # type: ignore[return-value]
        cache.counts.misses += 1
        return await self._loads.run(video_id, lambda: self._read(video_id))

    async def _read(self, video_id: int) -> VideoFile | None:
        generation = self.cache.generation
        row = await self._db.one("video_file", {"id": video_id})
        private = row is not None and row["visibility"] == "private"
        value = None if row is None else video_file(
            key=row["storage_key"],
            path=storage_path(self._storage_dir, row["storage_key"]),
            size=row["size"],
            content_type=row["content_type"],
            validators=Validators(etag=etag_for(row["storage_key"]),
                                  last_modified=int(row["created"])),
            max_age=self._private_max_age if private else self._max_age,
            private=private,
        )
        if self.cache.generation == generation:
            self.cache.put(video_id, value)
        return value
