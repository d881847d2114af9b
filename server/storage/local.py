"""File storage: media as files in STORAGE_DIR, streamed from where they lie."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from server.core.storage import claim_storage, settled_keys, storage_path, unlink, write_atomic

CHUNK = 256 * 1024


class FileRange:
    def __init__(self, path: Path, start: int, length: int) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._start = start
        self._length = length

    async def chunks(self) -> AsyncIterator[bytes]:
        offset, left = self._start, self._length
        while left > 0:
            data = await asyncio.to_thread(os.pread, self._fd, min(CHUNK, left), offset)
            if not data:
                raise FileNotFoundError("the file ended early")
            offset += len(data)
            left -= len(data)
            yield data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class FileStore:
    remote = False

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def local_path(self, key: str) -> Path:
        return storage_path(self.directory, key)

    async def put_file(self, key: str, source: Path) -> None:
        # The scratch files are in the same directory's file system: a rename.
        await asyncio.to_thread(os.replace, source, self.local_path(key))

    async def put_bytes(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(write_atomic, self.local_path(key), data)

    async def get_bytes(self, key: str) -> bytes:
        return await asyncio.to_thread(self.local_path(key).read_bytes)

    async def fetch(self, key: str, target: Path) -> None:
        await asyncio.to_thread(shutil.copyfile, self.local_path(key), target)

    async def open_range(self, key: str, start: int, length: int) -> FileRange:
        return await asyncio.to_thread(FileRange, self.local_path(key), start, length)

    async def delete(self, key: str) -> None:
        await unlink(self.local_path(key))

    async def settled_keys(self, min_age: float) -> list[str]:
        return await asyncio.to_thread(settled_keys, self.directory, min_age)

    async def claim(self, database_id: str) -> str:
        return await asyncio.to_thread(claim_storage, self.directory, database_id)

    async def presign(self, key: str, ttl: int) -> str | None:
        return None

    async def close(self) -> None:
        return None
