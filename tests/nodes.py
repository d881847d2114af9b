"""Real nodes for tests: `python -m server` processes and a `python -m server worker`,
as an operator runs them behind a load balancer, sharing PostgreSQL, Redis and a bucket.

Each process runs in a session (process group) of its own, so stopping it also
stops what it started (ffmpeg, forked workers); a test that fails half-way
leaves nothing running. Each process logs to a file under the test's tmp_path;
a process that exits early fails the test with its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from server.core.storage import StorageLocation

from .conftest import REDIS_URL
from .outages import free_port

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "nodes-secret-" + "0123456789abcdef" * 4
METRICS_TOKEN = "nodes-metrics-token"
START_TIMEOUT = 30.0
STOP_GRACE = 5.0


def storage_url(location: StorageLocation) -> str:
    """The STORAGE_URL naming `location` (a bucket of the test run's S3)."""
    url = f"s3://{location.bucket}/{location.prefix.rstrip('/')}"
    return f"{url}?endpoint={location.endpoint}&region={location.region or 'us-east-1'}"


def shared_env(database_url: str, redis_prefix: str, location: StorageLocation,
               **extra: str) -> dict[str, str]:
    """What every process of the cluster is given alike."""
    return {
        **os.environ,
        "HOST": "127.0.0.1", "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL,
        "REDIS_PREFIX": redis_prefix, "STORAGE_URL": storage_url(location),
        "JWT_SECRET": JWT_SECRET, "METRICS_TOKEN": METRICS_TOKEN, "BCRYPT_ROUNDS": "4",
        "ACCESS_LOG": "0",
        "LOG_LEVEL": "INFO", **extra,
    }


@dataclass
class Node:
    """One process: a server (with `base`) or the worker."""

    name: str
    proc: asyncio.subprocess.Process
    log_path: Path
    base: str = ""
    env: dict[str, str] = field(default_factory=dict, repr=False)

    def url(self, path: str) -> str:
        return self.base + path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)

    async def kill(self) -> None:
        """SIGKILL, the whole process group: no goodbye, as when a machine dies."""
        self.signal_group(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL for whatever of the group is left after STOP_GRACE."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_GRACE):
                    await self.proc.wait()
        self.signal_group(signal.SIGKILL)
        await self.proc.wait()


async def metric(http: aiohttp.ClientSession, node: Node, name: str) -> float:
    """A sample of the node's /metrics, by its name with labels as exposed (0 if absent)."""
    async with http.get(node.url("/metrics"),
                        headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as resp:
        assert resp.status == 200, await resp.text()
        text = await resp.text()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def spawn(name: str, args: list[str], env: Mapping[str, str], directory: Path) -> Node:
    log_path = directory / f"{name}.log"
    with open(log_path, "wb") as log_file:  # noqa: ASYNC230 (a local file, opened once)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", *args, cwd=ROOT, env=dict(env),
            stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            start_new_session=True)
    return Node(name, proc, log_path, env=dict(env))


async def healthy(node: Node) -> None:
    """Until GET /healthz answers 200; fails with the log if the process exits first."""
    async with aiohttp.ClientSession() as http, asyncio.timeout(START_TIMEOUT):
        while True:
            if not node.running:
                raise AssertionError(f"{node.name} exited ({node.proc.returncode}):\n"
                                     + node.log())
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(node.url("/healthz")) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)


async def started_worker(node: Node) -> None:
    """Until the worker says it has started taking jobs."""
    async with asyncio.timeout(START_TIMEOUT):
        while "Starting worker" not in node.log():
            if not node.running:
                raise AssertionError(f"{node.name} exited ({node.proc.returncode}):\n"
                                     + node.log())
            await asyncio.sleep(0.1)


async def start_server(name: str, env: Mapping[str, str], directory: Path,
                       **extra: str) -> Node:
    """A server node with its own port, scratch disk (STORAGE_DIR) and cache (CACHE_DIR)."""
    port = free_port()
    node_dir = directory / name
    env = {**env, "PORT": str(port), "STORAGE_DIR": str(node_dir / "scratch"),
           "CACHE_DIR": str(node_dir / "cache"), **extra}
    node = await spawn(name, [], env, directory)
    node.base = f"http://127.0.0.1:{port}"
    return node


async def start_worker(env: Mapping[str, str], directory: Path, **extra: str) -> Node:
    env = {**env, "STORAGE_DIR": str(directory / "worker" / "scratch"), **extra}
    return await spawn("worker", ["worker"], env, directory)


@contextlib.asynccontextmanager
async def cluster(env: Mapping[str, str], directory: Path,
                  nodes: Mapping[str, Mapping[str, str]],
                  worker: bool = True) -> AsyncIterator[dict[str, Node]]:
    """Server nodes by name (each with its extra environment), plus a worker unless
    `worker=False`, all started at once and ready; all stopped at the end. A block that
    ends well then fails if a process logged a traceback."""
    directory.mkdir(parents=True, exist_ok=True)
    running: dict[str, Node] = {}
    try:
        for name, extra in nodes.items():
            running[name] = await start_server(name, env, directory, **extra)
        if worker:
            running["worker"] = await start_worker(env, directory)
        await asyncio.gather(*(healthy(node) for name, node in running.items()
                               if name != "worker"),
                             *([started_worker(running["worker"])] if worker else []))
        yield running
    finally:
        await asyncio.gather(*(node.stop() for node in running.values()))
    troubled = [node for node in running.values() if "Traceback" in node.log()]
    assert not troubled, "\n\n".join(f"{node.name}:\n{node.log()}" for node in troubled)
