"""Fixtures: a throwaway database on the real PostgreSQL, real Redis, real HTTP."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import psycopg2
import pytest
import redis
from aiohttp import ClientSession, TCPConnector
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from server.core.config import Config
from server.core.keys import CHANGES_KEY, DB_KEY
from server.core.storage import StorageLocation, parse_storage_url

IN_CI = os.environ.get("CI", "").lower() == "true"
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# The run's bucket (`make test` starts SeaweedFS and sets STORAGE_URL). Taken out of the
# environment: servers the tests start use file storage unless a test asks for S3.
S3_URL = os.environ.pop("STORAGE_URL", "")


def require_tool(name: str) -> str:
    """The path of an external tool; in CI a missing tool fails instead of skipping."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is required in CI but is not installed")
        pytest.skip(f"{name} is not installed")
    return path


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def database_name(url: str) -> str:
    """The database a URL names; its host may be a socket directory (`?host=/path`)."""
    return urlsplit(url).path.lstrip("/")


@contextmanager
def temporary_database(prefix: str) -> Iterator[str]:
    """A new, empty database on the server at DATABASE_URL, dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = psycopg2.connect(DATABASE_URL)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(DATABASE_URL, name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def query(database_url: str, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """Run one statement on its own autocommit connection; its rows, if any."""
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


async def until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Seconds until `check` holds; fails after `within` seconds."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await check():
        if loop.time() - start > within:
            raise AssertionError(f"{what} did not happen within {within} s")
        await asyncio.sleep(0.05)
    return loop.time() - start


def s3_base() -> StorageLocation:
    """The S3 bucket of the test run: `make test` starts SeaweedFS and sets STORAGE_URL."""
    location = parse_storage_url(S3_URL) if S3_URL.startswith("s3://") else None
    if location is None or location.endpoint is None:
        message = "S3 tests need STORAGE_URL=s3://bucket?endpoint=... (make test sets it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return location


@pytest.fixture
def s3_location() -> StorageLocation:
    """A fresh key prefix in the test run's bucket, so tests never meet each other's objects."""
    base = s3_base()
    return StorageLocation("s3", bucket=base.bucket, prefix=f"test-{secrets.token_hex(6)}/",
                           endpoint=base.endpoint, region=base.region)


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest) -> StorageLocation | None:
    """Each storage: None (files in STORAGE_DIR), then a bucket; pass as `storage=`."""
    if request.param == "file":
        return None
    location: StorageLocation = request.getfixturevalue("s3_location")
    return location


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with temporary_database("tubelet_test") as url:
        yield url


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"tubelet-test-{secrets.token_hex(6)}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def clean_db(database_url: str) -> Iterator[None]:
    yield
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        # A transaction the app left open would make TRUNCATE wait for ever: fail instead.
        cur.execute("SET lock_timeout = '20s'")
        cur.execute("SELECT to_regclass('users') IS NOT NULL")
        if cur.fetchone()[0]:
            cur.execute("TRUNCATE users, refresh_tokens, videos RESTART IDENTITY CASCADE")
        cur.execute("SELECT to_regclass('view_batches') IS NOT NULL")
        if cur.fetchone()[0]:
            cur.execute("TRUNCATE view_batches")
        cur.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
        if cur.fetchone()[0]:
            cur.execute("TRUNCATE procrastinate_jobs, procrastinate_events, procrastinate_workers,"
                        " procrastinate_periodic_defers RESTART IDENTITY CASCADE")
    conn.close()


@pytest.fixture
def make_config(database_url: str, redis_prefix: str, tmp_path: Path,
                clean_db: None) -> Callable[..., Config]:
    def make(**overrides: Any) -> Config:
        values: dict[str, Any] = {
            "database_url": database_url,
            "redis_url": REDIS_URL,
            "redis_prefix": redis_prefix,
            "storage_dir": tmp_path / "storage",
            "jwt_secret": "test-secret-" + "0123456789abcdef" * 4,
            "bcrypt_rounds": 4,
            "access_log": False,
        }
        values.update(overrides)
        return Config(**values)

    return make


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config()


@pytest.fixture
async def client(aiohttp_client: Any, config: Config) -> TestClient:
    return await aiohttp_client(create_app(config))


@pytest.fixture
async def instance(aiohttp_client: Any,
                   make_config: Callable[..., Config]) -> Callable[..., Any]:
    """Starts another app instance (same database and Redis prefix) on a real socket."""
    async def start(**overrides: Any) -> TestClient:
        return await aiohttp_client(TestServer(create_app(make_config(**overrides))))

    return start


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    """A plain client session; its connection pool is unbounded for open WebSockets."""
    async with ClientSession(connector=TCPConnector(limit=0)) as session:
        yield session


# --- media -----------------------------------------------------------------

def fake_mp4(size: int, seed: int = 1) -> bytes:
    """Bytes that sniff as MP4 (an ftyp box) followed by deterministic filler."""
    head = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
    filler = bytes((i * 31 + seed) % 251 for i in range(size - len(head)))
    return head + filler


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


def make_clip(media_dir: Path, name: str, *ffmpeg_args: str) -> Path:
    """A real clip made once per session by ffmpeg from its test sources."""
    ffmpeg = require_tool("ffmpeg")
    out = media_dir / name
    if not out.exists():
        subprocess.run([ffmpeg, "-v", "error", "-y", *ffmpeg_args, str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def real_mp4(media_dir: Path) -> Path:
    """A 12-second H.264 MP4 whose moov atom sits at the end of the file."""
    return make_clip(
        media_dir, "clip.mp4", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=440", "-t", "12", "-c:v", "libx264",
        "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest")


# --- API helpers -----------------------------------------------------------

async def register(client: TestClient, email: str | None = None,
                   password: str = "correct horse battery") -> dict[str, Any]:
    email = email or f"user-{secrets.token_hex(4)}@example.com"
    resp = await client.post("/auth/register", json={"email": email, "password": password})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def login(client: TestClient, email: str,
                password: str = "correct horse battery") -> dict[str, Any]:
    resp = await client.post("/auth/login", json={"email": email, "password": password})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def new_user_token(client: TestClient) -> str:
    user = await register(client)
    return (await login(client, user["email"]))["access_token"]


async def upload(client: TestClient, token: str, data: bytes, title: str = "A video",
                 description: str = "", filename: str = "clip.mp4") -> Any:
    from aiohttp import FormData

    form = FormData()
    form.add_field("title", title)
    form.add_field("description", description)
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    return await client.post("/videos/upload", data=form,
                             headers={"Authorization": f"Bearer {token}"})


async def make_ready(app: Any, video_id: int) -> None:
    """Mark an uploaded video ready as it came, without processing it.

    For tests of what happens to ready videos, with bytes no decoder accepts:
    the stream serves the upload, as for videos from before processing. The
    change is recorded, so every instance's caches learn of it, and the job
    queued for it is dropped. tests/test_processing.py processes real clips.
    """
    db, changes = app[DB_KEY], app[CHANGES_KEY]
    async with db.transaction() as cur:
        await cur.execute("UPDATE videos SET status = 'ready', progress = NULL"
                          " WHERE id = %s AND status = 'processing'", (video_id,))
        await cur.execute("DELETE FROM procrastinate_jobs WHERE queueing_lock = %s",
                          (f"video-{video_id}",))
        seq = await changes.record(cur, video_id, "processed")
    changes.applied(video_id, seq)


async def upload_ready(client: TestClient, token: str, data: bytes, title: str = "A video",
                       description: str = "", filename: str = "clip.mp4") -> dict[str, Any]:
    """Upload (201), mark the video ready with make_ready, and return its JSON."""
    resp = await upload(client, token, data, title, description, filename)
    assert resp.status == 201, await resp.text()
    video = await resp.json()
    assert video["status"] == "processing"
    await make_ready(client.server.app, video["id"])
    resp = await client.get(f"/videos/{video['id']}")
    assert resp.status == 200, await resp.text()
    return await resp.json()


@pytest.fixture
async def api_error() -> Callable[..., Any]:
    async def check(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
        assert resp.status == status, await resp.text()
        body = await resp.json()
        assert set(body) == {"error"}
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        if code is not None:
            assert body["error"]["code"] == code
        return body

    return check


async def session_upload(session: Any, server: Any, data: bytes,
                          title: str = "A video") -> tuple[str, int]:
    """Register, log in and upload through a plain ClientSession against a real server;
    the video is then made ready as it came (make_ready)."""
    import io

    from aiohttp import FormData

    email = f"user-{secrets.token_hex(4)}@example.com"
    creds = {"email": email, "password": "correct horse battery"}
    async with session.post(server.make_url("/auth/register"), json=creds) as resp:
        assert resp.status == 201, await resp.text()
    async with session.post(server.make_url("/auth/login"), json=creds) as resp:
        token = (await resp.json())["access_token"]
    form = FormData()
    form.add_field("title", title)
    form.add_field("file", io.BytesIO(data), filename="v.mp4")
    async with session.post(server.make_url("/videos/upload"), data=form,
                            headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 201, await resp.text()
        video_id = (await resp.json())["id"]
    await make_ready(server.app, video_id)
    return token, video_id


async def read_until_cut_off(resp: Any, received: int) -> int:
    """Read a stream response at a player's pace until the server cuts it off, which must
    happen within 4 s; the bytes read, `received` included."""
    started = time.monotonic()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with asyncio.timeout(8):
            while chunk := await resp.content.read(65536):
                received += len(chunk)
                await asyncio.sleep(0.05)  # a player reading at its own pace
    assert time.monotonic() - started < 4
    return received
