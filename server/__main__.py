"""`python -m server` serves; `python -m server migrate` only applies migrations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from aiohttp import web

from server.app import create_app
from server.core.config import Config, ConfigError
from server.core.db import migrate
from server.core.errors import quiet_client_errors

log = logging.getLogger("server")


def serve(config: Config) -> None:
    web.run_app(
        create_app(config),
        host=config.host,
        port=config.port,
        reuse_port=config.workers > 1,
        access_log=logging.getLogger("aiohttp.access") if config.access_log else None,
        print=None,
    )


def serve_workers(config: Config) -> int:
    """Fork WORKERS processes sharing the port through SO_REUSEPORT."""
    children: list[int] = []
    for _ in range(config.workers):
        pid = os.fork()
        if pid == 0:
            try:
                serve(config)
            finally:
                os._exit(0)
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
        status = status or os.waitstatus_to_exitcode(code)
    return status


def main(argv: list[str]) -> int:
    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    quiet_client_errors()
    if not os.environ.get("JWT_SECRET"):
        log.warning("JWT_SECRET is not set: using a random secret; tokens end with this process")
    command = argv[0] if argv else "serve"
    if command == "migrate":
        applied = asyncio.run(migrate(config.database_url))
        print(f"applied {len(applied)} migration(s)")
        return 0
    if command != "serve":
        print("usage: python -m server [serve|migrate]", file=sys.stderr)
        return 2
    asyncio.run(migrate(config.database_url))
    log.info("serving on http://%s:%s with %d worker(s)", config.host, config.port,
             config.workers)
    if config.workers == 1:
        serve(config)
        return 0
    return serve_workers(config)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
