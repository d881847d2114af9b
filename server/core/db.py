"""PostgreSQL access: the aiopg pool, named SQL from sql/queries, and migrations."""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.resources
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
# A migration line naming a library whose own tables it brings (see PackageSchema).
PACKAGE_SCHEMA_RE = re.compile(r"^--\s*package-schema:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
PACKAGE_MIGRATION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)_(\d+)_[a-z0-9_]+\.sql$")


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


Version = tuple[int, ...]


def parse_version(text: str) -> Version:
    """'3.10.0' -> (3, 10, 0); a pre-release suffix counts as its release."""
    return tuple(int(re.sub(r"\D.*", "", part) or 0) for part in text.split(".")[:3])


def package_steps(names: list[str], recorded: Version, installed: Version) -> list[str]:
    """The migration files that take a library's schema from `recorded` to `installed`.

    Each file is named after the version that introduced it, so the steps are
    those past the recorded version and up to the installed one, in name order.
    """
    steps = []
    for name in names:
        match = PACKAGE_MIGRATION_RE.match(name)
        if match and recorded < tuple(int(g) for g in match.groups()[:3]) <= installed:
            steps.append(name)
    return sorted(steps)


class PackageSchema:
    """The tables a library keeps in our database, in the shape it ships them.

    Such a library (procrastinate does) ships `sql/schema.sql`, its whole schema
    at the installed version, and `sql/migrations/MM.mm.pp_NN_name.sql`, the
    steps to each version. A migration that says `-- package-schema: NAME`
    applies the whole schema once, in that migration's transaction; the version
    applied is kept in schema_packages. Whenever the installed library is newer,
    the next migrate applies the steps in between (its "pre" and "post" steps
    alike, so processes of the old version should be stopped first): an upgrade
    is a new pin and a restart.
    """

    def __init__(self, package: str) -> None:
        self.package = package
        self._sql = importlib.resources.files(package) / "sql"

    @property
    def version(self) -> str:
        return importlib.metadata.version(self.package)

    def schema(self) -> str:
        return (self._sql / "schema.sql").read_text(encoding="utf-8")

    def steps(self, recorded: str) -> list[tuple[str, str]]:
        """(name, SQL) of each migration file between `recorded` and the installed version."""
        folder = self._sql / "migrations"
        names = [entry.name for entry in folder.iterdir()]
        return [(name, (folder / name).read_text(encoding="utf-8"))
                for name in package_steps(names, parse_version(recorded),
                                          parse_version(self.version))]


async def _apply_package_schemas(cur: Statements, sql: str) -> None:
    """Inside a migration's transaction: the whole schema of each library it names."""
    for package in PACKAGE_SCHEMA_RE.findall(sql):
        schema = PackageSchema(package)
        await cur.execute(schema.schema())
        await cur.execute("INSERT INTO schema_packages (package, version) VALUES (%s, %s)",
                          (package, schema.version))
        log.info("applied the schema of %s %s", package, schema.version)


async def _upgrade_package_schemas(cur: Statements) -> None:
    await cur.execute("SELECT package, version FROM schema_packages")
    for package, recorded in await cur.fetchall():
        schema = PackageSchema(package)
        installed = schema.version
        if parse_version(installed) == parse_version(recorded):
            continue
        if parse_version(installed) < parse_version(recorded):
            log.warning("%s %s is installed but the database has the schema of %s",
                        package, installed, recorded)
            continue
        async with cur.begin():
            for name, step in schema.steps(recorded):
                await cur.execute(step)
                log.info("applied %s migration %s", package, name)
            await cur.execute("UPDATE schema_packages SET version = %s, applied_at = now() "
                              "WHERE package = %s", (installed, package))


async def migrate(dsn: str, directory: Path = SQL_DIR, *,
                  connect_timeout: float = 5.0) -> list[int]:
    """Apply pending migrations, each in its own transaction, and bring the schemas
    of libraries (PackageSchema) up to their installed versions.

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
            await cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_packages ("
                " package text PRIMARY KEY,"
                " version text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await _upgrade_package_schemas(cur)
            await cur.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            for version, path in migration_files(directory):
                if version in done:
                    continue
                async with cur.begin():
                    sql = path.read_text(encoding="utf-8")
                    await cur.execute(sql)
                    await _apply_package_schemas(cur, sql)
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
