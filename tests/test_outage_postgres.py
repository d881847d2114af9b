"""PostgreSQL goes away under a running server: 503s, one log line each, and recovery.

The server runs against `pg_proxy`, a TCP link to the test database that a test
can cut (connections reset, new ones refused) or blackhole (new connections hang),
and restore. No process is restarted between the outage and the recovery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from server.core.keys import DB_KEY
from server.core.loops import run_every, stop

from .conftest import fake_mp4, login, make_ready, register, upload
from .outages import PostgresProxy, pg_proxy  # noqa: F401

# Short, so a blackholed link costs each request about a second, not five.
DB_TIMEOUT = 1.0
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
WS_UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}
# Loggers of the background loops; each loop may say "failing" once and "recovered"
# once in an outage, whatever the number of rounds.
LOOP_LOGGERS = ("server.core.changes", "server.core.loops", "server.viewing.presence")


@dataclass
class Site:
    client: TestClient
    creds: dict[str, str]
    token: str
    video: int  # fetched, watched and streamed before the outage
    uncached: int  # never streamed before the outage
    storage: Path


async def start(make_config: Callable[..., Any], proxy: PostgresProxy,
                **overrides: Any) -> Site:
    config = make_config(database_url=proxy.url, db_timeout=DB_TIMEOUT, **overrides)
    client = TestClient(TestServer(create_app(config)))
    await client.start_server()
    user = await register(client)
    creds = {"email": user["email"], "password": "correct horse battery"}
    token = (await login(client, user["email"]))["access_token"]
    ids = []
    for title in ("Watched", "Never streamed"):
        resp = await upload(client, token, fake_mp4(4000), title=title)
        assert resp.status == 201, await resp.text()
        ids.append((await resp.json())["id"])
        await make_ready(client.server.app, ids[-1])
    resp = await client.get(f"/videos/{ids[0]}/stream")
    assert resp.status == 200
    return Site(client, creds, token, ids[0], ids[1], config.storage_dir)


Request = Callable[[Site], Awaitable[ClientResponse]]


def endpoints() -> list[tuple[str, str, Request]]:
    """(name, kind of error page, request) for every endpoint that needs PostgreSQL."""
    return [
        ("GET /videos", "json", lambda s: s.client.get("/videos")),
        ("GET /videos/{id}", "json", lambda s: s.client.get(f"/videos/{s.video}")),
        ("GET /", "html", lambda s: s.client.get("/")),
        ("GET /watch/{id}", "html", lambda s: s.client.get(f"/watch/{s.video}")),
        ("POST /auth/login", "json", lambda s: s.client.post("/auth/login", json=s.creds)),
        ("POST /videos/upload", "json", lambda s: upload(s.client, s.token, fake_mp4(4000))),
        ("GET /videos/{id}/stream", "json",
         lambda s: s.client.get(f"/videos/{s.uncached}/stream")),
        ("GET /videos/{id}/active-viewers", "json",
         lambda s: s.client.get(f"/videos/{s.video}/active-viewers", headers=WS_UPGRADE)),
        ("GET /healthz", "json", lambda s: s.client.get("/healthz")),
    ]


def stored_files(site: Site) -> set[str]:
    return {p.name for p in site.storage.iterdir()}


def from_loop(record: logging.LogRecord) -> bool:
    return record.name.startswith(LOOP_LOGGERS)


def repeated_loop_lines(records: list[logging.LogRecord]) -> list[str]:
    """Lines a background loop logged more than once (same message, any arguments)."""
    seen = Counter((r.name, str(r.msg)) for r in records if from_loop(r))
    return [f"{name}: {msg} (x{n})" for (name, msg), n in seen.items() if n > 1]


def problems(records: list[logging.LogRecord]) -> list[str]:
    """Log records that must never come from an outage: errors and tracebacks."""
    return [f"{r.levelname} {r.name}: {r.getMessage()}" for r in records
            if r.levelno >= logging.ERROR or r.exc_info or "Traceback" in r.getMessage()]


async def check_unavailable(site: Site, name: str, kind: str, request: Request,
                            caplog: pytest.LogCaptureFixture) -> None:
    before = len(caplog.records)
    started = time.monotonic()
    resp = await request(site)
    text = await resp.text()
    elapsed = time.monotonic() - started
    assert resp.status == 503, f"{name}: {resp.status} {text[:300]}"
    assert int(resp.headers["Retry-After"]) > 0, name
    if kind == "html":
        assert resp.content_type == "text/html", name
        assert "briefly unavailable" in text and "Try again" in text, name
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"], name
        assert resp.headers["Cache-Control"] == "no-store", name
    else:
        assert resp.content_type == "application/json", name
        body = await resp.json()
        assert set(body) == {"error"} and body["error"]["code"] == "unavailable", name
        assert body["error"]["message"], name
    # Bounded by DB_TIMEOUT (taking a connection, then the statement), never hung.
    assert elapsed < 2 * DB_TIMEOUT + 1, f"{name} took {elapsed:.1f} s"
    records = caplog.records[before:]
    assert not problems(records), (name, problems(records))
    own = [r for r in records if not from_loop(r)]
    assert len(own) == 1 and own[0].levelno == logging.WARNING, \
        (name, [r.getMessage() for r in own])


async def check_recovered(site: Site, name: str, request: Request) -> None:
    if name.endswith("active-viewers"):
        ws = await site.client.ws_connect(f"/videos/{site.video}/active-viewers")
        state = await ws.receive_json(timeout=5)
        assert state["video_id"] == site.video, name
        await ws.close()
        return
    resp = await request(site)
    body = await resp.read()
    assert resp.status in (200, 201), f"{name} after restore: {resp.status} {body[:300]!r}"


@pytest.mark.parametrize("outage", ["cut", "blackhole"])
async def test_every_endpoint_answers_503_then_recovers_by_itself(
        make_config, pg_proxy, caplog, outage):
    site = await start(make_config, pg_proxy)
    try:
        files = stored_files(site)
        caplog.clear()
        getattr(pg_proxy, outage)()
        for name, kind, request in endpoints():
            await check_unavailable(site, name, kind, request, caplog)
        health = await (await site.client.get("/healthz")).json()
        assert health["error"]["message"] == "PostgreSQL unavailable"
        # The failed upload left neither its temporary file nor a stored one.
        assert stored_files(site) == files
        # Each background loop noticed the outage once at most, without a traceback.
        assert not problems(caplog.records)
        assert not repeated_loop_lines(caplog.records)

        pg_proxy.restore()
        caplog.clear()
        # The very first request after the link returns already succeeds: no
        # dead pooled connection is handed out, and nothing was restarted.
        for name, _kind, request in endpoints():
            await check_recovered(site, name, request)
        assert not problems(caplog.records)
    finally:
        await site.client.close()


async def test_a_read_on_a_connection_that_died_idle_is_retried(make_config, pg_proxy):
    """A pooled connection reset before the event loop noticed is not a failed request."""
    site = await start(make_config, pg_proxy)
    try:
        db = site.client.app[DB_KEY]
        # Several idle connections in the pool.
        await asyncio.gather(*(db.one("video_by_id", {"id": site.video}) for _ in range(4)))
        assert db.pool.freesize >= 2
        # Reset every link and reopen at once: nothing has run on the event loop
        # since, so the pool still holds the dead connections as if alive.
        pg_proxy.cut()
        pg_proxy.restore()
        row = await db.one("video_by_id", {"id": site.video})
        assert row is not None and row["id"] == site.video
        # A write is not repeated (its lost answer may hide a commit): it fails.
        await asyncio.gather(*(db.one("video_by_id", {"id": site.video}) for _ in range(4)))
        pg_proxy.cut()
        pg_proxy.restore()
        with pytest.raises(psycopg2.OperationalError):
            await db.execute("prune_view_batches", {"days": 30})
        assert (await db.all("list_videos", {"before": None, "limit": 5, "viewer": None}))
    finally:
        await site.client.close()


async def test_a_periodic_task_logs_an_outage_once_and_its_recovery(make_config, pg_proxy,
                                                                     caplog):
    site = await start(make_config, pg_proxy)
    db = site.client.app[DB_KEY]
    task = run_every(0.05, lambda: db.one("video_by_id", {"id": site.video}), "probe")
    try:
        await asyncio.sleep(0.2)
        caplog.clear()
        pg_proxy.cut()
        await asyncio.sleep(1.0)  # some twenty failed rounds
        pg_proxy.restore()
        await asyncio.sleep(0.5)
    finally:
        await stop(task)
        await site.client.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "server.core.loops"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("probe failing") and lines[1] == "probe recovered", lines
    assert not problems(caplog.records)


async def report(site: Site, video_id: int, position: float) -> None:
    resp = await site.client.post(
        f"/videos/{video_id}/views",
        json={"position": position, "playing": True, "session": "outage"},
        headers={"User-Agent": BROWSER})
    assert resp.status == 204, await resp.text()


def stored_views(database_url: str, video_id: int) -> int:
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT views FROM videos WHERE id = %s", (video_id,))
            return cur.fetchone()[0]
    finally:
        conn.close()


async def test_background_loops_log_the_outage_once_and_recover(
        make_config, pg_proxy, database_url, caplog):
    site = await start(make_config, pg_proxy, view_flush_interval=0.1, view_min_watch=0.2)
    try:
        ws = await site.client.ws_connect(f"/videos/{site.video}/active-viewers")
        assert (await ws.receive_json(timeout=5))["views"] == 0
        caplog.clear()
        pg_proxy.cut()
        # A view is counted while PostgreSQL is away (Redis holds it): the flush
        # loop fails every 0.1 s, presence fails to re-read the total.
        await report(site, site.video, 0.0)
        await asyncio.sleep(0.3)
        await report(site, site.video, 0.3)
        await asyncio.sleep(3)
        assert stored_views(database_url, site.video) == 0
        assert not problems(caplog.records)
        assert not repeated_loop_lines(caplog.records)
        by_logger: dict[str, list[str]] = {}
        for r in caplog.records:
            by_logger.setdefault(r.name, []).append(r.getMessage())
        # The loops that depend on PostgreSQL did notice.
        assert any("view flush" in m for m in by_logger.get("server.core.loops", [])), \
            by_logger
        assert by_logger.get("server.core.changes"), by_logger

        caplog.clear()
        pg_proxy.restore()
        # The view reaches PostgreSQL and the open socket hears of it.
        deadline = time.monotonic() + 10
        views = 0
        while views != 1 and time.monotonic() < deadline:
            msg = await ws.receive_json(timeout=max(0.1, deadline - time.monotonic()))
            views = msg["views"]
        assert views == 1
        while stored_views(database_url, site.video) != 1:
            assert time.monotonic() < deadline, "the view never reached PostgreSQL"
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.5)  # the change feed reconnects with a back-off
        assert not problems(caplog.records)
        assert not repeated_loop_lines(caplog.records)
        recovered = [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()]
        assert any("change feed" in m for m in recovered), recovered
        assert "view flush recovered" in recovered, recovered
        await ws.close()
    finally:
        await site.client.close()
