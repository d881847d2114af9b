"""Stored media: key names, the local directory's helpers, and where STORAGE_URL puts media."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

# Stored files are named `<32 hex digits>.<extension>`; nothing else in the
# directory (temporary uploads, an operator's files) is ever taken for one.
STORAGE_KEY_RE = re.compile(r"[0-9a-f]{32}\.[a-z0-9]{1,8}")


def new_storage_key(extension: str) -> str:
    """A fresh random name for a stored file."""
    return f"{secrets.token_hex(16)}.{extension}"


def storage_path(storage_dir: Path, storage_key: str) -> Path:
    """A stored file's path. Keys are random names the server chose, never a client's."""
    return storage_dir / storage_key


def write_atomic(path: Path, data: bytes, temp: Path | None = None) -> None:
    """Write `data` to `path` whole or not at all: into `temp` (a hidden name beside it by
    default), fsynced, then renamed into place. Blocking: run it in a thread."""
    temp = temp if temp is not None else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


async def unlink(path: Path) -> None:
    """Remove a file off the event loop; a file already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        await asyncio.to_thread(path.unlink)


def settled_keys(storage_dir: Path, min_age: float) -> list[str]:
    """Keys of the stored files left untouched for at least `min_age` seconds.

    Blocking: run it in a thread. Age counts from the later of the last write and
    the last rename, so a file just moved into place is young however old its
    bytes are.
    """
    cutoff = time.time() - min_age
    keys = []
    try:
        entries = os.scandir(storage_dir)
    except FileNotFoundError:
        return []
    with entries:
        for entry in entries:
            if not STORAGE_KEY_RE.fullmatch(entry.name):
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if entry.is_file(follow_symlinks=False) and max(stat.st_mtime,
                                                            stat.st_ctime) < cutoff:
                keys.append(entry.name)
    return keys


# A directory of its own, so listings of stored files never meet it.
MARKER = Path(".tubelet") / "database-id"


def claim_storage(directory: Path, database_id: str) -> str:
    """The id of the database `directory` belongs to, claiming it for `database_id`
    if it has no marker yet."""
    marker = directory / MARKER
    try:
        return marker.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    marker.parent.mkdir(parents=True, exist_ok=True)
    temp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    temp.write_text(database_id + "\n", encoding="ascii")
    try:
        # Two processes claiming at once: the first link wins, and both read it.
        os.link(temp, marker)
    except FileExistsError:
        pass
    finally:
        temp.unlink(missing_ok=True)
    return marker.read_text(encoding="ascii").strip()


class StorageUnavailable(ConnectionError):
    """The object store could not be reached or failed; the request gets a 503."""


@dataclass(frozen=True, slots=True)
class StorageLocation:
    """Where media lives, from STORAGE_URL: a directory, or a bucket of an S3 service."""

    kind: str  # "file" or "s3"
    path: Path | None = None
    bucket: str = ""
    # Keys are stored under this prefix ("" or ending in "/").
    prefix: str = ""
    # None: the service's usual endpoint (AWS), or the embedded one under `make run`.
    endpoint: str | None = None
    region: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.kind == "s3"


_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_PREFIX_RE = re.compile(r"[A-Za-z0-9._\-/]{0,200}")


def parse_storage_url(url: str) -> StorageLocation:
    """`file:///path` or `s3://BUCKET[/prefix]?endpoint=URL&region=NAME`; ValueError says why."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ValueError("a file URL is file:///absolute/path")
        return StorageLocation("file", path=Path(unquote(parts.path)))
    if parts.scheme != "s3":
        raise ValueError("STORAGE_URL is file:///path or s3://bucket?endpoint=...")
    bucket = parts.netloc
    if not _BUCKET_RE.fullmatch(bucket):
        raise ValueError("the bucket name is 3-63 lower-case letters, digits, dots and dashes")
    prefix = parts.path.strip("/")
    if not _PREFIX_RE.fullmatch(prefix) or ".." in prefix.split("/"):
        raise ValueError("the key prefix is letters, digits, '.', '_', '-' and '/'")
    options = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(options) - {"endpoint", "region"}
    if unknown:
        raise ValueError(f"unknown STORAGE_URL option(s): {', '.join(sorted(unknown))}")
    endpoint = options.get("endpoint", [""])[-1] or None
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise ValueError("endpoint is an http:// or https:// URL")
    region = options.get("region", [""])[-1] or None
    return StorageLocation("s3", bucket=bucket, prefix=f"{prefix}/" if prefix else "",
                           endpoint=endpoint, region=region)
