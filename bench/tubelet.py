"""Starting the project's server for the bench and preparing a video through its real API."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from . import procs
from .workspace import FTYP, Workspace


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str
    storage: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def start(ws: Workspace, label: str, *, workers: int = 1, cpus: set[int] | None = None,
          database_url: str | None = None, extra_env: dict[str, str] | None = None) -> Server:
    """`python -m server` as a user runs it, configured for a quiet, isolated run."""
    port = procs.free_port()
    storage = ws.storage(label)
    log = ws.logs / f"tubelet-{label}.log"
    env = dict(os.environ)
    env.pop("AIOHTTP_NO_EXTENSIONS", None)
    env.update({
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": str(workers),
        "DATABASE_URL": database_url or ws.database_url,
        "REDIS_URL": ws.redis_url,
        "REDIS_PREFIX": ws.redis_prefix,
        "STORAGE_DIR": str(storage),
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
    proc = procs.spawn([sys.executable, "-m", "server"], log, env=env, cpus=cpus)
    base = f"http://127.0.0.1:{port}"
    try:
        procs.wait_http(base + "/videos", proc, log)
    except BaseException:
        procs.stop(proc)
        raise
    return Server(proc, base, storage, log)


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


async def upload_file(session: aiohttp.ClientSession, base: str, token: str, path: Path,
                      title: str) -> int:
    """Upload a file from disk; aiohttp streams it in chunks."""
    with open(path, "rb") as body:  # noqa: ASYNC230 - the bench client, not the server
        form = aiohttp.FormData()
        form.add_field("title", title)
        form.add_field("file", body, filename=path.name, content_type="video/mp4")
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


def stored_file(storage: Path) -> Path:
    """The one file the upload left in STORAGE_DIR (the peers serve this same file)."""
    files = [p for p in storage.iterdir() if p.is_file() and not p.name.startswith(".")]
    if len(files) != 1:
        raise RuntimeError(f"expected one stored file in {storage}, found {files}")
    return files[0]
