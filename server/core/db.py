"""PostgreSQL access: the aiopg pool, named SQL from sql/queries, and migrations."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiopg
import psycopg2.extras
from aiohttp import web

from .keys import CONFIG_KEY, DB_KEY

# An aiopg cursor; aiopg ships no type information.
Statements = Any
Params = Mapping[str, Any] | tuple[Any, ...]

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
MIGRATION_RE = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")
NAME_RE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
# Arbitrary constant identifying the migration lock among advisory locks.
MIGRATION_LOCK_ID = 0x7475_6265


class Queries(Mapping[str, str]):
    """Named SQL statements read from `-- name: x` sections of sql/queries/*.sql."""

    def __init__(self, statements: dict[str, str]) -> None:
        self._statements = statements

    @classmethod
    def load(cls, directory: Path = SQL_DIR / "queries") -> Queries:
        statements: dict[str, str] = {}
        for path in sorted(directory.glob("*.sql")):
            for name, body in split_named(path.read_text(encoding="utf-8")):
                if name in statements:
                    raise ValueError(f"query {name!r} defined twice ({path.name})")
                statements[name] = body
        return cls(statements)

    def __getitem__(self, name: str) -> str:
        return self._statements[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._statements)

    def __len__(self) -> int:
        return len(self._statements)


def split_named(text: str) -> list[tuple[str, str]]:
    """Split a file of `-- name: x` sections into (name, statement) pairs."""
    matches = list(NAME_RE.finditer(text))
    out = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[match.end():end].strip().rstrip(";").strip()
        out.append((match.group(1), body))
    return out


def migration_files(directory: Path = SQL_DIR) -> list[tuple[int, Path]]:
    found = []
    for path in directory.iterdir():
        match = MIGRATION_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    found.sort()
    versions = [v for v, _ in found]
    if len(set(versions)) != len(versions):
        raise ValueError("two migrations share a number")
    return found


async def migrate(dsn: str, directory: Path = SQL_DIR) -> list[int]:
    """Apply pending migrations, each in its own transaction.

    A session advisory lock serialises concurrent starters: the second waits,
    then finds nothing left to apply.
    """
    applied: list[int] = []
    async with aiopg.connect(dsn) as conn, conn.cursor() as cur:
        await cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        try:
            await cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY,"
                " name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await cur.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            for version, path in migration_files(directory):
                if version in done:
                    continue
                async with cur.begin():
                    await cur.execute(path.read_text(encoding="utf-8"))
                    await cur.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (version, path.name),
                    )
                log.info("applied migration %s", path.name)
                applied.append(version)
        finally:
            await cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
    return applied


class Database:
    """The pool and the named queries: a short-lived cursor per unit of work.

    Nothing slow may run while a cursor is open; a connection is held only for
    the statements themselves.
    """

    def __init__(self, pool: aiopg.Pool, queries: Queries) -> None:
        self.pool = pool
        self.queries = queries

    @asynccontextmanager
    async def cursor(self) -> AsyncIterator[Statements]:
        """A dict-row cursor on a pooled connection (autocommit unless `cur.begin()`)."""
        async with self.pool.acquire() as conn, conn.cursor(
            cursor_factory=psycopg2.extras.RealDictCursor
        ) as cur:
            yield cur

    async def one(self, name: str, params: Params = ()) -> dict[str, Any] | None:
        async with self.cursor() as cur:
            return await fetch_one(cur, self.queries[name], params)

    async def all(self, name: str, params: Params = ()) -> list[dict[str, Any]]:
        async with self.cursor() as cur:
            return await fetch_all(cur, self.queries[name], params)

    async def execute(self, name: str, params: Params = ()) -> None:
        async with self.cursor() as cur:
            await cur.execute(self.queries[name], params)


async def db_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    await migrate(config.database_url)
    pool = await aiopg.create_pool(config.database_url, minsize=1, maxsize=config.db_pool_size,
                                   timeout=config.db_timeout)
    app[DB_KEY] = Database(pool, Queries.load())
    try:
        yield
    finally:
        pool.close()
        await pool.wait_closed()


async def fetch_one(cur: Statements, sql: str, params: Params = ()) -> dict[str, Any] | None:
    await cur.execute(sql, params)
    row = await cur.fetchone()
    return dict(row) if row is not None else None


async def fetch_all(cur: Statements, sql: str, params: Params = ()) -> list[dict[str, Any]]:
    await cur.execute(sql, params)
    return [dict(row) for row in await cur.fetchall()]
