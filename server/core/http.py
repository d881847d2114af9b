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

A `Lane` (the stream's fast lane, `server.delivery.lane`) may answer a request from the
raw bytes of its head before aiohttp parses it: while a connection sends only requests the
lane takes, aiohttp's parser never sees them. The first request it does not take goes to
aiohttp, and so does everything after it on that connection.

Requests by route and status, and their latency, are counted in `log_access`, which
aiohttp calls once per request anyway, when the application has a `RequestStats`
(metrics are on): no middleware, a dict look-up by route, one by status, a bisect.
With LOG_FORMAT=json the access log is written by `logs.JsonAccessLogger`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, Protocol

from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from multidict import CIMultiDict, CIMultiDictProxy

from .errors import error_response
from .keys import CONFIG_KEY
from .logs import JsonAccessLogger, TextAccessLogger
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

    def count(self, resource: object, status: int, seconds: float) -> None:
        """record() for a response made without a request object (a lane's)."""
        stats = self.routes.get(resource)
        if stats is None:
            label = getattr(resource, "canonical", UNMATCHED)
            stats = self.routes[resource] = RouteStats(label)
        stats.statuses[status] += 1
        stats.latency.observe(seconds)

    def __iter__(self) -> Iterator[RouteStats]:
        return iter(list(self.routes.values()))


REQUEST_STATS_KEY: web.AppKey[RequestStats] = web.AppKey("request_stats")


class LaneConnection(Protocol):
    """What a lane gets of the connection whose request it answers."""

    @property
    def transport(self) -> asyncio.Transport | None: ...

    @property
    def lane_socket(self) -> Any: ...

    @property
    def lane_raw(self) -> socket.socket | None:
        """The connection's socket object itself, where the event loop exposes it."""

    def lane_done(self, status: int, keep_alive: bool, sent: int) -> None:
        """The response is complete (or failed, with keep_alive False)."""

    def lane_hold(self) -> None:
        """The response goes on after answer() returns: no next request until lane_done."""

    def lane_task(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run the rest of a held response; cancelled if the connection is lost first."""


class Lane(Protocol):
    """Answers some requests from the raw bytes of a head that arrived in one piece."""

    # The router's resource the lane's answers are counted under.
    route: object
    # The application, for access loggers that read its settings.
    app: web.Application | None

    def answer(self, conn: LaneConnection, head: bytes) -> bool:
        """True when the request was taken (answered now, or held and answered later)."""


class LaneRequest:
    """What an access logger reads of a request, for a request a lane answered."""

    __slots__ = ("remote", "method", "path", "path_qs", "version", "headers", "app")

    def __init__(self, head: bytes, remote: str | None, app: web.Application | None) -> None:
        # As aiohttp's parser decodes: UTF-8, undecodable bytes kept as surrogates.
        lines = head.decode("utf-8", "surrogateescape").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        self.method = method
        self.path_qs = target
        self.path = target.partition("?")[0]
        self.version = HttpVersion11 if version == "HTTP/1.1" else HttpVersion10
        fields: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                fields.add(name, value.strip(" \t"))
        self.headers = CIMultiDictProxy(fields)
        self.remote = remote
        self.app = app


class LaneResponse:
    """What an access logger reads of a response a lane sent."""

    __slots__ = ("status", "body_length", "headers")

    def __init__(self, status: int, body_length: int) -> None:
        self.status = status
        self.body_length = body_length
        self.headers: CIMultiDictProxy[str] = EMPTY_HEADERS


EMPTY_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class TakenOver(web.StreamResponse):
    """What a handler returns once it wrote its answer to the socket itself, or handed the
    connection off (`take_over`): aiohttp has nothing left to prepare or write."""

    @property
    def prepared(self) -> bool:
        return True

    @property
    def keep_alive(self) -> bool:
        return False

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def take_over(request: web.BaseRequest, protocol: asyncio.Protocol) -> tuple[
        asyncio.Transport, bytes]:
    """Hand the request's connection to `protocol`: aiohttp forgets it (aiohttp 3.14).

    For a WebSocket whose upgrade the handler answers itself: from here on the
    transport's bytes go to `protocol`, and aiohttp's connection handler lets go of the
    transport without closing it, leaves the server's connections once the handler
    returns (a `TakenOver` response), and frees its parser. Returns the transport and
    the bytes that arrived after the request head, which are now `protocol`'s.
    """
    handler = request.protocol
    transport = request.transport
    if not isinstance(handler, RequestHandler) or transport is None or transport.is_closing():
        raise ConnectionResetError("the connection is gone")
    tail = handler._message_tail
    handler._message_tail = b""
    manager = handler._manager
    if manager is not None:
        manager.connection_lost(handler, None)
    handler._manager = None
    handler._force_close = True
    if handler._keepalive_handle is not None:
        handler._keepalive_handle.cancel()
        handler._keepalive_handle = None
    if isinstance(handler, HardenedRequestHandler):
        handler._stop_head_timer()
    handler._parser = None
    handler.transport = None
    transport.set_protocol(protocol)
    if not transport.is_reading():  # aiohttp paused it for a full buffer of its own
        transport.resume_reading()
    return transport, tail


# Set by the feature that owns a lane; read when the server is built.
LANE_KEY: web.AppKey[Lane] = web.AppKey("lane")


class HardenedRequestHandler(RequestHandler):
    """aiohttp's connection protocol with a request head timeout and a version check.

    The timer is armed when the connection opens, and when bytes arrive between
    requests without completing a head; a parsed head disarms it. A request that
    arrives in one piece, as nearly all do, costs no timer at all after the first.
    """

    __slots__ = ("_header_timeout", "_head_timer", "_stats", "_access_enabled", "_lane",
                 "lane_socket", "lane_raw", "_lane_started", "_lane_held", "_lane_head",
                 "_lane_timed")

    def __init__(self, manager: web.Server, *, header_timeout: float,
                 stats: RequestStats | None = None, lane: Lane | None = None,
                 **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._stats = stats
        self._access_enabled = self._logging_enabled
        self._lane = lane
        # The lane's answers are timed for the request metrics and the access log.
        self._lane_timed = stats is not None or self._access_enabled
        self._lane_head = b""
        self.lane_socket: Any = None
        self.lane_raw: socket.socket | None = None
        self._lane_started = 0.0
        self._lane_held: asyncio.Task[None] | None = None
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
        if self._lane is not None:
            # A plain TCP socket: the lane writes to it directly (not through TLS).
            if transport.get_extra_info("sslcontext") is None:
                self.lane_socket = transport.get_extra_info("socket")
            if self.lane_socket is None:
                self._lane = None
            # asyncio's TransportSocket wraps the socket object it hides; uvloop's has none.
            raw = getattr(self.lane_socket, "_sock", None)
            self.lane_raw = raw if isinstance(raw, socket.socket) else None
        self._head_timer = self._loop.call_later(self._header_timeout, self._head_timed_out)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._lane_held is not None:
            self._lane_held.cancel()
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        lane = self._lane
        if lane is not None:
            if data[-4:] == b"\r\n\r\n" and not self._force_close and not self._close:
                if self._lane_timed:
                    self._lane_started = self._loop.time()
                    if self._access_enabled:
                        self._lane_head = data
                try:
                    if lane.answer(self, data):
                        return
                except Exception:
                    # Nothing was written (a lane writes last): aiohttp answers instead.
                    log.exception("the fast lane failed; aiohttp answers the request")
            self._lane = None  # aiohttp has this connection from now on
        before = self._request_count
        super().data_received(data)
        added = self._request_count - before
        if added:
            self._stop_head_timer()
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

    def lane_done(self, status: int, keep_alive: bool, sent: int) -> None:
        held, self._lane_held = self._lane_held, None
        if held is not None:
            self._request_in_progress = False
            if self._handler_waiter is not None and not self._handler_waiter.done():
                self._handler_waiter.set_result(None)  # a graceful shutdown waits for it
        self._stop_head_timer()
        manager = self._manager
        if manager is None:
            return  # the connection is gone
        manager.requests_count += 1
        if self._lane_timed and self._lane is not None:
            elapsed = self._loop.time() - self._lane_started
            if self._stats is not None:
                self._stats.count(self._lane.route, status, elapsed)
            if self._access_enabled and self.access_logger is not None:
                remote = self.peername
                request = LaneRequest(self._lane_head, None if remote is None else str(
                    remote[0] if isinstance(remote, (list, tuple)) else remote), self._lane.app)
                self.access_logger.log(request, LaneResponse(status, sent),  # type: ignore[arg-type]
                                       elapsed)
        transport = self.transport
        if not keep_alive or transport is None or transport.is_closing():
            self.force_close()
            return
        if self._keepalive_timeout > 0:
            close_time = self._loop.time() + self._keepalive_timeout
            self._next_keepalive_close_time = close_time
            if self._keepalive_handle is None:
                self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)
        if held is not None:
            transport.resume_reading()

    def lane_hold(self) -> None:
        # A response in progress: no timer may take the connection for an idle one (both
        # check only that aiohttp waits for a request, which it does throughout), and a
        # graceful shutdown waits for it as for aiohttp's own (lane_done ends both).
        self._stop_head_timer()
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        self._request_in_progress = True
        if self.transport is not None:
            self.transport.pause_reading()

    def lane_task(self, coro: Coroutine[Any, Any, None]) -> None:
        self._lane_held = self._loop.create_task(coro)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

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
                 lane: Lane | None = None, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._header_timeout = header_timeout
        self._stats = stats
        self._lane = lane

    def __call__(self) -> RequestHandler:
        return HardenedRequestHandler(self, loop=self._loop, header_timeout=self._header_timeout,
                                      stats=self._stats, lane=self._lane, **self._kwargs)


class AppRunner(web.AppRunner):
    """web.AppRunner over HardenedServer, with web.run_app's keep-alive timeout.

    The application's RequestStats, when it has one, count every response; with
    LOG_FORMAT=json the access log's lines are JSON records.
    """

    __slots__ = ("_header_timeout",)

    def __init__(self, app: web.Application, *, header_timeout: float,
                 keepalive_timeout: float = KEEPALIVE_TIMEOUT, **kwargs: Any) -> None:
        config = app.get(CONFIG_KEY)
        json_log = config is not None and config.log_format == "json"
        kwargs.setdefault("access_log_class", JsonAccessLogger if json_log else TextAccessLogger)
        super().__init__(app, keepalive_timeout=keepalive_timeout, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        # The application's own server (startup run, handler and request factory set up),
        # rebuilt as a HardenedServer with the same arguments.
        plain = await super()._make_server()
        return HardenedServer(plain.request_handler, request_factory=plain.request_factory,
                              handler_cancellation=plain.handler_cancellation,
                              loop=plain._loop, header_timeout=self._header_timeout,
                              stats=self._app.get(REQUEST_STATS_KEY),
                              lane=self._app.get(LANE_KEY), **plain._kwargs)


async def nosniff(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: no browser may second-guess a Content-Type we send."""
    response.headers["X-Content-Type-Options"] = NOSNIFF


def setup(app: web.Application) -> None:
    app.on_response_prepare.append(nosniff)
