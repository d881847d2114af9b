"""Where stored media lives on this machine's disk."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path


def storage_path(storage_dir: Path, storage_key: str) -> Path:
    """A stored file's path. Keys are random names the server chose, never a client's."""
    return storage_dir / storage_key


async def unlink(path: Path) -> None:
    """Remove a file off the event loop; a file already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        await asyncio.to_thread(path.unlink)
