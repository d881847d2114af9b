"""Metrics: counters kept as plain integers where things happen, read out at scrape time.

Nothing here runs per request. The places that count (the stream, the viewer socket,
the view counter, the processing worker) bump integer attributes of objects they
already hold; a `Metrics` object gathers them into Prometheus families only when
`/metrics` is read, through the sources each feature registers. Sources are async,
so one may read PostgreSQL or Redis at that moment (the job queue, pending views).

`/metrics` is not public: `exposition` answers 404 unless the request reaches it
where the operator said metrics may be read (METRICS_TOKEN, METRICS_PORT).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import ApiError, NotFound, error_response, first_line

log = logging.getLogger(__name__)

Source = Callable[[], Awaitable[Iterable[Metric]]]

# Seconds; for requests, a fast range request sits in the first buckets.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
# Seconds; processing a video takes seconds to hours.
JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
               7200.0, 14400.0)
# A source that hangs (PostgreSQL, Redis) must not hold the scrape.
SOURCE_TIMEOUT = 2.0


class Histogram:
    """Observations counted per bucket in a list of ints; cumulative only when read."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= value.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out = []
        running = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


def add_histogram(family: HistogramMetricFamily, labels: list[str],
                  histogram: Histogram) -> None:
    family.add_metric(labels, histogram.buckets(), histogram.total)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class Metrics:
    """The sources of one process's metrics, and where they may be read.

    `token`: a bearer token a scrape must present. `on_main_port`: whether the
    application's own port answers /metrics (False when METRICS_PORT is set, or when
    neither is set and metrics are off).
    """

    def __init__(self, token: str | None, on_main_port: bool) -> None:
        self.token = token
        self.on_main_port = on_main_port
        self._sources: list[tuple[str, Source]] = []

    def add(self, name: str, source: Source) -> None:
        self._sources.append((name, source))

    async def render(self) -> bytes:
        """Every source's families in the Prometheus text format; a failing source
        is left out (and logged), the others are still shown."""
        results = await asyncio.gather(*(self._read(name, source)
                                         for name, source in self._sources))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed([family for found in results for family in found]))
        return generate_latest(registry)

    async def _read(self, name: str, source: Source) -> list[Metric]:
        try:
            async with asyncio.timeout(SOURCE_TIMEOUT):
                return list(await source())
        except Exception as exc:
            log.warning("metrics: %s unavailable: %s", name, first_line(exc))
            return []

    def authorized(self, authorization: str | None) -> bool:
        """Whether the Authorization header carries the token (always, without one)."""
        if self.token is None:
            return True
        scheme, _, given = (authorization or "").partition(" ")
        # Compared in constant time, as bytes: the token's length is no secret.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.token.encode())


METRICS_KEY: web.AppKey[Metrics] = web.AppKey("metrics")


async def _answer(request: web.Request, metrics: Metrics) -> web.Response:
    if not metrics.authorized(request.headers.get("Authorization")):
        raise ApiError(401, "unauthorized", "Metrics need the bearer token METRICS_TOKEN",
                       {"WWW-Authenticate": 'Bearer realm="metrics"'})
    return web.Response(body=await metrics.render(), headers={"Content-Type":
                                                               CONTENT_TYPE_LATEST})


async def exposition(request: web.Request) -> web.Response:
    """GET /metrics on the application's own port."""
    metrics = request.app[METRICS_KEY]
    if not metrics.on_main_port:
        raise NotFound()
    return await _answer(request, metrics)


def metrics_app(metrics: Metrics) -> web.Application:
    """A small application that serves only /metrics, for a port of its own."""
    app = web.Application()

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await _answer(request, metrics)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.headers)

    app.router.add_get("/metrics", handler)
    return app


@contextlib.asynccontextmanager
async def serve_port(metrics: Metrics, host: str, port: int,
                     reuse_port: bool = False) -> AsyncIterator[web.AppRunner]:
    """Serve `metrics` on host:port for the duration of the `async with`.

    `reuse_port` lets the WORKERS processes of one server bind the same port.
    """
    runner = web.AppRunner(metrics_app(metrics), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host or None, port, reuse_port=reuse_port).start()
        yield runner
    finally:
        await runner.cleanup()
