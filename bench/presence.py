"""Row d: N live-viewer WebSockets on one video against one server process.

For each N a fresh server (its own Redis prefix, so no members linger from an
earlier N) gets N sockets from load-client processes (bench.viewers). Memory
per connection is the growth of the server's RSS from before the first socket
to after all N have seen the count N, divided by N. Then, a few times, one more
viewer joins; every socket records when the new count reaches it, and the
delays from the moment the join was started give p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from . import procs, tubelet
from .report import Row
from .workspace import Workspace

KB = 1000
TARGET_KB = 12.0
# Open files the server needs besides its sockets (database, Redis, logs, listeners).
FD_MARGIN = 1000
TARGET_P99_MS = 1000.0


class NoPresence(RuntimeError):
    """The server has no live-viewer endpoint."""


class Viewers:
    """One bench.viewers process: COUNT sockets, driven a command at a time."""

    def __init__(self, ws: Workspace, base_port: int, path: str, count: int, name: str,
                 cpus: set[int] | None, source: str = "127.0.0.1") -> None:
        self.count = count
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.viewers", "127.0.0.1", str(base_port), path,
             str(count), source],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=open(ws.logs / f"{name}.log", "ab"),  # noqa: SIM115 - the child owns it
        )
        if cpus:
            procs.pin(self.proc.pid, cpus)

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()

    def reply(self, within: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], within)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(f"viewer client {self.proc.pid} did not answer in {within:.0f}s")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="close")
                self.reply(10)
            except (OSError, RuntimeError):
                pass
        procs.stop(self.proc)  # type: ignore[arg-type]


def ask_all(clients: list[Viewers], wait: float, **command: Any) -> list[dict[str, Any]]:
    """Send one command to every client, then read every answer (each within `wait` s)."""
    for client in clients:
        client.send(**command)
    return [client.reply(wait) for client in clients]


async def _one_viewer(url: str) -> None:
    """A viewer that joins, reads its first count and leaves: warms the server's code paths."""
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url) as sock:
                await sock.receive_json(timeout=10)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 404:
                raise NoPresence(f"{url} answered 404") from None
            raise


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure(args: argparse.Namespace, ws: Workspace, video_id: int, n: int, *,
            workers: int, server_cpus: set[int] | None, load_cpus: set[int] | None,
            log: Callable[[str], None]) -> dict[str, Any]:
    label = f"presence-{n}-w{workers}"
    server = tubelet.start(ws, label, workers=workers, cpus=server_cpus,
                           extra_env={"REDIS_PREFIX": f"{ws.redis_prefix}-{label}"})
    port = int(server.base.rsplit(":", 1)[1])
    path = f"/videos/{video_id}/active-viewers"
    clients: list[Viewers] = []
    try:
        asyncio.run(_one_viewer(f"ws://127.0.0.1:{port}{path}"))
        time.sleep(1.0)
        rss_before = procs.rss_bytes(server.pid)
        share = [n // args.viewer_procs + (i < n % args.viewer_procs)
                 for i in range(args.viewer_procs)]
        # Each load process connects from a loopback address of its own (127.0.0.2, ...).
        clients = [Viewers(ws, port, path, count, f"{label}-client{i}", load_cpus,
                           source=f"127.0.0.{2 + i}")
                   for i, count in enumerate(share) if count]
        triggers = [Viewers(ws, port, path, 1, f"{label}-trigger{k}", load_cpus)
                    for k in range(args.trials)]
        started = time.monotonic()
        opened = ask_all(clients, 600, cmd="open")
        failed = sum(r["failed"] for r in opened)
        log(f"  d) N={n}, WORKERS={workers}: {n - failed} sockets open in "
            f"{time.monotonic() - started:.1f}s" + (f", {failed} failed: {opened}" if failed
                                                    else ""))
        settled = ask_all(clients, 180, cmd="settle", expect=n, within=120)
        time.sleep(1.0)
        rss_after = procs.rss_bytes(server.pid)
        delays: list[float] = []
        missing = 0
        for k, trigger in enumerate(triggers, start=1):
            time.sleep(random.uniform(0.6, 1.4))  # meet the server's 0.5 s tick at any phase
            ask_all(clients, 30, cmd="arm", expect=n + k)
            began = time.monotonic()
            trigger.send(cmd="open")
            collected = ask_all(clients, 60, cmd="collect", within=10)
            trigger.reply(30)
            for reply in collected:
                delays += [(t - began) * 1000 for t in reply["arrivals"]]
                missing += reply["missing"]
        for client in clients + triggers:
            client.stop()
        clients = []
        result = {
            "n": n, "workers": workers, "failed_to_open": failed,
            "settled": all(r["settled"] for r in settled),
            "rss_before_mib": round(rss_before / 2**20, 1),
            "rss_after_mib": round(rss_after / 2**20, 1),
            "kb_per_connection": round((rss_after - rss_before) / max(n, 1) / KB, 2),
            "trials": args.trials, "samples": len(delays), "missing": missing,
            "p50_ms": round(percentile(delays, 0.50), 1) if delays else None,
            "p99_ms": round(percentile(delays, 0.99), 1) if delays else None,
            "max_ms": round(max(delays), 1) if delays else None,
            "mean_ms": round(statistics.fmean(delays), 1) if delays else None,
        }
        log(f"  d) N={n}, WORKERS={workers}: {result['kb_per_connection']} KB/connection, "
            f"count change p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
            f"missing {missing}")
        return result
    finally:
        for client in clients:
            client.stop()
        procs.stop(server.proc)


def _shown(r: dict[str, Any]) -> str:
    if r["p50_ms"] is None:
        return f"{r['kb_per_connection']:.1f} KB, no count change seen"
    return f"{r['kb_per_connection']:.1f} KB, {r['p50_ms']:.0f}/{r['p99_ms']:.0f} ms"


def run(args: argparse.Namespace, ws: Workspace, video_id: int, server_cpus: set[int] | None,
        load_cpus: set[int] | None, log: Callable[[str], None]) -> list[Row]:
    rows: list[Row] = []
    # One process holds every socket: N open files. The most this machine allows:
    limit = procs.raise_fd_limit()
    most = max(1000, (limit - FD_MARGIN) // 1000 * 1000)
    asked = list(args.viewers)
    for n in asked:
        if n > most:
            rows.append(Row(
                key=f"d{n}", what=f"{n:,} viewer sockets, 1 process", unit="KB/conn, p50/p99",
                tubelet=None, target=f"<= {TARGET_KB:g} KB, p99 <= {TARGET_P99_MS / 1000:g} s",
                note=f"not measured: {n:,} sockets need {n + FD_MARGIN:,} open files in one "
                     f"process; this machine's hard limit is {limit:,} (raising it needs "
                     f"CAP_SYS_RESOURCE); measured at {most:,} instead"))
            log(f"NOTE: row d{n} not measured: hard open-file limit {limit}; "
                f"measuring {most} sockets instead")
    args.viewers = sorted({n if n <= most else most for n in asked})
    try:
        first = measure(args, ws, video_id, args.viewers[0], workers=1,
                        server_cpus=server_cpus, load_cpus=load_cpus, log=log)
    except NoPresence as exc:
        log(f"NOTE: row d skipped: the server has no live-viewer WebSocket ({exc})")
        return [Row(key="d", what="viewer sockets", unit="-", tubelet=None,
                    note=f"not measured: {exc}")]
    for n in args.viewers:
        r = first if n == args.viewers[0] else measure(
            args, ws, video_id, n, workers=1, server_cpus=server_cpus, load_cpus=load_cpus,
            log=log)
        complete = r["failed_to_open"] == 0 and r["settled"] and r["missing"] == 0
        rows.append(Row(
            key=f"d{n}", what=f"{n:,} viewer sockets, 1 process", unit="KB/conn, p50/p99",
            tubelet=r["kb_per_connection"], shown=_shown(r),
            target=f"<= {TARGET_KB:g} KB, p99 <= {TARGET_P99_MS / 1000:g} s",
            passed=complete and r["kb_per_connection"] <= TARGET_KB
            and r["p99_ms"] is not None and r["p99_ms"] <= TARGET_P99_MS,
            note=f"{r['kb_per_connection']} KB/conn; count change p50 {r['p50_ms']} ms, "
                 f"p99 {r['p99_ms']} ms" + ("" if complete else "; some sockets missed it"),
            detail=r,
        ))
    if args.workers > 1:
        n = args.viewers[0]
        r = measure(args, ws, video_id, n, workers=args.workers, server_cpus=None,
                    load_cpus=None, log=log)
        complete = r["failed_to_open"] == 0 and r["settled"] and r["missing"] == 0
        rows.append(Row(
            key=f"d{n}w{args.workers}",
            what=f"{n:,} viewer sockets, WORKERS={args.workers}", unit="KB/conn, p50/p99",
            tubelet=r["kb_per_connection"], shown=_shown(r),
            target="every socket sees the same count",
            passed=complete,
            note=(f"every socket saw every count through Redis; p50 {r['p50_ms']} ms, "
                  f"p99 {r['p99_ms']} ms") if complete else
                 f"some sockets never saw a count: {r}",
            detail=r,
        ))
    return rows
