"""GET /metrics: the process's metrics in the Prometheus text format.

Metrics are off until an operator says where they may be read:

- METRICS_PORT set: /metrics is served on that port only (a small application of its
  own, on HOST), and answers 404 on PORT. With METRICS_TOKEN too, the port asks for it.
- METRICS_TOKEN set, no METRICS_PORT: /metrics answers on PORT, and only to
  `Authorization: Bearer <METRICS_TOKEN>` (401 otherwise).
- Neither: /metrics answers 404, and responses are not counted per route.

Besides what the features register (the stream, the viewer sockets, the view
counter), this module exports the requests per route and status, their latency,
and the processing queue's depth, read from PostgreSQL at scrape time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from aiohttp import web
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from server.core.config import Config
from server.core.db import Database
from server.core.http import REQUEST_STATS_KEY, RequestStats
from server.core.keys import CONFIG_KEY, DB_KEY
from server.core.metrics import METRICS_KEY, Metrics, add_histogram, exposition, serve_port

# procrastinate's job states, so a state with no jobs reads 0 rather than vanishing.
JOB_STATES = ("todo", "doing", "failed", "cancelled", "aborted")


def request_source(stats: RequestStats) -> Iterable[Metric]:
    requests = CounterMetricFamily("tubelet_http_requests", "HTTP responses by route and status",
                                   labels=["route", "status"])
    latency = HistogramMetricFamily(
        "tubelet_http_request_duration_seconds",
        "Time from a request's parsed head to its response's last byte, by route",
        labels=["route"])
    for route in stats:
        for status, count in sorted(route.statuses.items()):
            requests.add_metric([route.label, str(status)], count)
        add_histogram(latency, [route.label], route.latency)
    return [requests, latency]


async def queue_source(db: Database) -> Iterable[Metric]:
    depth = GaugeMetricFamily("tubelet_jobs", "Background jobs by queue and status",
                              labels=["queue", "status"])
    rows = await db.all("job_queue_depth")
    seen = {(row["queue"], row["status"]): row["jobs"] for row in rows}
    for queue in sorted({queue for queue, _ in seen} | {"processing"}):
        for state in sorted(set(JOB_STATES) | {s for q, s in seen if q == queue}):
            depth.add_metric([queue, state], seen.get((queue, state), 0))
    return [depth]


def metrics_for(config: Config) -> Metrics:
    on_main_port = config.metrics_port is None and config.metrics_token is not None
    return Metrics(config.metrics_token, on_main_port=on_main_port)


def enabled(config: Config) -> bool:
    return config.metrics_port is not None or config.metrics_token is not None


async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    metrics = app[METRICS_KEY]
    db = app[DB_KEY]

    async def queue() -> Iterable[Metric]:
        return await queue_source(db)

    metrics.add("job queue", queue)
    if config.metrics_port is None:
        yield
        return
    async with serve_port(metrics, config.host, config.metrics_port,
                          reuse_port=config.workers > 1):
        yield


def setup(app: web.Application) -> None:
    config = app[CONFIG_KEY]
    metrics = app[METRICS_KEY] = metrics_for(config)
    if enabled(config):
        stats = app[REQUEST_STATS_KEY] = RequestStats()

        async def requests() -> Iterable[Metric]:
            return request_source(stats)

        metrics.add("requests", requests)
    app.cleanup_ctx.append(metrics_ctx)
    app.router.add_get("/metrics", exposition, name="metrics")
