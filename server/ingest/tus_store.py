"""Resumable uploads on disk and in PostgreSQL: leases, streamed writes, finishing, expiry.

Each upload is a row in `uploads` and a file STORAGE_DIR/tus/<id>, created by
its first PATCH. The file is on this node's disk whatever the media store is:
with several nodes and S3, an upload's requests need affinity to one node (or
a STORAGE_DIR the nodes share). Only the finished file goes to the media store.

The lease. One PATCH at a time writes an upload, across every process: the
writer holds a lease (`lock_token`, `locked_until` on the row) taken, renewed and
released by single short statements, so no pooled connection is held while a
body streams in. A request that finds a live lease gets 423. A renewal task
extends the lease every RENEW_EVERY seconds; a writer whose lease was lost, or
not confirmed for LEASE - LEASE_MARGIN seconds (PostgreSQL unreachable, a stalled
process), stops writing before anyone else could have taken it. A process that
dies holding a lease leaves it to lapse after at most LEASE seconds.

The offset. `received` in the row is the durable offset: the writer fsyncs the
file before the offset is recorded, every SYNC_EVERY seconds and at the end of a
request, so it never exceeds the bytes on disk. Bytes past it (written by a
process that died before recording them) are cut off when the upload resumes,
and a client that disconnects mid-PATCH keeps what was written. A chunk sent
with Upload-Checksum is all or nothing: it is recorded only once verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import ClientError, StreamReader
from aiohttp.http_exceptions import HttpProcessingError

from server.core.db import Database
from server.core.errors import DEPENDENCY_ERRORS, ApiError, NotFound, Unavailable
from server.core.storage import new_storage_key, unlink

from .media import SNIFF_BYTES, sniff_container
from .tus_rules import CHECKSUM_MISMATCH, Checksum
from .upload import TEMP_PREFIX, StagedFile

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
LEASE = 30.0
RENEW_EVERY = LEASE / 3
# A lease not confirmed for LEASE - LEASE_MARGIN seconds is taken as lost.
LEASE_MARGIN = 8.0
# Longest wait for the next bytes of a body before the request is ended; a
# PATCH never sits on a lease while its client sends nothing.
READ_IDLE = 20.0
SYNC_EVERY = RENEW_EVERY
# Unfinished uploads one user may have at once.
MAX_OPEN_UPLOADS = 20
SWEEP_BATCH = 500
# A file in the tus directory that no row names is removed after this long.
ORPHAN_MIN_AGE = 3600.0
UPLOADS_DIR = "tus"

# What reading a request body raises when the client goes away or breaks framing.
BODY_ERRORS: tuple[type[BaseException], ...] = (
    ClientError, ConnectionError, asyncio.IncompleteReadError, HttpProcessingError,
)

# ...and what else ends reading it: a client silent for READ_IDLE, a cancelled handler.
READ_FAILURES: tuple[type[BaseException], ...] = (
    *BODY_ERRORS, TimeoutError, asyncio.CancelledError,
)

# (author, title, description, staged file, storage key, check before the insert)
CreateVideo = Callable[[int, str, str, StagedFile, str, Callable[[], None]],
                       Awaitable[dict[str, Any]]]


class UploadNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No such upload", "upload_not_found")


def upload_locked() -> ApiError:
    return ApiError(423, "upload_locked",
                    "Another request is writing this upload; retry in a moment")


def upload_gone() -> ApiError:
    return ApiError(410, "upload_expired", "This upload expired and was removed")


def lease_lost() -> ApiError:
    return Unavailable("The upload could not be kept locked; resume it in a moment")


@dataclass(slots=True)
class Upload:
    """An upload's row as a request sees it."""

    id: str
    owner_id: int
    length: int
    received: int
    metadata: str
    title: str
    description: str
    expires_at: datetime
    storage_key: str | None
    video_id: int | None
    finished: bool

    @classmethod
    def of(cls, row: dict[str, Any]) -> Upload:
        return cls(row["id"], row["owner_id"], row["length"], row["received"],
                   row["metadata"], row["title"], row["description"], row["expires_at"],
                   row["storage_key"], row["video_id"], row["finished_at"] is not None)

    @property
    def complete(self) -> bool:
        return self.received == self.length


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease as taken: its token, and when (monotonic) the statement that took it began."""

    token: str
    taken: float


class Held:
    """A lease on one upload, kept alive by a renewal task while a request works on it."""

    def __init__(self, store: TusStore, upload: Upload, lease: Lease) -> None:
        self.store = store
        self.upload = upload
        self.token = lease.token
        self.durable = upload.received
        self._confirmed = lease.taken
        self._lost = False

    def check(self) -> None:
        """Raise unless the lease is certainly still ours: call before every write."""
        if self._lost or time.monotonic() >= self._confirmed + LEASE - LEASE_MARGIN:
            raise lease_lost()

    async def renew(self) -> None:
        started = time.monotonic()
        row = await self.store.db.one("renew_upload_lease", self._params())
        if row is None:
            self._lost = True
            raise lease_lost()
        self._confirmed = started
        self.upload.expires_at = row["expires_at"]

    async def keep(self) -> None:
        """Renew until cancelled; failures are retried, and `check` notices a lapse."""
        while not self._lost:
            await asyncio.sleep(RENEW_EVERY)
            try:
                await self.renew()
            except ApiError:
                log.warning("lease on upload %s was lost", self.upload.id)
            except DEPENDENCY_ERRORS as exc:
                log.warning("renewing the lease on upload %s failed: %s", self.upload.id, exc)

    async def release(self) -> None:
        row = await self.store.db.one("release_upload_lease", self._params())
        if row is not None:
            self.upload.expires_at = row["expires_at"]

    def _params(self) -> dict[str, Any]:
        return {"id": self.upload.id, "token": self.token, "received": self.durable,
                "lease": LEASE, "expiry": self.store.expiry}


class TusStore:
    """The uploads of every user: rows, files, and the leases that guard them."""

    def __init__(self, db: Database, storage_dir: Path, expiry: int,
                 create_video: CreateVideo) -> None:
        self.db = db
        self.storage_dir = storage_dir
        self.directory = storage_dir / UPLOADS_DIR
        self.expiry = expiry
        self._create_video = create_video

    def path(self, upload_id: str) -> Path:
        return self.directory / upload_id

    async def create(self, owner_id: int, length: int, metadata: str, title: str,
                     description: str, filename: str | None, *,
                     leased: bool) -> tuple[Upload, Lease | None]:
        """A new upload; with `leased`, its lease is taken in the same statement."""
        lease = Lease(str(uuid.uuid4()), time.monotonic()) if leased else None
        row = await self.db.one("insert_upload", {
            "id": secrets.token_hex(16), "owner_id": owner_id, "length": length,
            "metadata": metadata, "title": title, "description": description,
            "filename": filename, "expiry": self.expiry,
            "lock_token": lease.token if lease is not None else None,
            "lease": LEASE, "max_open": MAX_OPEN_UPLOADS,
        })
        if row is None:
            raise ApiError(429, "too_many_uploads",
                           f"You have {MAX_OPEN_UPLOADS} unfinished uploads; finish or "
                           "delete one first")
        return Upload.of(row), lease

    async def get(self, upload_id: str, owner_id: int) -> Upload:
        """An upload of this owner; 404 for anyone else's, 410 once expired."""
        row = await self.db.one("upload_of_owner", {"id": upload_id, "owner_id": owner_id})
        if row is None:
            raise UploadNotFound()
        if row["expired"]:
            raise upload_gone()
        return Upload.of(row)

    @asynccontextmanager
    async def hold(self, upload_id: str, owner_id: int,
                   created: tuple[Upload, Lease] | None = None) -> AsyncIterator[Held]:
        """The lease on an upload for the block; 404, 410 or 423 when it cannot be had.

        `created` is an upload just made with its lease already taken.
        """
        if created is not None:
            held = Held(self, *created)
        else:
            lease = Lease(str(uuid.uuid4()), time.monotonic())
            row = await self.db.one("take_upload_lease", {
                "id": upload_id, "owner_id": owner_id, "token": lease.token, "lease": LEASE,
            })
            if row is None:
                await self.get(upload_id, owner_id)  # 404 or 410 rather than 423
                raise upload_locked()
            held = Held(self, Upload.of(row), lease)
        keeper = asyncio.create_task(held.keep(), name=f"tus-lease-{upload_id}")
        try:
            yield held
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            try:
                await held.release()
            except DEPENDENCY_ERRORS as exc:
                # The lease lapses by itself. The bytes are on disk; until a later
                # request records them, HEAD reports the offset recorded before.
                log.warning("releasing the lease on upload %s failed: %s", upload_id, exc)
            held.upload.received = held.durable

    async def receive(self, held: Held, body: StreamReader,
                      checksum: Checksum | None) -> None:
        """Append a request body at the durable offset, streamed in CHUNK pieces.

        Sets `held.durable` to what is safely on disk. A body that ends early
        keeps what arrived (without a checksum) and then raises. A body going
        past the upload's length (413) loses what was not yet recorded; one
        sent with a checksum is kept whole or not at all (460 when it fails).
        """
        upload = held.upload
        start = held.durable
        room = upload.length - start
        fd = await asyncio.to_thread(_open_at, self.path(upload.id), start)
        if fd is None:
            # Fewer bytes on disk than recorded: the record follows the disk, and the
            # client learns the real offset with a HEAD.
            held.durable = await asyncio.to_thread(_size, self.path(upload.id))
            raise offset_mismatch()
        hasher = checksum.hasher() if checksum is not None else None
        written = 0
        synced_at = time.monotonic()
        try:
            while True:
                chunk, failure = await _read_chunk(body)
                if written + len(chunk) > room:
                    raise _discard(ApiError(
                        413, "payload_too_large",
                        f"The body goes past the upload's length of {upload.length} bytes",
                        {"Connection": "close"}))
                if chunk:
                    held.check()
                    await _write(fd, chunk)
                    written += len(chunk)
                    if hasher is not None:
                        hasher.update(chunk)
                    elif time.monotonic() - synced_at >= SYNC_EVERY:
                        await _sync(fd)
                        held.durable = start + written
                        synced_at = time.monotonic()
                if failure is not None:
                    if hasher is None:
                        await _sync(fd)
                        held.durable = start + written
                    else:
                        await _truncate(fd, held.durable)
                    if isinstance(failure, asyncio.CancelledError):
                        # The client went away (aiohttp may cancel its handler) or
                        # the server stops: what is on disk is recorded on the way out.
                        raise failure
                    raise _interrupted(failure, held.durable - start)
                if not chunk:
                    break
            if hasher is not None and checksum is not None \
                    and hasher.digest() != checksum.digest:
                raise _discard(ApiError(CHECKSUM_MISMATCH, "checksum_mismatch",
                                        "The body does not match Upload-Checksum; it was "
                                        "discarded"))
            await _sync(fd)
            held.durable = start + written
        except _Discard as discard:
            with contextlib.suppress(OSError):
                await _truncate(fd, held.durable)
            raise discard.error from None
        except OSError as exc:
            log.warning("writing upload %s failed: %s", upload.id, exc)
            raise Unavailable("The upload cannot be stored right now; resume it later") \
                from None
        finally:
            await asyncio.to_thread(os.close, fd)

    async def finish(self, held: Held) -> int:
        """Turn a complete upload into a video (status processing); its id.

        Safe to repeat after a crash or a failure at any step: the planned file
        name is recorded first, so a video made by a finish whose answer was lost
        is found instead of made twice, and the upload's own file stays until the
        video has it (a hard link, so no copy and no second disk space). The file
        is stored (with S3, uploaded) under the lease, which its renewal task
        keeps, and no pooled connection waits on it; the lease is checked again
        between the upload and the insert, so a finish that lost it meanwhile
        gives up. A store that fails (503) leaves the upload complete and unfinished, its
        bytes here: the next HEAD or PATCH finishes it.
        """
        upload = held.upload
        if upload.storage_key is not None:
            made = await self.db.one("video_of_storage_key",
                                     {"storage_key": upload.storage_key})
            if made is not None:
                await self._finished(held, made["id"])
                return int(made["id"])
        path = self.path(upload.id)
        sniffed = sniff_container(await asyncio.to_thread(_head, path, SNIFF_BYTES))
        if sniffed is None:
            await self._drop(held)
            raise ApiError(415, "unsupported_media_type",
                           "The file is not a supported video (MP4, MOV, WebM, Matroska or "
                           "Ogg); the upload was removed")
        content_type, extension = sniffed
        key = new_storage_key(extension)
        if await self.db.one("plan_upload_storage_key",
                             {"id": upload.id, "token": held.token, "storage_key": key}) is None:
            raise lease_lost()
        upload.storage_key = key
        staged = self.storage_dir / f"{TEMP_PREFIX}{secrets.token_hex(16)}.part"
        held.check()
        await asyncio.to_thread(_link_or_copy, path, staged)
        row = await self._create_video(
            upload.owner_id, upload.title, upload.description,
            StagedFile(staged, upload.length, content_type, extension), key, held.check)
        await self._finished(held, int(row["id"]))
        return int(row["id"])

    async def _finished(self, held: Held, video_id: int) -> None:
        upload = held.upload
        await self.db.one("finish_upload", {"id": upload.id, "token": held.token,
                                            "video_id": video_id, "expiry": self.expiry})
        upload.video_id, upload.finished = video_id, True
        held.durable = upload.length
        await unlink(self.path(upload.id))

    async def _drop(self, held: Held) -> None:
        await self.db.one("delete_leased_upload", {"id": held.upload.id, "token": held.token})
        await unlink(self.path(held.upload.id))

    async def terminate(self, upload_id: str, owner_id: int) -> None:
        """DELETE: the record and its bytes go; 423 while a PATCH writes it."""
        if await self.db.one("delete_unleased_upload",
                             {"id": upload_id, "owner_id": owner_id}) is None:
            await self.get(upload_id, owner_id)
            raise upload_locked()
        await unlink(self.path(upload_id))

    async def sweep(self) -> int:
        """Remove expired uploads and their files, then files no record names; how many."""
        removed = 0
        while True:
            rows = await self.db.all("delete_expired_uploads", {"limit": SWEEP_BATCH})
            for row in rows:
                await unlink(self.path(row["id"]))
            removed += len(rows)
            if len(rows) < SWEEP_BATCH:
                break
        names = await asyncio.to_thread(_settled_files, self.directory, ORPHAN_MIN_AGE)
        for start in range(0, len(names), SWEEP_BATCH):
            batch = names[start:start + SWEEP_BATCH]
            known = {r["id"] for r in await self.db.all("known_upload_ids", {"ids": batch})}
            for name in batch:
                if name not in known:
                    await unlink(self.path(name))
                    removed += 1
        if removed:
            log.info("removed %d expired or abandoned uploads", removed)
        return removed


def offset_mismatch() -> ApiError:
    return ApiError(409, "offset_mismatch",
                    "Upload-Offset is not the upload's current offset; ask with HEAD")


class _Discard(Exception):
    """The body so far is thrown away (cut back to the durable offset), then `error`."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def _discard(error: ApiError) -> _Discard:
    return _Discard(error)


def _interrupted(failure: BaseException, kept: int) -> ApiError:
    if isinstance(failure, TimeoutError):
        return ApiError(408, "request_timeout",
                        f"No data for {READ_IDLE:g} s; {kept} bytes were kept, resume from "
                        "the offset HEAD reports", {"Connection": "close"})
    return ApiError(400, "upload_incomplete",
                    f"The body ended early; {kept} bytes were kept", {"Connection": "close"})


async def _read_chunk(body: StreamReader) -> tuple[bytes, BaseException | None]:
    """Up to CHUNK bytes, and the failure that ended the body early, if one did.

    A cancellation is a failure too, returned rather than raised, so the bytes
    read before it are still written.
    """
    data = bytearray()
    while len(data) < CHUNK:
        try:
            async with asyncio.timeout(READ_IDLE):
                part = await body.read(CHUNK - len(data))
        except READ_FAILURES as exc:
            return bytes(data), exc
        if not part:
            break
        data += part
    return bytes(data), None


def _open_at(path: Path, offset: int) -> int | None:
    """A write descriptor positioned at `offset`, the file cut there; None if shorter."""
    # Made on first use, so a server that never took a tus upload leaves no trace.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size < offset:
            os.close(fd)
            return None
        if size > offset:
            os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


async def _write(fd: int, data: bytes) -> None:
    await asyncio.to_thread(_write_all, fd, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def _sync(fd: int) -> None:
    await asyncio.to_thread(os.fsync, fd)


async def _truncate(fd: int, size: int) -> None:
    await asyncio.to_thread(os.ftruncate, fd, size)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _link_or_copy(source: Path, target: Path) -> None:
    """A second name for the upload's bytes: a hard link, or a copy where links fail."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _head(path: Path, size: int) -> bytes:
    with open(path, "rb") as source:
        return source.read(size)


def _settled_files(directory: Path, min_age: float) -> list[str]:
    cutoff = time.time() - min_age
    names = []
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return []
    with entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file(follow_symlinks=False) \
                        and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    names.append(entry.name)
    return names

