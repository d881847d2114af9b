"""The viewing feature's metric families, read at scrape time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from .counter import ViewCounter
    from .presence.hub import PresenceHub


async def view_families(counter: ViewCounter) -> list[Metric]:
    counted = CounterMetricFamily("tubelet_views_counted",
                                  "Views this process counted (in Redis, pending a flush)")
    counted.add_metric([], counter.counted)
    flushed = CounterMetricFamily("tubelet_views_flushed",
                                  "Views this process's flushes wrote to PostgreSQL")
    flushed.add_metric([], counter.flushed)
    pending = GaugeMetricFamily("tubelet_views_pending",
                                "Views counted by every process and not yet flushed")
    pending.add_metric([], await counter.pending())
    return [counted, flushed, pending]


async def socket_families(hub: PresenceHub) -> list[Metric]:
    sockets = GaugeMetricFamily("tubelet_viewer_sockets", "Viewer WebSockets open in this process")
    sockets.add_metric([], hub.sockets)
    return [sockets]
