"""The aiohttp peer: `python -m bench.fileresponse_peer FILE PORT` serves FILE at /file.

It is what a user writes without Tubelet: one handler returning web.FileResponse,
access log off, one process.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web


def make_app(path: Path) -> web.Application:
    async def serve_file(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get("/file", serve_file)
    return app


def main(argv: list[str]) -> int:
    path, port = Path(argv[0]), int(argv[1])
    web.run_app(make_app(path), host="127.0.0.1", port=port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
