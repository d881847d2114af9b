"""Migrations: numbered SQL files, each once, safe when several processes start together."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator

import psycopg2
import pytest

from server.core.db import Queries, migrate, migration_files, split_named

from .conftest import temporary_database


@pytest.fixture
def fresh_database() -> Iterator[str]:
    with temporary_database("tubelet_mig") as url:
        yield url


def applied_versions(url: str) -> list[int]:
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT version FROM schema_migrations ORDER BY version")
        rows = [r[0] for r in cur.fetchall()]
    conn.close()
    return rows


async def test_concurrent_starters_apply_each_migration_once(fresh_database):
    results = await asyncio.gather(*(migrate(fresh_database) for _ in range(4)))
    expected = [v for v, _ in migration_files()]
    # Exactly one starter applied everything; the others found nothing to do.
    assert sorted(len(r) for r in results) == [0, 0, 0, len(expected)]
    assert applied_versions(fresh_database) == expected
    assert await migrate(fresh_database) == []


async def test_migrate_command(fresh_database):
    env = {**os.environ, "DATABASE_URL": fresh_database,
           "JWT_SECRET": "x" * 40}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "migrate", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert applied_versions(fresh_database) == [v for v, _ in migration_files()]


def test_named_queries_load_and_are_parameterised():
    queries = Queries.load()
    assert "insert_user" in queries and "stream" not in queries
    for name in queries:
        assert "{" not in queries[name], name  # no str.format placeholders


def test_split_named():
    text = "-- name: a\nSELECT 1;\n\n-- name: b_2\n-- a comment\nSELECT %(x)s;\n"
    assert split_named(text) == [("a", "SELECT 1"), ("b_2", "-- a comment\nSELECT %(x)s")]


async def test_bad_config_exits_cleanly():
    env = {**os.environ, "PORT": "not-a-port", "JWT_SECRET": "x" * 40}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"PORT" in err and b"Traceback" not in err


async def test_health(client):
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}
