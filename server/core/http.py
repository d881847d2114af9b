"""aiohttp's HTTP/1 server with the limits a public server needs.

Two gaps in aiohttp (3.14) are closed here, in a RequestHandler subclass:

- No time limit on receiving a request head: a client that sends its head a byte at a
  time (slowloris) keeps the connection for the whole keep-alive timeout. Here a head
  must be complete `header_timeout` seconds after it started (nginx's
  client_header_timeout): after the connection opened, or after the first byte that
  follows a response on a keep-alive connection. An idle keep-alive connection keeps
  aiohttp's keepalive_timeout, and a slow body is not limited: the head was complete.
- Request lines of HTTP/0.9 ("GET /" without a version is one) and HTTP/2.0 are
  answered as HTTP/1.x, with those versions in the status line. They get 505 here.

`AppRunner` is web.AppRunner over it; the server entry point (`server.__main__`) runs
the application with it. `setup` adds X-Content-Type-Options: nosniff to every response
the application prepares.

Requests by route and status, and their latency, are counted in `log_access`, which
aiohttp calls once per request anyway, when the application has a `RequestStats`
(metrics are on): no middleware, a dict look-up by route, one by status, a bisect.
With LOG_FORMAT=json the access log is written by `logs.JsonAccessLogger`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from .errors import error_response
from .keys import CONFIG_KEY
from .logs import JsonAccessLogger
from .metrics import LATENCY_BUCKETS, Histogram

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = (HttpVersion11, HttpVersion10)
# web.run_app's; a bare web.AppRunner would keep idle connections for an hour.
KEEPALIVE_TIMEOUT = 75.0
NOSNIFF = "nosniff"


class HttpVersionNotSupported(HttpProcessingError):
    def __init__(self) -> None:
        super().__init__(code=505, message="Only HTTP/1.0 and HTTP/1.1 are supported")


UNMATCHED = "unmatched"


class RouteStats:
    """Responses of one route: a count per status, and the latency of all of them."""

    __slots__ = ("label", "statuses", "latency")

    def __init__(self, label: str) -> None:
        self.label = label
        self.statuses: defaultdict[int, int] = defaultdict(int)
        self.latency = Histogram(LATENCY_BUCKETS)


class RequestStats:
    """Responses per route, keyed by the router's resource (None: no route matched).

    A route is labelled by its path template ("/videos/{id}/stream"), so there are
    as many labels as routes, whatever paths clients ask for. Latency runs from the
    parsed request head to the response's last byte; a WebSocket's (101) would be
    the socket's lifetime, so it counts a status but no latency.
    """

    __slots__ = ("routes",)

    def __init__(self) -> None:
        self.routes: dict[object, RouteStats] = {}

    def record(self, request: web.BaseRequest, status: int, seconds: float) -> None:
        match = getattr(request, "_match_info", None)
        resource = match.route.resource if match is not None else None
        stats = self.routes.get(resource)
        if stats is None:
            label = resource.canonical if resource is not None else UNMATCHED
            stats = self.routes[resource] = RouteStats(label)
        stats.statuses[status] += 1
        if status != 101:
            stats.latency.observe(seconds)

    def __iter__(self) -> Iterator[RouteStats]:
        return iter(list(self.routes.values()))


REQUEST_STATS_KEY: web.AppKey[RequestStats] = web.AppKey("request_stats")


class HardenedRequestHandler(RequestHandler):
    """aiohttp's connection protocol with a request head timeout and a version check.

    The timer is armed when the connection opens, and when bytes arrive between
    requests without completing a head; a parsed head disarms it. A request that
    arrives in one piece, as nearly all do, costs no timer at all after the first.
    """

    __slots__ = ("_header_timeout", "_head_timer", "_stats", "_access_enabled")

    def __init__(self, manager: web.Server, *, header_timeout: float,
                 stats: RequestStats | None = None, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._stats = stats
        self._access_enabled = self._logging_enabled
        if stats is not None:
            # aiohttp reads the clock at each request's start only for its access log.
            self._logging_enabled = True

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse,
                   time: float | None) -> None:
        if time is None:
            return
        elapsed = self._loop.time() - time
        if self._stats is not None:
            self._stats.record(request, response.status, elapsed)
        if self._access_enabled and self.access_logger is not None:
            self.access_logger.log(request, response, elapsed)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_timer = self._loop.call_later(self._header_timeout, self._head_timed_out)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        added = self._request_count - before
        if added:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            messages = self._messages
            for index in range(-added, 0):
                message = messages[index][0]
                if not isinstance(message, _ErrInfo) and message.version not in SUPPORTED_VERSIONS:
                    error = HttpVersionNotSupported()
                    # aiohttp answers these with handle_error(), as a request it could not parse.
                    messages[index] = (_ErrInfo(status=505, exc=error, message=error.message),
                                       EMPTY_PAYLOAD)
        elif (data and self._head_timer is None and not self._request_in_progress
              and not self._messages):
            # The first bytes of the next head on a kept-alive connection.
            self._head_timer = self._loop.call_later(self._header_timeout,
                                                     self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        waiter = self._waiter
        # Waiting for a message, as aiohttp's own keep-alive check asks: no request is
        # being handled or lingered over, so the bytes that armed the timer were a head.
        if waiter is not None and not waiter.done():
            log.debug("no complete request head from %s within %ss; closing",
                      self.peername, self._header_timeout)
            self.force_close()

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, HttpVersionNotSupported):
            return super().handle_error(request, status, exc, message)
        self.logger.debug("HTTP version not supported from %s", request.remote)
        # Made outside the application: its middleware and on_response_prepare do not run.
        response = error_response(505, "http_version_not_supported", exc.message,
                                  {"Connection": "close", "X-Content-Type-Options": NOSNIFF})
        response.force_close()
        return response


class HardenedServer(web.Server):
    """web.Server whose connections get a HardenedRequestHandler."""

    def __init__(self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
                 *, header_timeout: float, stats: RequestStats | None = None,
                 **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._header_timeout = header_timeout
        self._stats = stats

    def __call__(self) -> RequestHandler:
        return HardenedRequestHandler(self, loop=self._loop, header_timeout=self._header_timeout,
                                      stats=self._stats, **self._kwargs)


class AppRunner(web.AppRunner):
    """web.AppRunner over HardenedServer, with web.run_app's keep-alive timeout.

    The application's RequestStats, when it has one, count every response; with
    LOG_FORMAT=json the access log's lines are JSON records.
    """

    __slots__ = ("_header_timeout",)

    def __init__(self, app: web.Application, *, header_timeout: float,
                 keepalive_timeout: float = KEEPALIVE_TIMEOUT, **kwargs: Any) -> None:
        config = app.get(CONFIG_KEY)
        if config is not None and config.log_format == "json":
            kwargs.setdefault("access_log_class", JsonAccessLogger)
        super().__init__(app, keepalive_timeout=keepalive_timeout, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        # The application's own server (startup run, handler and request factory set up),
        # rebuilt as a HardenedServer with the same arguments.
        plain = await super()._make_server()
        return HardenedServer(plain.request_handler, request_factory=plain.request_factory,
                              handler_cancellation=plain.handler_cancellation,
                              loop=plain._loop, header_timeout=self._header_timeout,
                              stats=self._app.get(REQUEST_STATS_KEY), **plain._kwargs)


async def nosniff(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: no browser may second-guess a Content-Type we send."""
    response.headers["X-Content-Type-Options"] = NOSNIFF


def setup(app: web.Application) -> None:
    app.on_response_prepare.append(nosniff)
