"""`python -m server worker` as an operator runs it: real processes, real signals.

A worker beside a server turns uploads into ready videos; Ctrl-C and SIGTERM
stop it with status 0; a start-up failure is one line; `make run`'s dev runner
starts a worker beside the server and stops both.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import FormData

from .test_cli import (  # noqa: F401
    ROOT,
    Process,
    assert_one_clear_line,
    cli_database,
    free_port,
    run,
    server_env,
    started,
)

WORKER_TIMEOUT = 60.0


async def start_worker(env: dict[str, str], *args: str) -> Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "worker", *args, cwd=ROOT, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    process = Process(proc)
    await process.read_until(r"Starting worker")
    return process


async def sign_up(http: aiohttp.ClientSession, base: str) -> str:
    creds = {"email": f"w-{secrets.token_hex(4)}@example.com",
             "password": "correct horse battery"}
    async with http.post(f"{base}/auth/register", json=creds) as resp:
        assert resp.status == 201, await resp.text()
    async with http.post(f"{base}/auth/login", json=creds) as resp:
        return (await resp.json())["access_token"]


async def upload_clip(http: aiohttp.ClientSession, base: str, token: str, clip: Path) -> int:
    form = FormData()
    form.add_field("title", "From a phone")
    form.add_field("file", io.BytesIO(clip.read_bytes()), filename=clip.name)
    async with http.post(f"{base}/videos/upload", data=form,
                         headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 201, await resp.text()
        video = await resp.json()
    assert video["status"] == "processing"
    return video["id"]


async def wait_ready(http: aiohttp.ClientSession, base: str, video_id: int) -> dict[str, Any]:
    async with asyncio.timeout(WORKER_TIMEOUT):
        while True:
            async with http.get(f"{base}/videos/{video_id}") as resp:
                video = await resp.json()
            if video["status"] != "processing":
                return video
            await asyncio.sleep(0.2)


def output(process: Process) -> str:
    return "".join(process.lines)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_worker_beside_the_server_processes_uploads_and_stops_cleanly(
        server_env, http, real_mp4, signum):
    async with started("-m", "server", env=server_env) as server:
        worker = await start_worker(server_env, "--concurrency", "2")
        try:
            token = await sign_up(http, server.base)
            video_id = await upload_clip(http, server.base, token, real_mp4)
            video = await wait_ready(http, server.base, video_id)
            assert video["status"] == "ready", video
            async with http.get(f"{server.base}{video['stream_url']}") as resp:
                assert resp.status == 200
            worker.proc.send_signal(signum)
            code = await worker.finish()
        finally:
            if worker.proc.returncode is None:
                worker.proc.kill()
                await worker.proc.wait()
    assert code == 0, output(worker)
    assert "Traceback" not in output(worker)
    assert output(worker).rstrip().endswith("worker stopped"), output(worker)


def test_a_worker_that_cannot_reach_postgres_says_so_in_one_line(server_env):
    port = free_port()
    url = f"postgresql://tubelet:hunter2-secret@127.0.0.1:{port}/tubelet"
    done = run("-m", "server", "worker", env={**server_env, "DATABASE_URL": url})
    line = assert_one_clear_line(done, "PostgreSQL", f"127.0.0.1:{port}", "refused")
    assert "hunter2-secret" not in line


@pytest.mark.parametrize("args", [["--concurrency"], ["--concurrency", "0"],
                                  ["--concurrency", "two"], ["--threads", "2"], ["now"]])
def test_bad_worker_options_are_a_usage_line(args):
    done = run("-m", "server", "worker", *args)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: python -m server") and "worker" in done.stderr
    assert "Traceback" not in done.stderr


def test_help_tells_about_the_worker():
    done = run("-m", "server", "--help")
    assert done.returncode == 0
    assert "worker [--concurrency N]" in done.stdout
    for name in ("WORKER_CONCURRENCY", "WORKER_STALLED_AFTER", "PROCESSING_RETRY_WAIT"):
        assert name in done.stdout


async def test_the_dev_runner_runs_a_worker_beside_the_server(server_env, http, real_mp4,
                                                              tmp_path):
    """`make run`: one command, a server and a worker; SIGTERM stops both with 0."""
    env = {**server_env, "DATA_DIR": str(tmp_path / "data")}
    runner = ("-m", "server.dev", "--also", f"{sys.executable} -m server worker", "--",
              sys.executable, "-m", "server")
    async with started(*runner, env=env) as dev:
        token = await sign_up(http, dev.base)
        video_id = await upload_clip(http, dev.base, token, real_mp4)
        video = await wait_ready(http, dev.base, video_id)
        assert video["status"] == "ready", video
        dev.proc.send_signal(signal.SIGTERM)
        code = await dev.finish()
    text = "".join(dev.lines)
    assert code == 0, text
    assert "Traceback" not in text
    assert "worker stopped" in text and "stopped; flushed" in text, text
