"""What a media store does, whichever kind it is."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

# Object types by the extension of the key the server chose.
CONTENT_TYPES = {
    "mp4": "video/mp4", "m4v": "video/mp4", "mov": "video/quicktime", "webm": "video/webm",
    "mkv": "video/x-matroska", "ogv": "video/ogg", "jpg": "image/jpeg", "vtt": "text/vtt",
}


def content_type_of(key: str) -> str:
    return CONTENT_TYPES.get(key.rpartition(".")[2], "application/octet-stream")


class RangeBody(Protocol):
    """The bytes of one range of an object, as they arrive."""

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class MediaStore(Protocol):
    """Stored media by key. Missing objects raise FileNotFoundError; an unreachable
    store raises `server.core.storage.StorageUnavailable` (a 503)."""

    # True when objects live elsewhere and this node serves them through its cache.
    remote: bool

    def local_path(self, key: str) -> Path | None:
        """The object's file on this machine, for file storage; None for a bucket."""

    async def put_file(self, key: str, source: Path) -> None:
        """Store the file at `source` under `key`, consuming it (moved, or uploaded
        and removed). `source` is on the scratch disk (STORAGE_DIR)."""

    async def put_bytes(self, key: str, data: bytes) -> None: ...

    async def get_bytes(self, key: str) -> bytes: ...

    async def fetch(self, key: str, target: Path) -> None:
        """Copy the object into the file `target` (created or truncated), streamed."""

    async def open_range(self, key: str, start: int, length: int) -> RangeBody:
        """The range's bytes; errors before any byte is sent are raised here."""

    async def delete(self, key: str) -> None:
        """Remove the object; one already gone is fine."""

    async def settled_keys(self, min_age: float) -> list[str]:
        """Keys of stored media untouched for `min_age` seconds (the orphan sweep)."""

    async def claim(self, database_id: str) -> str:
        """The database the store belongs to, claiming it for `database_id` if unclaimed."""

    async def presign(self, key: str, ttl: int) -> str | None:
        """A URL that reads the object for `ttl` seconds; None when there is none."""

    async def close(self) -> None: ...
