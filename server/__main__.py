"""`python -m server [serve|migrate|worker]`: the command line. `--help` lists the environment."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import re
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg2
from aiohttp import web
from procrastinate.exceptions import ConnectorException
from redis.exceptions import RedisError

from server.app import create_app
from server.core.config import ENVIRONMENT, Config, ConfigError
from server.core.db import migrate
from server.core.errors import first_line, quiet_client_errors
from server.core.http import AppRunner
from server.core.logs import configure as configure_logging
from server.ingest.jobs import SHUTDOWN_GRACE, work
from server.moderation.admin import AdminError, parse_role, set_role
from server.viewing.counter import VIEWS_KEY

log = logging.getLogger("server")

USAGE = ("usage: python -m server [serve | migrate | worker [--concurrency N] | "
         "admin grant EMAIL ROLE | admin revoke EMAIL | --help]")
COMMANDS = f"""\
commands:
  serve     apply pending migrations, then serve HTTP until Ctrl-C or SIGTERM (the default)
  migrate   apply pending migrations and exit
  worker    apply pending migrations, then process uploaded videos until Ctrl-C or SIGTERM;
            --concurrency N runs N jobs at once (WORKER_CONCURRENCY). Run as many workers,
            on as many machines, as you like: they share the queue in PostgreSQL
  admin     apply pending migrations, then `admin grant EMAIL ROLE` gives an account the
            role user, moderator or admin, and `admin revoke EMAIL` makes it a plain
            user again; both are written to the moderation log

Stopping (Ctrl-C, SIGTERM) finishes requests in flight, closes viewer sockets,
writes counted views to PostgreSQL and exits 0. A worker gives its running jobs
up to {SHUTDOWN_GRACE:g} s to finish; one still running then is left for another worker
to retry, and the worker exits 0.
`make run` runs a server and one worker under `python -m server.dev`, which
starts an embedded PostgreSQL and Redis when DATABASE_URL and REDIS_URL are unset.
"""
# Exit status when the environment keeps the server from starting.
STARTUP_FAILED = 1
USAGE_ERROR = 2


class Stop:
    """SIGINT and SIGTERM: abandon a start-up in progress, or end serving gracefully.

    Only the first signal counts; more while stopping (a terminal's Ctrl-C also
    reaches every process of its group) must not cut the final flush short.
    """

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self._task = asyncio.current_task()
        self._serving = False
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._signalled, signum)

    def _signalled(self, signum: int) -> None:
        if self.requested.is_set():
            log.info("%s: already stopping", signal.Signals(signum).name)
            return
        self.requested.set()
        if not self._serving and self._task is not None:
            self._task.cancel()

    async def wait(self) -> None:
        """Serve until a signal arrives."""
        self._serving = True
        await self.requested.wait()


def access_logger(config: Config) -> logging.Logger | None:
    return logging.getLogger("aiohttp.access") if config.access_log else None


async def serve(config: Config, sock: socket.socket, stop: Stop) -> int | None:
    """Serve on the bound `sock` until stopped; the views the final flush wrote, or
    None when it failed (they wait in Redis for the next flush)."""
    app = create_app(config)
    runner = AppRunner(app, header_timeout=config.header_timeout,
                       access_log=access_logger(config))
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
        # Everything built at start-up lives as long as the process: leave it out of
        # the cyclic collector's full passes, which otherwise rescan it, and every
        # module the application imported, as the requests' garbage comes and goes.
        gc.freeze()
        loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
        log.info("serving on %s (%s event loop)", url_of(sock), loop)
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
    return app[VIEWS_KEY].flushed_at_stop


async def serve_until_stopped(config: Config, sock: socket.socket) -> int:
    stop = Stop()
    try:
        flushed = await serve(config, sock, stop)
    except asyncio.CancelledError:
        if not stop.requested.is_set():
            raise
        log.info("stopped during start-up")
        return 0
    if flushed is None:
        log.warning("stopped; the final view flush failed, counted views wait in Redis")
    else:
        log.info("stopped; flushed %d view%s", flushed, "" if flushed == 1 else "s")
    return 0


async def work_until_stopped(config: Config, concurrency: int) -> int:
    """Process videos until a signal arrives, then stop gracefully."""
    stop = Stop()
    worker = asyncio.create_task(work(config, concurrency=concurrency), name="worker")
    # A worker that fails to start ends the wait as well; its error is raised below.
    worker.add_done_callback(lambda _: stop.requested.set())
    await stop.wait()
    if not worker.done():
        log.info("stopping; running jobs have %g s to finish", SHUTDOWN_GRACE)
        worker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker
    log.info("worker stopped")
    return 0


def bind(config: Config) -> socket.socket:
    """The server's socket, bound but not yet listening.

    Bound before the application starts (pools, change feed, Redis), so a port
    in use is reported at once; it listens only once the application can answer.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        config.host or None, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if config.workers > 1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_server(config: Config) -> int:
    """One serving process: bind, start, serve until stopped."""
    try:
        sock = bind(config)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE \
            else exc.strerror or str(exc)
        return fail(f"cannot listen on {config.host}:{config.port}: {reason}")
    with sock:
        return run_loop(config, serve_until_stopped(config, sock))


def run_loop(config: Config, main: Coroutine[Any, Any, int]) -> int:
    """Run `main` to its end on the event loop EVENT_LOOP names, as asyncio.run does.

    Each process WORKERS forks calls this itself, so every one runs on that loop.
    """
    factory = None
    if config.event_loop == "uvloop":
        import uvloop  # optional: loaded only by a process that runs on it

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def serve_workers(config: Config) -> int:
    """Fork WORKERS processes sharing the port through SO_REUSEPORT."""
    children: list[int] = []
    for _ in range(config.workers):
        pid = os.fork()
        if pid == 0:
            code = STARTUP_FAILED
            try:
                code = guarded(config, lambda: run_server(config))
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        exit_code = os.waitstatus_to_exitcode(code)
        status = status or (128 - exit_code if exit_code < 0 else exit_code)
    return status


# --- start-up failures ---------------------------------------------------------

def fail(line: str) -> int:
    print(f"tubelet: {line}", file=sys.stderr)
    return STARTUP_FAILED


def mask_url(url: str) -> str:
    """A connection URL fit for a log: any password replaced by ***."""
    if "://" not in url:
        return re.sub(r"(password\s*=\s*)(\S+)", r"\1***", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(a malformed URL)"
    netloc = parts.netloc
    userinfo, at, hostinfo = netloc.rpartition("@")
    if at and userinfo.partition(":")[2]:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostinfo}"
    query = parts.query
    if "password" in query:
        query = urlencode([(k, "***" if k == "password" else v)
                           for k, v in parse_qsl(query, keep_blank_values=True)])
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def postgres_reason(exc: BaseException) -> str:
    """What libpq said, without its preamble: 'Connection refused', 'database "x" does
    not exist', 'password authentication failed for user "y"'."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    text = re.sub(r'^connection to server (at|on) .*? failed:\s*', "", text)
    return re.sub(r"^(FATAL|ERROR):\s+", "", text)


def explain(exc: BaseException, config: Config) -> str | None:
    """One line for a start-up failure that is the environment's, not a bug."""
    if isinstance(exc, psycopg2.Error | psycopg.Error | ConnectorException):
        # libpq may quote the URL it could not parse, password and all.
        reason = postgres_reason(exc).replace(config.database_url, "the URL")
        return f"cannot use PostgreSQL at {mask_url(config.database_url)}: {reason}"
    if isinstance(exc, RedisError):
        return f"cannot use Redis at {mask_url(config.redis_url)}: {first_line(exc)}"
    if isinstance(exc, TimeoutError):
        return (f"start-up timed out: PostgreSQL ({mask_url(config.database_url)}) "
                f"or Redis ({mask_url(config.redis_url)}) did not answer")
    if isinstance(exc, OSError):
        return f"start-up failed: {exc}"
    if isinstance(exc, ValueError):
        # Malformed DATABASE_URL / REDIS_URL, as their client libraries parse them.
        return f"start-up failed: {exc}"
    return None


def guarded(config: Config, step: Callable[[], int]) -> int:
    """Run `step`, which returns an exit status; a failure of the environment becomes
    one line on stderr and a non-zero status, not a traceback."""
    try:
        return step()
    except Exception as exc:
        line = explain(exc, config)
        if line is None:
            raise
        return fail(line)


# --- the command line ----------------------------------------------------------

def help_text() -> str:
    base = Config(jwt_secret="-" * 32)
    rows = []
    for variable in ENVIRONMENT:
        default = variable.default
        if default is None:
            default = show(getattr(base, variable.field))
        rows.append((variable.name, f"{variable.meaning} [{default}]"))
    width = max(len(name) for name, _ in rows)
    table = "\n".join(f"  {name.ljust(width)}  {text}" for name, text in rows)
    return f"{USAGE}\n\n{COMMANDS}\nenvironment [default]:\n{table}\n"


def show(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "empty"
    return str(value)


def worker_concurrency(args: list[str]) -> int | None:
    """N from `--concurrency N` or `--concurrency=N`; 0 for no options; None if malformed."""
    if not args:
        return 0
    if len(args) == 1 and args[0].startswith("--concurrency="):
        args = args[0].split("=", 1)
    if len(args) != 2 or args[0] != "--concurrency" or not args[1].isdigit():
        return None
    value = int(args[1])
    return value if 1 <= value <= 64 else None


def admin_args(args: list[str]) -> tuple[str, str] | None:
    """(email, role) from `grant EMAIL ROLE` or `revoke EMAIL`; None if malformed."""
    if len(args) == 3 and args[0] == "grant":
        return args[1], args[2]
    if len(args) == 2 and args[0] == "revoke":
        return args[1], "user"
    return None


def run_admin(config: Config, email: str, role: str) -> int:
    """Set a role; one line on stdout (0) or on stderr (1)."""
    try:
        line = asyncio.run(set_role(config.database_url, email, parse_role(role),
                                    connect_timeout=config.db_timeout))
    except AdminError as exc:
        return fail(str(exc))
    print(line)
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] in {"-h", "--help", "help"}:
        print(help_text(), end="")
        return 0
    command = argv[0] if argv else "serve"
    concurrency = worker_concurrency(argv[1:]) if command == "worker" else None
    admin = admin_args(argv[1:]) if command == "admin" else None
    malformed = (concurrency is None if command == "worker" else
                 admin is None if command == "admin" else len(argv) > 1)
    if command not in {"serve", "migrate", "worker", "admin"} or malformed:
        print(USAGE, file=sys.stderr)
        return USAGE_ERROR
    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"tubelet: configuration error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    configure_logging(config.log_level, config.log_format)
    quiet_client_errors()

    def migrations() -> int:
        try:
            applied = asyncio.run(migrate(config.database_url,
                                          connect_timeout=config.db_timeout))
        except TimeoutError:
            return fail(f"cannot use PostgreSQL at {mask_url(config.database_url)}: "
                        f"no answer within {config.db_timeout:g} s (DB_TIMEOUT)")
        if command == "migrate":
            print(f"applied {len(applied)} migration(s)")
        return 0

    try:
        code = guarded(config, migrations)
    except KeyboardInterrupt:
        return 130
    if code or command == "migrate":
        return code
    if admin is not None:
        return guarded(config, lambda: run_admin(config, *admin))
    if command == "worker":
        jobs = concurrency or config.worker_concurrency
        return guarded(config, lambda: run_loop(config, work_until_stopped(config, jobs)))
    if not os.environ.get("JWT_SECRET"):
        log.warning("JWT_SECRET is not set: using a random secret; tokens end with this process")
    if config.workers == 1:
        return guarded(config, lambda: run_server(config))
    return serve_workers(config)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
