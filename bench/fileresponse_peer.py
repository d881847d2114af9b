"""The aiohttp peer: `python -m bench.fileresponse_peer FILE PORT [--page]` serves FILE at /file.

It is what a user writes without Tubelet: one handler returning web.FileResponse,
access log off, one process. With --page it also serves, at /, a page holding
nothing but a player for /file (row f): a page of the same origin, since
Chromium lets no page from elsewhere (a data: URL) load media from loopback.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web

PAGE = ("<!doctype html><meta charset=utf-8><title>bench</title>"
        '<video controls preload="metadata" playsinline src="/file"></video>')


def make_app(path: Path, page: bool = False) -> web.Application:
    async def serve_file(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(path)

    async def serve_page(_request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/file", serve_file)
    if page:
        app.router.add_get("/", serve_page)
    return app


def main(argv: list[str]) -> int:
    path, port = Path(argv[0]), int(argv[1])
    app = make_app(path, page=argv[2:] == ["--page"])
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
