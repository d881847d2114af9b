"""PostgreSQL access: the aiopg pool, named SQL from sql/queries, and migrations."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiopg
import psycopg2
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
# A migration may rewrite a table, and a second starter waits for the first's lock.
MIGRATION_TIMEOUT = 600.0
# A connection that raised one of these may be dead; named reads retry once.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)
COMMENT_RE = re.compile(r"^\s*--[^\n]*\n", re.MULTILINE)


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


async def migrate(dsn: str, directory: Path = SQL_DIR, *,
                  connect_timeout: float = 5.0) -> list[int]:
    """Apply pending migrations, each in its own transaction.

    A session advisory lock serialises concurrent starters: the second waits,
    then finds nothing left to apply. Reaching the server is bounded by
    `connect_timeout`, so a start against a silent network fails instead of
    hanging; the statements themselves may take up to MIGRATION_TIMEOUT.
    """
    applied: list[int] = []
    async with asyncio.timeout(connect_timeout):
        conn = await aiopg.connect(dsn, timeout=connect_timeout)
    async with conn, conn.cursor(timeout=MIGRATION_TIMEOUT) as cur:
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
    the statements themselves. Taking a connection and each statement are
    bounded by the pool's timeout (DB_TIMEOUT), so an unreachable server costs
    a request at most that long before it is answered 503.

    Connections whose socket ends (a restarted server, a reset link) are closed
    by aiopg as soon as the event loop sees it and never handed out again. One
    taken before that happened, or found dead only when used, fails its
    statement: `one` and `all` then run their read once more on a fresh
    connection, so the first read after an outage does not fail for nothing.
    Writes are never repeated, since a lost answer may hide a commit.
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

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Statements]:
        """A cursor inside one transaction, committed when the block ends, rolled back if it raises.

        Plain BEGIN/COMMIT rather than aiopg's Transaction, which treats a COMMIT
        lost with its connection as a transaction never closed. A failed COMMIT
        raises from here.
        """
        async with self.cursor() as cur:
            await cur.execute("BEGIN")
            try:
                yield cur
            except BaseException:
                await _rollback(cur)
                raise
            await cur.execute("COMMIT")

    async def one(self, name: str, params: Params = ()) -> dict[str, Any] | None:
        """The first row of a named read, or None."""
        rows = await self._read(name, params, limit_one=True)
        return rows[0] if rows else None

    async def all(self, name: str, params: Params = ()) -> list[dict[str, Any]]:
        """Every row of a named read."""
        return await self._read(name, params, limit_one=False)

    async def execute(self, name: str, params: Params = ()) -> None:
        async with self.cursor() as cur:
            await cur.execute(self.queries[name], params)

    async def _read(self, name: str, params: Params, *,
                    limit_one: bool) -> list[dict[str, Any]]:
        sql = self.queries[name]
        retry = is_read(sql)
        while True:
            cur: Statements | None = None
            try:
                async with self.cursor() as cur:
                    if limit_one:
                        row = await fetch_one(cur, sql, params)
                        return [] if row is None else [row]
                    return await fetch_all(cur, sql, params)
            except CONNECTION_ERRORS:
                # Only a connection that died under the statement is worth a
                # second try; a refused connect would only be refused again.
                if not retry or cur is None or not cur.connection.closed:
                    raise
                retry = False
                log.info("database connection was dead; reading %s again", name)


def is_read(sql: str) -> bool:
    """Whether a statement only reads, so running it twice is harmless."""
    words = COMMENT_RE.sub("", sql).split(None, 1)
    return bool(words) and words[0].upper() == "SELECT" and "FOR UPDATE" not in sql.upper()


async def _rollback(cur: Statements) -> None:
    # The server drops the transaction of a connection that died.
    if cur.connection.closed:
        return
    try:
        await cur.execute("ROLLBACK")
    except (psycopg2.Error, OSError, TimeoutError):
        cur.connection.close()  # the pool discards a closed connection


def refused(exc: BaseException) -> bool:
    """Whether a failed statement certainly had no effect: the server answered with an error.

    A lost connection, a timeout or a cancellation leave no such answer.
    """
    return isinstance(exc, psycopg2.Error) and exc.pgcode is not None


async def db_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    await migrate(config.database_url, connect_timeout=config.db_timeout)
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
