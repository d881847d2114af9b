"""`python -m bench [--quick] [...]`: every row of the speed table, in one run on this machine.

Rows a-c load the project's stream endpoint, a plain aiohttp FileResponse handler, nginx
and Go's net/http file server with wrk, one server process each; row a-log is row a with
the access log on, as users run it; row m is row a against a second server with metrics on;
rows k and w load the stream with media in an S3 bucket (k: every range forwarded from the
bucket; w: the node's cache warm) against the bucket serving a presigned URL; row d opens
thousands of live-viewer WebSockets; row e watches memory while multi-GB files go in and
out; row p times the processing worker on a 1080p clip; row f counts the requests Chromium
makes before a ready video's first frame. The table is printed and saved as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from . import bucket, check, go_peer, procs, tubelet, wrk
from .fileresponse_peer import __name__ as PEER_MODULE
from .loads import HttpRow, Target, load, median_run, value_of
from .machine import describe, machine_info
from .nginx_peer import argv as nginx_argv
from .nginx_peer import nginx_binary, write_config
from .report import Row, ratio, save, table
from .workspace import Workspace, make_media, sha256_of

HERE = Path(__file__).resolve().parent
ALL_ROWS = ("a", "b", "c", "m", "s", "k", "w", "d", "e", "p", "f")
# The rows measured against the main server and its 64 MiB file.
SERVING_ROWS = {"a", "b", "c", "m", "s", "d", "e"}
# Any token turns metrics on; row m's server is never scraped.
BENCH_METRICS_TOKEN = "bench-metrics-token-0123456789"
MiB = 2**20
GiB = 2**30
# The peers of rows a-c, as the table and the verdicts name them.
PEERS = {"fileresponse": "FileResponse", "go": "Go", "nginx": "nginx"}
# What to install for a missing tool (Debian's packages; peers.sh does it as root).
PACKAGES = {"wrk": "wrk", "nginx": "nginx-light", "go": "golang-go"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a fast smoke run: short loads, small N, small large file")
    parser.add_argument("--rows", default=",".join(ALL_ROWS),
                        help="which rows to run: a b c (HTTP; a also measures a-log, row a "
                             "with the access log on), m (row a with metrics on), "
                             "s (WORKERS scaling), k and w (S3: cold and warm node cache, "
                             "against the bucket; need STORAGE_URL=s3://..., as make bench "
                             "sets), "
                             "d (presence), e (multi-GB memory), p (processing speed), "
                             "f (requests before the first frame); default all")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 6)")
    parser.add_argument("--warmup", type=float, help="unrecorded seconds before each run")
    parser.add_argument("--rounds", type=int,
                        help="runs of every target per row, back to back (default 5)")
    parser.add_argument("--connections", type=int, default=64,
                        help="row a (and w-1k) connections")
    parser.add_argument("--range-connections", type=int, default=8,
                        help="row b, k and w connections (w's 1 KiB variant uses --connections)")
    parser.add_argument("--whole-connections", type=int, default=4, help="row c connections")
    parser.add_argument("--file-mib", type=int, default=64, help="size of the served file")
    parser.add_argument("--workers", type=int, default=2, help="WORKERS for the scaling row")
    parser.add_argument("--viewers", help="comma list of N for row d (default "
                        "1000,10000,100000; an N past what the open-file limit allows is "
                        "measured at the most it allows)")
    parser.add_argument("--viewer-procs", type=int, default=2,
                        help="client processes that hold row d's WebSockets")
    parser.add_argument("--trials", type=int,
                        help="count changes timed per N in row d (default 5)")
    parser.add_argument("--large-gib", type=float,
                        help="size of row e's upload and download (default 2; 0 skips)")
    parser.add_argument("--clip-seconds", type=float,
                        help="length of rows p and f's 1080p clips (default 30)")
    parser.add_argument("--media-rounds", type=int,
                        help="uploads of each clip in row p, page loads in row f (default 3)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin servers to CPU 0 and wrk to CPU 1")
    parser.add_argument("--results", type=Path, default=HERE / "results",
                        help="directory for the timestamped JSON of this run")
    parser.add_argument("--latest", type=Path,
                        help="also write the JSON here (default bench/latest.json for a full "
                             "run, nowhere for --quick)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when a row misses its target")
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (3.0 if quick else 6.0)
    args.warmup = args.warmup if args.warmup is not None else 1.0
    args.rounds = args.rounds or (1 if quick else 5)
    args.trials = args.trials or (3 if quick else 5)
    args.viewers = [int(n) for n in (args.viewers or ("200,1000" if quick
                                                      else "1000,10000,100000")).split(",")]
    args.large_gib = args.large_gib if args.large_gib is not None else (0.25 if quick else 2.0)
    args.clip_seconds = args.clip_seconds or (8.0 if quick else 30.0)
    args.media_rounds = args.media_rounds or (1 if quick else 3)
    args.rows = set(args.rows.split(","))
    # bench/latest.json is the README's table: only a full run of every row replaces it.
    if args.latest is None and not quick and args.rows >= set(ALL_ROWS):
        args.latest = HERE / "latest.json"
    return args


def cpu_plan(no_pin: bool) -> tuple[set[int] | None, set[int] | None, str]:
    """Servers on CPU 0, wrk on CPU 1: each side gets a core of its own, for every target."""
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin or len(cpus) < 2:
        return None, None, "not pinned"
    return {cpus[0]}, {cpus[1]}, (f"every server pinned to CPU {cpus[0]}, "
                                  f"wrk (1 thread) pinned to CPU {cpus[1]}")


def start_fileresponse(ws: Workspace, file: Path, cpus: set[int] | None,
                       page: bool = False) -> Any:
    port = procs.free_port()
    log = ws.logs / "fileresponse.log"
    env = dict(os.environ)
    env.pop("AIOHTTP_NO_EXTENSIONS", None)
    proc = procs.spawn([sys.executable, "-m", PEER_MODULE, str(file), str(port),
                        *(["--page"] if page else [])], log, env=env, cpus=cpus)
    url = f"http://127.0.0.1:{port}/file"
    procs.wait_http(url, proc, log)
    return proc, url


def start_nginx(ws: Workspace, file: Path, cpus: set[int] | None) -> Any:
    binary = nginx_binary()
    assert binary is not None
    port = procs.free_port()
    prefix = ws.root / "nginx"
    conf = write_config(prefix, file, port)
    proc = procs.spawn(nginx_argv(binary, prefix, conf), ws.logs / "nginx.log", cpus=cpus)
    url = f"http://127.0.0.1:{port}/file"
    procs.wait_http(url, proc, prefix / "error.log")
    return proc, url


def start_go(ws: Workspace, go: str, file: Path, cpus: set[int] | None) -> Any:
    """Build the Go peer into the workspace and start it; GOMAXPROCS=1."""
    binary = go_peer.build(go, ws.root / "go", ws.logs / "go-build.log")
    port = procs.free_port()
    log = ws.logs / "go.log"
    proc = procs.spawn(go_peer.argv(binary, file, port), log, env=go_peer.environment(),
                       cpus=cpus)
    url = f"http://127.0.0.1:{port}/file"
    try:
        procs.wait_http(url, proc, log)
    except BaseException:
        procs.stop(proc)
        raise
    if cpus:
        # The Go runtime starts threads before spawn() can pin the process: pin them all.
        procs.pin(proc.pid, cpus)
    return proc, url


def start_logged(ws: Workspace, video_id: int,
                 cpus: set[int] | None) -> tuple[Target, tubelet.Server]:
    """A second server on the same database and file, with the access log as users have it.

    The bench's servers run with ACCESS_LOG=0 and LOG_LEVEL=WARNING, at which aiohttp
    skips the access log altogether; this one has the defaults, ACCESS_LOG=1 and
    LOG_LEVEL=INFO, and writes its lines to a file in the workspace.
    """
    server = tubelet.start(ws, "main", cpus=cpus, log_label="main-access-log",
                           extra_env={"ACCESS_LOG": "1", "LOG_LEVEL": "INFO",
                                      "LOG_FORMAT": "text"})
    return Target("tubelet-log", f"{server.base}/videos/{video_id}/stream", server.pid), server


def http_rows(args: argparse.Namespace) -> list[HttpRow]:
    rows = [
        HttpRow("a", f"1 KiB ranges, {args.connections} conns", "req/s", 1024,
                args.connections, 3.0, also=(("go", 1.0), ("nginx", 0.5))),
        HttpRow("b", f"16 MiB ranges, {args.range_connections} conns", "MiB/s", 16 * MiB,
                args.range_connections, 0.9),
        HttpRow("c", f"whole {args.file_mib} MiB file, {args.whole_connections} conns",
                "MiB/s", 0, args.whole_connections, 0.9),
    ]
    return [row for row in rows if row.key in args.rows]


def run_http(args: argparse.Namespace, targets: list[Target], size: int,
             load_cpus: set[int] | None, log: Any, logged: Target | None = None) -> list[Row]:
    """Each row: every target in turn, `rounds` times over.

    The machine's speed drifts by more than the differences measured, so each
    round compares targets run back to back: a ratio is the median of the
    per-round ratios, the absolute numbers the median of each target's runs.
    Row a also loads `logged` (the server with its access log on) in its rounds.
    """
    rows = []
    for spec in http_rows(args):
        row_targets = targets[:1] + ([logged] if logged and spec.key == "a" else []) + targets[1:]
        results: dict[str, list[wrk.WrkResult]] = {t.name: [] for t in row_targets}
        for n in range(args.rounds):
            for target in row_targets:
                res = load(args, target, spec, size, load_cpus)
                results[target.name].append(res)
                log(f"  {spec.key}) {spec.what}, round {n + 1}/{args.rounds}, {target.name}: "
                    f"{value_of(spec, res):,.0f} {spec.unit}, p99 {res.p99_ms:.1f} ms, "
                    f"errors {res.failed}, server CPU {res.server_cpu_seconds:.1f}s")
        rows.append(_peer_row(spec, {k: v for k, v in results.items() if k != "tubelet-log"}))
        if "tubelet-log" in results:
            rows.append(_logged_row(spec, results))
    return rows


def _against_peers(spec: HttpRow, results: dict[str, list[wrk.WrkResult]],
                   ours: str) -> tuple[dict[str, float], dict[str, list[float]]]:
    """ours / each peer measured: the median of the per-round ratios, and those ratios."""
    medians: dict[str, float] = {}
    per_round: dict[str, list[float]] = {}
    for peer in PEERS:
        if peer not in results:
            continue
        found = [ratio(value_of(spec, a), value_of(spec, b))
                 for a, b in zip(results[ours], results[peer], strict=True)]
        per_round[peer] = [round(x, 3) for x in found if x is not None]
        if per_round[peer]:
            medians[peer] = statistics.median(per_round[peer])
    return medians, per_round


def _peer_row(spec: HttpRow, results: dict[str, list[wrk.WrkResult]]) -> Row:
    """Rows a-c: Tubelet against the peers, judged on each of the row's targets."""
    median = {name: value_of(spec, median_run(spec, runs)) for name, runs in results.items()}
    ratios, per_round = _against_peers(spec, results, "tubelet")
    wanted = (("fileresponse", spec.target_ratio), *spec.also)
    judged = {peer: ratios[peer] >= least for peer, least in wanted if peer in ratios}
    missed = [PEERS[peer] for peer, ok in judged.items() if not ok]
    failed = sum(res.failed for runs in results.values() for res in runs)
    notes = [f"vs {PEERS[peer]} {ratios[peer]:.2f}x" for peer, _ in spec.also
             if peer in ratios and peer != "go"]
    notes += [f"not judged against {PEERS[peer]}: not measured" for peer, _ in wanted
              if peer not in ratios]
    if failed:
        notes.append(f"{failed} failed requests")
    return Row(
        key=spec.key, what=spec.what, unit=spec.unit, tubelet=median.get("tubelet"),
        fileresponse=median.get("fileresponse"), nginx=median.get("nginx"), go=median.get("go"),
        ratio=ratios.get("fileresponse"), ratio_go=ratios.get("go"),
        ratio_nginx=ratios.get("nginx"),
        target=", ".join(f">= {least:g}x {PEERS[peer]}" for peer, least in wanted),
        passed=None if not judged else (not missed and failed == 0),
        missed=missed if spec.also else [], note="; ".join(notes),
        detail={"runs": {name: [res.as_json() for res in runs]
                         for name, runs in results.items()},
                "ratio_per_round": per_round.get("fileresponse", []),
                "ratios_per_round": per_round,
                "targets": {peer: {"least": least, "ratio": _rounded(ratios.get(peer)),
                                   "passed": judged.get(peer)} for peer, least in wanted}},
    )


def _logged_row(spec: HttpRow, results: dict[str, list[wrk.WrkResult]]) -> Row:
    """Row a-log: row a's load on the server with its access log on, in row a's rounds."""
    logged = median_run(spec, results["tubelet-log"])
    ratios, per_round = _against_peers(spec, results, "tubelet-log")
    of_a = statistics.median((value_of(spec, x) or 0.0) / (value_of(spec, y) or 1.0)
                             for x, y in zip(results["tubelet-log"], results["tubelet"],
                                             strict=True))
    failed = sum(res.failed for res in results["tubelet-log"])
    notes = [f"access log on: x{of_a:.2f} of row a (ACCESS_LOG=0)"]
    if "nginx" in ratios:
        notes.append(f"vs nginx {ratios['nginx']:.2f}x")
    if failed:
        notes.append(f"{failed} failed requests")
    return Row(
        key="a-log", what="row a, access log on", unit=spec.unit,
        tubelet=value_of(spec, logged), shown=f"{value_of(spec, logged):,.0f} (x{of_a:.2f} of a)",
        ratio=ratios.get("fileresponse"), ratio_go=ratios.get("go"),
        ratio_nginx=ratios.get("nginx"), target="reported", passed=None,
        note="; ".join(notes),
        detail={"runs": {"tubelet-log": [res.as_json() for res in results["tubelet-log"]]},
                "of_row_a": round(of_a, 3), "ratios_per_round": per_round},
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def run_scaling(args: argparse.Namespace, ws: Workspace, one: Target, video_id: int,
                size: int, log: Any) -> Row:
    """Row a again, unpinned, WORKERS=1 and WORKERS=N sharing the port, in alternate rounds."""
    spec = http_rows(argparse.Namespace(**{**vars(args), "rows": {"a"}}))[0]
    all_cpus = os.sched_getaffinity(0)
    for member in procs.process_tree(one.pid):
        procs.pin(member, all_cpus)
    server = tubelet.start(ws, "main", workers=args.workers)
    singles: list[wrk.WrkResult] = []
    manies: list[wrk.WrkResult] = []
    with procs.running(server.proc):
        many_target = Target("tubelet", f"{server.base}/videos/{video_id}/stream", server.pid)
        for n in range(args.rounds):
            singles.append(load(args, one, spec, size, None, threads=2))
            manies.append(load(args, many_target, spec, size, None, threads=2))
            log(f"  s) round {n + 1}/{args.rounds}: WORKERS=1 {singles[-1].rps:,.0f} req/s, "
                f"WORKERS={args.workers} {manies[-1].rps:,.0f} req/s")
    single, many = median_run(spec, singles), median_run(spec, manies)
    r = statistics.median(b.rps / a.rps for a, b in zip(singles, manies, strict=True))
    return Row(
        key="s", what=f"row a, WORKERS={args.workers} vs 1, unpinned", unit="req/s",
        tubelet=many.rps, shown=f"{many.rps:,.0f} (x{r:.2f} of {single.rps:,.0f})",
        ratio=None, target="scales with WORKERS", passed=None,
        note=f"WORKERS=1: {single.rps:,.0f} req/s; x{r:.2f} with {args.workers} "
             "(wrk shares the same cores)",
        detail={"workers_1": [x.as_json() for x in singles],
                f"workers_{args.workers}": [x.as_json() for x in manies],
                "speedup": round(r, 2)},
    )


def run_metrics_cost(args: argparse.Namespace, ws: Workspace, plain: Target, video_id: int,
                     size: int, cpus: tuple[set[int] | None, set[int] | None], log: Any) -> Row:
    """Row a against the main server and against one with metrics on, in alternate rounds.

    Both are pinned to the same CPU, started the same way (ACCESS_LOG=0); the second
    has METRICS_TOKEN set, so each response is counted per route and status.
    """
    server_cpus, load_cpus = cpus
    spec = http_rows(argparse.Namespace(**{**vars(args), "rows": {"a"}}))[0]
    server = tubelet.start(ws, "main", cpus=server_cpus,
                           extra_env={"METRICS_TOKEN": BENCH_METRICS_TOKEN})
    offs: list[wrk.WrkResult] = []
    ons: list[wrk.WrkResult] = []
    with procs.running(server.proc):
        metered = Target("tubelet", f"{server.base}/videos/{video_id}/stream", server.pid)
        for n in range(args.rounds):
            # Which goes first alternates: a run right after another one on the same
            # cores does not start from the same state.
            if n % 2:
                ons.append(load(args, metered, spec, size, load_cpus))
                offs.append(load(args, plain, spec, size, load_cpus))
            else:
                offs.append(load(args, plain, spec, size, load_cpus))
                ons.append(load(args, metered, spec, size, load_cpus))
            log(f"  m) round {n + 1}/{args.rounds}: metrics off {offs[-1].rps:,.0f} req/s "
                f"({_cpu_us(offs[-1]):.1f} us CPU/req), on {ons[-1].rps:,.0f} req/s "
                f"({_cpu_us(ons[-1]):.1f} us CPU/req)")
    off, on = median_run(spec, offs), median_run(spec, ons)
    r = statistics.median(b.rps / a.rps for a, b in zip(offs, ons, strict=True))
    cpu_off = statistics.median(_cpu_us(x) for x in offs)
    cpu_on = statistics.median(_cpu_us(x) for x in ons)
    failed = sum(x.failed for x in offs + ons)
    return Row(
        key="m", what="row a with metrics on, vs off", unit="req/s", tubelet=on.rps,
        shown=f"{on.rps:,.0f} (x{r:.2f} of {off.rps:,.0f})", ratio=None,
        # Rounds of one server differ by up to 20% on a shared machine: 0.9 is "no cost
        # this machine can measure", not a cost of 10%.
        target=">= 0.9x row a", passed=r >= 0.9 and failed == 0,
        note=f"metrics off {off.rps:,.0f} req/s, {cpu_off:.1f} us CPU/req; on {on.rps:,.0f} "
             f"req/s, {cpu_on:.1f} us CPU/req (medians of {args.rounds} alternating rounds)",
        detail={"off": [x.as_json() for x in offs], "on": [x.as_json() for x in ons],
                "ratio": round(r, 3), "cpu_us_per_request": {"off": round(cpu_off, 2),
                                                             "on": round(cpu_on, 2)}},
    )


def _cpu_us(result: wrk.WrkResult) -> float:
    return result.server_cpu_seconds / max(result.requests, 1) * 1e6


def run_large(args: argparse.Namespace, server: tubelet.Server, token: str, log: Any) -> Row:
    """Row e: RSS while a multi-GB file is uploaded (generated, chunked) and downloaded."""
    size = int(args.large_gib * GiB)

    async def upload() -> int:
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            return await tubelet.upload_generated(session, server.base, token, size, "large")

    log(f"  e) uploading {size / GiB:g} GiB ...")
    with procs.RssSampler(server.pid) as up:
        started = time.monotonic()
        video_id = asyncio.run(upload())
        up_seconds = time.monotonic() - started
    tubelet.mark_ready(server, video_id)
    log(f"  e) downloading {size / GiB:g} GiB ...")
    with procs.RssSampler(server.pid) as down:
        got = asyncio.run(tubelet.stream_discard(f"{server.base}/videos/{video_id}/stream"))
    if got != size:
        raise RuntimeError(f"row e: downloaded {got} bytes of {size}")
    tubelet.delete_video(server.base, token, video_id)
    growth = max(up.peak - up.before, down.peak - down.before)
    limit = 64 * MiB
    return Row(
        key="e", what=f"RSS growth, {size / GiB:g} GiB upload + download", unit="MiB",
        tubelet=growth / MiB, target=f"flat (<= {limit // MiB} MiB)", passed=growth <= limit,
        note=f"upload {up_seconds:.1f}s",
        detail={"upload_rss_before_mib": up.before / MiB, "upload_rss_peak_mib": up.peak / MiB,
                "download_rss_before_mib": down.before / MiB,
                "download_rss_peak_mib": down.peak / MiB, "bytes": size,
                "upload_seconds": round(up_seconds, 2)},
    )


def run_serving(args: argparse.Namespace, ws: Workspace, stack: contextlib.ExitStack,
                missing: list[str], cpus: tuple[set[int] | None, set[int] | None],
                notes: list[str], log: Any) -> list[Row]:
    """Rows a-e: the main server, one uploaded 64 MiB file, and the peers serving it."""
    server_cpus, load_cpus = cpus
    rows: list[Row] = []
    size = args.file_mib * MiB
    media = ws.root / "source.mp4"
    sha = make_media(media, size)

    server = tubelet.start(ws, "main", cpus=server_cpus)
    stack.enter_context(procs.running(server.proc))

    with procs.RssSampler(server.pid) as upload_rss:
        token, video_id = tubelet.upload_as_new_user(server.base, media, "bench")
    tubelet.mark_ready(server, video_id)
    stored = tubelet.stored_file(server.storage)
    if sha256_of(stored) != sha:
        raise RuntimeError("the stored upload differs from the source file")
    log(f"uploaded {args.file_mib} MiB as video {video_id}: {stored.name} "
        f"(server RSS {upload_rss.before / MiB:.0f} -> peak {upload_rss.peak / MiB:.0f} MiB)")

    targets = [Target("tubelet", f"{server.base}/videos/{video_id}/stream", server.pid)]
    http_wanted = bool({"a", "b", "c", "m", "s"} & args.rows) and "wrk" not in missing
    if http_wanted:
        proc, url = start_fileresponse(ws, stored, server_cpus)
        stack.enter_context(procs.running(proc))
        targets.append(Target("fileresponse", url, proc.pid))
        if "nginx" not in missing:
            proc, url = start_nginx(ws, stored, server_cpus)
            stack.enter_context(procs.running(proc))
            targets.append(Target("nginx", url, proc.pid))
        go = go_peer.go_binary()
        if go is not None and {"a", "b", "c"} & args.rows:
            log("building the Go peer ...")
            try:
                proc, url = start_go(ws, go, stored, server_cpus)
            except RuntimeError as exc:
                notes.append(f"Go net/http not measured (its column shows -): {exc}")
                log(f"NOTE: {notes[-1]}")
            else:
                stack.enter_context(procs.running(proc))
                targets.append(Target("go", url, proc.pid))
        logged = None
        if "a" in args.rows:
            logged, logged_server = start_logged(ws, video_id, server_cpus)
            stack.enter_context(procs.running(logged_server.proc))
        for target in targets + ([logged] if logged else []):
            check.verify(target.url, stored, sha)
        log("all targets serve identical bytes; loading with wrk")
        rows += run_http(args, targets, size, load_cpus, log, logged)
        if "c" in args.rows:
            c = next(row for row in rows if row.key == "c")
            detail = max(c.detail["runs"]["tubelet"],
                         key=lambda run: run["server_rss_peak_mib"])
            notes.append(f"tubelet RSS during row c: {detail['server_rss_before_mib']} MiB "
                         f"before, {detail['server_rss_peak_mib']} MiB peak")
        if "m" in args.rows:
            rows.append(run_metrics_cost(args, ws, targets[0], video_id, size, cpus, log))
        if "s" in args.rows:
            rows.append(run_scaling(args, ws, targets[0], video_id, size, log))

    if "e" in args.rows and args.large_gib > 0:
        rows.append(run_large(args, server, token, log))

    if "d" in args.rows:
        from . import presence

        rows += presence.run(args, ws, video_id, server_cpus, load_cpus, log)
    return rows


def run_media(args: argparse.Namespace, ws: Workspace, stack: contextlib.ExitStack,
              notes: list[str], log: Any) -> list[Row]:
    """Rows p and f: a server and a processing worker of their own, and real 1080p clips."""
    from . import clips, first_frame, processing

    try:
        clips.ffmpeg_binary()
    except RuntimeError as exc:
        notes.append(f"rows p and f not measured: {exc}")
        log(f"NOTE: {notes[-1]}")
        return []
    site = processing.open_site(ws, log)
    stack.callback(site.close)
    notes.append("rows p and f: their server, worker and browser are not pinned; the worker's "
                 "ffmpeg uses FFMPEG_THREADS threads")
    rows: list[Row] = []
    remuxed = None
    if "p" in args.rows:
        found, remuxed = processing.run(args, site, log)
        rows += found
    if "f" in args.rows:
        why = first_frame.chromium_missing()
        if why is not None:
            notes.append(f"row f not measured: {why}")
            log(f"NOTE: {notes[-1]}")
            return rows
        if remuxed is None:
            remuxed = site.process(site.clip("h264", args.clip_seconds), "bench first frame")
        video = remuxed.processed.video
        what = (f"{video['duration']:.0f} s {video['width']}x{video['height']} "
                f"{video['video_codec']}, remuxed by the worker "
                f"({video['size'] / MiB:.1f} MiB)")
        # The upload as it came, on a bare page of the FileResponse peer, for contrast.
        proc, url = start_fileresponse(ws, remuxed.clip.path, None, page=True)
        stack.enter_context(procs.running(proc))
        rows.append(first_frame.run(args, site.server.base, remuxed.processed.video_id, what,
                                    url.removesuffix("/file"), log))
    return rows


def peers_missing() -> list[str]:
    missing = []
    if wrk.wrk_binary() is None:
        missing.append("wrk")
    if nginx_binary() is None:
        missing.append("nginx")
    if go_peer.go_binary() is None:
        missing.append("go")
    return missing


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    fd_limit = procs.raise_fd_limit()
    info = machine_info()
    server_cpus, load_cpus, pinning = cpu_plan(args.no_pin)
    notes: list[str] = [f"pinning: {pinning}"]

    def log(message: str) -> None:
        print(message, flush=True)

    log(f"machine: {describe(info)}")
    log(f"pinning: {pinning}; open-file limit {fd_limit}")
    missing = peers_missing()
    for name in missing:
        what = ("rows a-c, k and w cannot be measured" if name == "wrk" else
                "the Go net/http column of rows a-c shows -" if name == "go" else
                "its column cannot be measured")
        note = (f"{name} is not installed: {what}; apt-get install {PACKAGES[name]} "
                "(make bench does it when run as root)")
        notes.append(note)
        log(f"NOTE: {note}")
    if not info["aiohttp_speedups"]["c_http_parser"]:
        notes.append("aiohttp runs without its C extensions: every aiohttp number is slower")

    database_url = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    rows: list[Row] = []
    with Workspace(database_url, redis_url, keep=args.keep) as ws, contextlib.ExitStack() as stack:
        log(f"workspace: {ws.root}")
        if SERVING_ROWS & args.rows:
            rows += run_serving(args, ws, stack, missing, (server_cpus, load_cpus), notes, log)
        if bucket.BUCKET_ROWS & args.rows and "wrk" not in missing:
            rows += bucket.run(args, ws, stack, (server_cpus, load_cpus), notes, log)
        if {"p", "f"} & args.rows:
            rows += run_media(args, ws, stack, notes, log)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    settings = {k: (sorted(v) if isinstance(v, set) else _shown_path(v) if isinstance(v, Path)
                    else v) for k, v in vars(args).items()}
    settings["pinning"] = pinning
    settings["elapsed_seconds"] = round(time.monotonic() - started)
    print()
    print(f"Measured {info['date']} on {describe(info)}; {pinning}.")
    print(table(rows))
    for row in rows:
        if row.note:
            print(f"- {row.key}: {row.note}")
    for note in notes:
        print(f"- {note}")
    out = args.results / f"bench-{stamp}.json"
    save(out, info, settings, rows, notes)
    print(f"saved {out}")
    if args.latest:
        save(args.latest, info, settings, rows, notes)
        print(f"saved {args.latest}")
    failed = [row.key for row in rows if row.passed is False]
    if failed:
        print(f"below target: {', '.join(failed)}")
    return 1 if failed and args.strict else 0


def _shown_path(path: Path) -> str:
    """Paths inside the repository relative to it, so saved results name no machine."""
    path = path.resolve()
    return str(path.relative_to(HERE.parent)) if path.is_relative_to(HERE.parent) else str(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
