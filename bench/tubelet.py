"""Starting the project's server (and its processing worker) for the bench, and preparing
videos through its real API."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg2

from server.core.db import Queries

from . import procs
from .workspace import FTYP, Workspace


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str
    storage: Path
    log: Path
    database_url: str

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path


def start(ws: Workspace, label: str, *, workers: int = 1, cpus: set[int] | None = None,
          database_url: str | None = None, storage_url: str = "",
          extra_env: dict[str, str] | None = None, log_label: str | None = None) -> Server:
    """`python -m server` as a user runs it, configured for a quiet, isolated run.

    Its output goes to logs/tubelet-{log_label or label}.log.
    """
    port = procs.free_port()
    env = environment(ws, label, database_url=database_url, storage_url=storage_url,
                      extra_env={"PORT": str(port), "WORKERS": str(workers), **(extra_env or {})})
    log = ws.logs / f"tubelet-{log_label or label}.log"
    proc = procs.spawn([sys.executable, "-m", "server"], log, env=env, cpus=cpus)
    base = f"http://127.0.0.1:{port}"
    try:
        procs.wait_http(base + "/videos", proc, log)
    except BaseException:
        procs.stop(proc)
        raise
    return Server(proc, base, Path(env["STORAGE_DIR"]), log, env["DATABASE_URL"])


def start_worker(ws: Workspace, label: str, *, cpus: set[int] | None = None,
                 database_url: str | None = None, storage_url: str = "",
                 extra_env: dict[str, str] | None = None) -> Worker:
    """`python -m server worker` beside the server started with the same label and settings.

    It logs at INFO: its "video N: remux" lines tell which plan each job ran.
    """
    env = environment(ws, label, database_url=database_url, storage_url=storage_url,
                      extra_env={"LOG_LEVEL": "INFO", **(extra_env or {})})
    log = ws.logs / f"worker-{label}.log"
    return Worker(procs.spawn([sys.executable, "-m", "server", "worker"], log, env=env,
                              cpus=cpus), log)


def environment(ws: Workspace, label: str, *, database_url: str | None = None,
                storage_url: str = "",
                extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server or worker: one label, one storage directory.

    Media is stored in that directory unless `storage_url` names a bucket: the
    STORAGE_URL that `server.dev` (so `make bench`) exports is not inherited, so
    the rows measure the same file storage whatever the caller's environment.
    """
    env = dict(os.environ)
    env.pop("AIOHTTP_NO_EXTENSIONS", None)
    env.update({
        "HOST": "127.0.0.1",
        "DATABASE_URL": database_url or ws.database_url,
        "REDIS_URL": ws.redis_url,
        "REDIS_PREFIX": ws.redis_prefix,
        "STORAGE_DIR": str(ws.storage(label)),
        "STORAGE_URL": storage_url,
        # The node's cache and the redirects belong to S3 storage: empty is the default.
        "CACHE_DIR": "",
        "CACHE_MAX_BYTES": "",
        "STREAM_REDIRECT": "",
        "JWT_SECRET": secrets.token_urlsafe(48),
        "ACCESS_LOG": "0",
        "LOG_LEVEL": "WARNING",
        # Only register/login hash passwords; the stream path never does.
        "BCRYPT_ROUNDS": "4",
        # Every bench client comes from 127.0.0.1: the abuse limits would count them as one.
        "AUTH_RATE_LIMIT": "1000000",
        "PRESENCE_MAX_PER_ADDRESS": "1000000",
        **(extra_env or {}),
    })
    return env


async def login(session: aiohttp.ClientSession, base: str) -> str:
    email = f"bench-{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(16)
    async with session.post(f"{base}/auth/register",
                            json={"email": email, "password": password}) as resp:
        await _expect(resp, 201)
    async with session.post(f"{base}/auth/login",
                            json={"email": email, "password": password}) as resp:
        await _expect(resp, 200)
        return (await resp.json())["access_token"]


def upload_as_new_user(base: str, path: Path, title: str) -> tuple[str, int]:
    """Register a user, upload path as a video; the user's token and the video's id."""

    async def prepare() -> tuple[str, int]:
        async with aiohttp.ClientSession() as session:
            token = await login(session, base)
            return token, await upload_file(session, base, token, path, title)

    return asyncio.run(prepare())


async def upload_file(session: aiohttp.ClientSession, base: str, token: str, path: Path,
                      title: str, content_type: str = "video/mp4") -> int:
    """Upload a file from disk; aiohttp streams it in chunks."""
    with open(path, "rb") as body:  # noqa: ASYNC230 - the bench client, not the server
        form = aiohttp.FormData()
        form.add_field("title", title)
        form.add_field("file", body, filename=path.name, content_type=content_type)
        return await _post_upload(session, base, token, form)


async def upload_generated(session: aiohttp.ClientSession, base: str, token: str, size: int,
                           title: str) -> int:
    """Upload `size` bytes produced on the fly, sent chunked with no Content-Length."""
    with aiohttp.MultipartWriter("form-data") as form:
        part = form.append(title)
        part.set_content_disposition("form-data", name="title")
        part = form.append_payload(aiohttp.AsyncIterablePayload(_generated(size)))
        part.set_content_disposition("form-data", name="file", filename="big.mp4")
    return await _post_upload(session, base, token, form)


async def _generated(size: int) -> AsyncIterator[bytes]:
    block = os.urandom(1024 * 1024)
    yield FTYP + block[len(FTYP):]
    sent = len(block)
    while sent < size:
        piece = block[: size - sent]
        sent += len(piece)
        yield piece


async def _post_upload(session: aiohttp.ClientSession, base: str, token: str,
                       form: object) -> int:
    async with session.post(f"{base}/videos/upload", data=form,
                            headers={"Authorization": f"Bearer {token}"}) as resp:
        await _expect(resp, 201)
        return int((await resp.json())["id"])


async def _expect(resp: aiohttp.ClientResponse, status: int) -> None:
    if resp.status != status:
        raise RuntimeError(f"{resp.method} {resp.url} answered {resp.status}, expected "
                           f"{status}: {(await resp.text())[:500]}")


async def stream_discard(url: str) -> int:
    """GET url whole, counting and dropping the bytes; the count."""
    total = 0
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
        if resp.status != 200:
            raise RuntimeError(f"GET {url} answered {resp.status}")
        async for chunk in resp.content.iter_chunked(2**20):
            total += len(chunk)
    return total


def delete_video(base: str, token: str, video_id: int) -> None:
    request = urllib.request.Request(f"{base}/videos/{video_id}", method="DELETE",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60):
        pass


def storage_key(server: Server, video_id: int) -> str:
    """The name the video's file is stored under (in STORAGE_DIR, or in the bucket)."""
    conn = psycopg2.connect(server.database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT storage_key FROM videos WHERE id = %s", (video_id,))
            row = cur.fetchone()
    finally:
        conn.close()
    if row is None:
        raise RuntimeError(f"video {video_id} has no row")
    return str(row[0])


def stored_file(storage: Path) -> Path:
    """The one file the upload left in STORAGE_DIR (the peers serve this same file)."""
    files = [p for p in storage.iterdir() if p.is_file() and not p.name.startswith(".")]
    if len(files) != 1:
        raise RuntimeError(f"expected one stored file in {storage}, found {files}")
    return files[0]


@dataclass
class Processed:
    """A video watched from its upload to `ready`: when each step's progress was first seen.

    `seen` maps a progress value (or "ready") to seconds after the upload was accepted.
    """

    video_id: int
    video: dict[str, Any]
    seen: dict[str, float] = field(default_factory=dict)
    polls: int = 0


async def wait_processed(session: aiohttp.ClientSession, base: str, token: str, video_id: int,
                         accepted: float, marks: dict[str, float], *, interval: float = 0.025,
                         give_up_after: float = 900.0) -> Processed:
    """Poll GET /videos/{id} until it is ready; fail if it failed or took too long.

    `accepted` is the monotonic time the upload's 201 arrived; `marks` names
    progress values (as the worker writes them when a step ends) to note the
    first poll that saw each.
    """
    result = Processed(video_id, {})
    deadline = accepted + give_up_after
    headers = {"Authorization": f"Bearer {token}"}
    while True:
        async with session.get(f"{base}/videos/{video_id}", headers=headers) as resp:
            await _expect(resp, 200)
            video = await resp.json()
        now = time.monotonic() - accepted
        result.polls += 1
        progress = video.get("progress")
        for name, value in marks.items():
            # Progress is a PostgreSQL real: 0.9 comes back as 0.8999999761...
            if name not in result.seen and progress is not None and progress >= value - 1e-6:
                result.seen[name] = now
        if video["status"] == "ready":
            for name in marks:
                result.seen.setdefault(name, now)
            result.seen["ready"] = now
            result.video = video
            return result
        if video["status"] == "failed":
            raise RuntimeError(f"video {video_id} failed processing: "
                               f"{video.get('failure_reason')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"video {video_id} not ready after {give_up_after:.0f}s: {video}")
        await asyncio.sleep(interval)


def mark_ready(server: Server, video_id: int) -> None:
    """Serve an upload as it came, unprocessed.

    Rows a-e measure delivery of a file of generated bytes, which no decoder
    reads, so processing would fail it. This is what the tests' make_ready does:
    the row turns ready, its queued job is dropped, and the change is recorded
    so every process of the server learns of it.
    """
    record = Queries.load()["record_video_change"]
    conn = psycopg2.connect(server.database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE videos SET status = 'ready', progress = NULL,"
                        " processed_at = now() WHERE id = %s", (video_id,))
            cur.execute("DELETE FROM procrastinate_jobs WHERE queueing_lock = %s",
                        (f"video-{video_id}",))
            cur.execute(record, {"video_id": video_id, "kind": "processed"})
    finally:
        conn.close()
