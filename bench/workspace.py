"""Everything one bench run owns: a temp dir, a throwaway database, a Redis prefix, the media."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import redis

# An MP4 ftyp box, so the upload sniffs as video/mp4; the rest is random.
FTYP = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
CHUNK = 1024 * 1024


class Workspace:
    def __init__(self, database_url: str, redis_url: str, keep: bool = False) -> None:
        self.admin_url = database_url
        self.redis_url = redis_url
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="tubelet-bench-"))
        self.logs = self.root / "logs"
        self.logs.mkdir()
        self.redis_prefix = f"tubelet-bench-{secrets.token_hex(4)}"
        self.database_url = ""
        self._databases: list[str] = []

    def __enter__(self) -> Workspace:
        self.database_url = self.new_database()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._drop_databases()
        self._drop_redis_keys()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh database on the server of DATABASE_URL; dropped when the run ends."""
        name = f"tubelet_bench_{secrets.token_hex(4)}"
        with _admin(self.admin_url) as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        self._databases.append(name)
        return urlunsplit(urlsplit(self.admin_url)._replace(path="/" + name))

    def storage(self, label: str) -> Path:
        path = self.root / f"storage-{label}"
        path.mkdir(exist_ok=True)
        return path

    def _drop_databases(self) -> None:
        if not self._databases:
            return
        with _admin(self.admin_url) as cur:
            for name in self._databases:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _drop_redis_keys(self) -> None:
        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(f"{self.redis_prefix}*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


class _admin:
    def __init__(self, url: str) -> None:
        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True

    def __enter__(self) -> psycopg2.extensions.cursor:
        self.cur = self.conn.cursor()
        return self.cur

    def __exit__(self, *_exc: object) -> None:
        self.cur.close()
        self.conn.close()


def make_media(path: Path, size: int) -> str:
    """Write `size` bytes that sniff as MP4; returns their SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        head = FTYP + os.urandom(min(size, CHUNK) - len(FTYP))
        out.write(head)
        digest.update(head)
        left = size - len(head)
        while left > 0:
            block = os.urandom(min(left, CHUNK))
            out.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while block := src.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()
