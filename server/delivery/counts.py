"""What the stream counts, in plain integers, and their metric families.

The direct path answers a range request in about 60 us of CPU; what it may add is
an integer increment on an object it already holds. These counters are read only
when /metrics is scraped (`families`).
"""

from __future__ import annotations

from prometheus_client.metrics_core import CounterMetricFamily, Metric


class StreamCounts:
    """Stream requests by the kind of answer, media bytes sent by path, cache look-ups."""

    __slots__ = ("full", "single", "multi", "unsatisfiable", "not_modified",
                 "direct_bytes", "general_bytes", "proxied_bytes", "hits", "misses")

    def __init__(self) -> None:
        # Answers: the whole file, one range, several (multipart), 416, 304.
        self.full = 0
        self.single = 0
        self.multi = 0
        self.unsatisfiable = 0
        self.not_modified = 0
        # File bytes handed to the kernel: the direct path, the general one, and
        # ranges forwarded from a bucket (none yet: media is on local disk).
        self.direct_bytes = 0
        self.general_bytes = 0
        self.proxied_bytes = 0
        # Metadata look-ups answered by the per-process cache, and those that
        # needed PostgreSQL.
        self.hits = 0
        self.misses = 0

    def answered(self, kind: str) -> None:
        """Count an answer of the general or the forwarding path by its kind."""
        if kind == "full":
            self.full += 1
        elif kind == "single":
            self.single += 1
        else:
            self.multi += 1

    def families(self) -> list[Metric]:
        kinds = CounterMetricFamily("tubelet_stream_requests",
                                    "Stream requests by the answer's kind", labels=["kind"])
        for kind in ("full", "single", "multi", "unsatisfiable", "not_modified"):
            kinds.add_metric([kind], getattr(self, kind))
        sent = CounterMetricFamily("tubelet_stream_bytes_sent",
                                   "Media bytes sent, by the path that sent them",
                                   labels=["path"], unit="bytes")
        for path in ("direct", "general", "proxied"):
            sent.add_metric([path], getattr(self, f"{path}_bytes"))
        cache = CounterMetricFamily("tubelet_stream_cache_lookups",
                                    "Stream file metadata look-ups, by whether this "
                                    "process had it cached", labels=["result"])
        cache.add_metric(["hit"], self.hits)
        cache.add_metric(["miss"], self.misses)
        return [kinds, sent, cache]
