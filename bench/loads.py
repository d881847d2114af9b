"""wrk loads shared by the HTTP rows: what a row asks for, whom it asks, and the median run."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from . import wrk


@dataclass(frozen=True)
class HttpRow:
    key: str
    what: str
    unit: str
    length: int  # bytes per range; 0 for whole-file GETs
    connections: int
    target_ratio: float  # against FileResponse (rows a-c) or the bucket (rows k, w)
    # Further targets, (peer, least ratio) (row a: Go net/http and nginx).
    also: tuple[tuple[str, float], ...] = ()


@dataclass
class Target:
    name: str  # "tubelet", "tubelet-log", "fileresponse", "nginx", "go", "bucket"
    url: str
    pid: int | None  # None: a server whose process this machine cannot see


def load(args: argparse.Namespace, target: Target, spec: HttpRow, size: int,
         cpus: set[int] | None, threads: int = 1) -> wrk.WrkResult:
    common = dict(size=size, length=spec.length, connections=spec.connections,
                  server_pid=target.pid, cpus=cpus, threads=threads)
    if args.warmup > 0:
        wrk.run(target.url, duration=args.warmup, **common)  # type: ignore[arg-type]
    result = wrk.run(target.url, duration=args.duration, **common)  # type: ignore[arg-type]
    wrk.settle()
    return result


def value_of(spec: HttpRow, result: wrk.WrkResult | None) -> float | None:
    if result is None:
        return None
    return result.rps if spec.unit == "req/s" else result.mib_per_s


def median_run(spec: HttpRow, runs: list[wrk.WrkResult]) -> wrk.WrkResult:
    ordered = sorted(runs, key=lambda res: value_of(spec, res) or 0.0)
    return ordered[len(ordered) // 2]
