"""The command line as a newcomer meets it: help, start-up failures, stopping.

Every test runs `python -m server` (or the dev runner) as a real process.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import FormData

from server.core.config import ENVIRONMENT

from .conftest import REDIS_URL, fake_mp4, require_tool, temporary_database
from .outages import pg_proxy  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
SECRET = "cli-test-secret-" + "0123456789abcdef" * 3
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**values: str) -> dict[str, str]:
    """This environment without the server's variables, plus `values`."""
    ours = {v.name for v in ENVIRONMENT} | {"DATA_DIR"}
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(values)
    return env


def run(*args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def cli_database() -> Iterator[str]:
    with temporary_database("tubelet_cli") as url:
        yield url


@pytest.fixture
def server_env(cli_database: str, redis_prefix: str, tmp_path: Path) -> dict[str, str]:
    return clean_env(
        HOST="127.0.0.1", PORT="0", DATABASE_URL=cli_database, REDIS_URL=REDIS_URL,
        REDIS_PREFIX=redis_prefix, STORAGE_DIR=str(tmp_path / "storage"), JWT_SECRET=SECRET,
        BCRYPT_ROUNDS="4", ACCESS_LOG="0",
    )


# --- help --------------------------------------------------------------------

def test_help_lists_the_commands_and_every_variable():
    done = run("-m", "server", "--help")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(r"^\s+serve\s", out, re.MULTILINE)
    assert re.search(r"^\s+migrate\s", out, re.MULTILINE)
    for variable in ENVIRONMENT:
        line = next((x for x in out.splitlines() if x.split()[:1] == [variable.name]), None)
        assert line is not None, f"{variable.name} missing from --help"
        # A meaning and a default on the same line.
        assert len(line.split()) >= 3 and line.rstrip().endswith("]"), line
    assert "PORT" in out and "[8080]" in out


def test_unknown_command_is_a_usage_line():
    done = run("-m", "server", "frobnicate")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("usage: python -m server")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args, code", [([], 2), (["--help"], 0), (["-h"], 0)])
def test_dev_runner_without_a_command_prints_its_usage(args, code):
    done = run("-m", "server.dev", *args)
    assert done.returncode == code
    assert "usage: python -m server.dev" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_make_help_lists_the_targets():
    make = require_tool("make")
    done = subprocess.run([make, "-s", "help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines()[1:] if line.strip()}
    assert {"help", "install", "run", "test", "lint", "bench", "clean"} <= listed


# --- start-up failures ---------------------------------------------------------

def assert_one_clear_line(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_unreachable_postgres_is_one_line_with_the_password_masked(server_env):
    port = free_port()  # nothing listens there
    url = f"postgresql://tubelet:hunter2-secret@127.0.0.1:{port}/tubelet"
    done = run("-m", "server", env={**server_env, "DATABASE_URL": url})
    line = assert_one_clear_line(done, "PostgreSQL", f"127.0.0.1:{port}", "refused")
    assert "hunter2-secret" not in done.stderr
    assert "tubelet:***@" in line


def test_postgres_that_refuses_us_is_one_line(server_env, cli_database):
    url = cli_database.replace("://", "://no_such_role_here@", 1) \
        if "@" not in cli_database else re.sub(r"://[^@]*@", "://no_such_role_here@",
                                                cli_database)
    done = run("-m", "server", env={**server_env, "DATABASE_URL": url})
    assert_one_clear_line(done, "PostgreSQL", 'role "no_such_role_here" does not exist')


def test_unknown_database_is_one_line(server_env, cli_database):
    url = re.sub(r"/[^/?]+(\?|$)", r"/no_such_database_here\1", cli_database.split("://", 1)[1],
                 count=1)
    url = cli_database.split("://", 1)[0] + "://" + url
    done = run("-m", "server", env={**server_env, "DATABASE_URL": url})
    assert_one_clear_line(done, "PostgreSQL", 'database "no_such_database_here" does not exist')


async def test_silent_postgres_is_one_line_after_db_timeout(server_env, pg_proxy):
    pg_proxy.blackhole()  # connections are accepted, and nothing ever answers
    env = {**server_env, "DATABASE_URL": pg_proxy.url, "DB_TIMEOUT": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    async with asyncio.timeout(15):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    done = subprocess.CompletedProcess([], proc.returncode, out.decode(), err.decode())
    assert_one_clear_line(done, "PostgreSQL", "no answer within 1 s")


def test_unreachable_redis_is_one_line(server_env):
    port = free_port()
    done = run("-m", "server", env={**server_env, "REDIS_URL": f"redis://127.0.0.1:{port}/0",
                                    "LOG_LEVEL": "WARNING"})
    assert_one_clear_line(done, "Redis", f"127.0.0.1:{port}")


@pytest.mark.parametrize("name, value, needle", [
    ("LOG_LEVEL", "bogus", "LOG_LEVEL"),
    ("REDIS_URL", "garbage", "Redis URL"),
    ("REDIS_URL", "redis://127.0.0.1:notaport/0", "notaport"),
    ("DATABASE_URL", "postgresql://u:hunter2-secret@[::1/x", "PostgreSQL"),
])
def test_malformed_settings_are_one_line(server_env, name, value, needle):
    done = run("-m", "server", env={**server_env, name: value, "LOG_LEVEL": "WARNING"}
               if name != "LOG_LEVEL" else {**server_env, name: value})
    assert_one_clear_line(done, needle)
    assert "hunter2-secret" not in done.stderr


def test_port_in_use_is_one_line(server_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run("-m", "server", env={**server_env, "PORT": str(port),
                                        "LOG_LEVEL": "WARNING"})
    assert_one_clear_line(done, f"127.0.0.1:{port}", "address already in use")


# --- serving and stopping ------------------------------------------------------

@dataclass
class Process:
    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    base: str = ""

    async def read_until(self, pattern: str, within: float = START_TIMEOUT) -> re.Match[str]:
        assert self.proc.stderr is not None
        async with asyncio.timeout(within):
            while True:
                for line in self.lines:
                    if match := re.search(pattern, line):
                        return match
                raw = await self.proc.stderr.readline()
                if not raw:
                    raise AssertionError(f"no {pattern!r} before exit:\n" + "".join(self.lines))
                self.lines.append(raw.decode(errors="replace"))

    async def finish(self, within: float = 30) -> int:
        assert self.proc.stderr is not None
        async with asyncio.timeout(within):
            rest = await self.proc.stderr.read()
            self.lines += rest.decode(errors="replace").splitlines(keepends=True)
            return await self.proc.wait()


@contextlib.asynccontextmanager
async def started(*args: str, env: dict[str, str]) -> AsyncIterator[Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    process = Process(proc)
    try:
        match = await process.read_until(r"serving on (http://\S+)")
        process.base = match.group(1)
        yield process
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def count_a_view(http: aiohttp.ClientSession, base: str) -> str:
    """Register, upload and watch long enough for one view; the access token."""
    creds = {"email": f"viewer-{secrets.token_hex(4)}@example.com",
             "password": "correct horse battery"}
    async with http.post(f"{base}/auth/register", json=creds) as resp:
        assert resp.status == 201, await resp.text()
    async with http.post(f"{base}/auth/login", json=creds) as resp:
        token = (await resp.json())["access_token"]
    form = FormData()
    form.add_field("title", "Counted")
    form.add_field("file", io.BytesIO(fake_mp4(4000)), filename="v.mp4")
    async with http.post(f"{base}/videos/upload", data=form,
                         headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 201, await resp.text()
        video_id = (await resp.json())["id"]
    for position in (0.0, 0.5):
        async with http.post(f"{base}/videos/{video_id}/views",
                             json={"position": position, "playing": True, "session": "s"},
                             headers={"User-Agent": BROWSER}) as resp:
            assert resp.status == 204, await resp.text()
        await asyncio.sleep(0.5)
    return token


def last_line(process: Process) -> str:
    lines = [line.rstrip() for line in process.lines if line.strip()]
    return lines[-1] if lines else ""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stops_the_server_cleanly_with_its_final_flush(server_env, http,
                                                                     signum):
    # Views reach PostgreSQL only at the final flush: the count proves it ran.
    env = {**server_env, "VIEW_MIN_WATCH": "0.3", "VIEW_FLUSH_INTERVAL": "3600"}
    async with started("-m", "server", env=env) as process:
        # "serving on" came after the port was bound: it answers at once.
        async with http.get(f"{process.base}/healthz") as resp:
            assert resp.status == 200
        await count_a_view(http, process.base)
        process.proc.send_signal(signum)
        code = await process.finish()
    assert code == 0, "".join(process.lines)
    assert "Traceback" not in "".join(process.lines)
    assert last_line(process).endswith("stopped; flushed 1 view"), "".join(process.lines)


async def test_the_dev_runner_keeps_a_secret_and_passes_the_exit_status_on(server_env, http,
                                                                         tmp_path):
    """Under `make run` a restart keeps everyone signed in; SIGTERM ends it with 0."""
    env = {k: v for k, v in server_env.items() if k != "JWT_SECRET"}
    env["DATA_DIR"] = str(tmp_path / "data")
    runner = ("-m", "server.dev", "--", sys.executable, "-m", "server")
    async with started(*runner, env=env) as first:
        creds = {"email": f"dev-{secrets.token_hex(4)}@example.com",
                 "password": "correct horse battery"}
        async with http.post(f"{first.base}/auth/register", json=creds) as resp:
            assert resp.status == 201, await resp.text()
        async with http.post(f"{first.base}/auth/login", json=creds) as resp:
            token = (await resp.json())["access_token"]
        first.proc.send_signal(signal.SIGTERM)
        assert await first.finish() == 0, "".join(first.lines)
    assert "stopped; flushed 0 views" in last_line(first)
    secret_file = tmp_path / "data" / "jwt-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert len(secret_file.read_text().strip()) >= 32

    async with started(*runner, env=env) as second:
        async with http.get(f"{second.base}/auth/me",
                            headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200, await resp.text()
        second.proc.send_signal(signal.SIGINT)
        assert await second.finish() == 0, "".join(second.lines)
    assert "JWT_SECRET is not set" not in "".join(first.lines + second.lines)
