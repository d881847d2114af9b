"""Rows k and w: the stream with media in an S3 bucket, against the bucket serving it itself.

Row k (cold): a server with CACHE_MAX_BYTES=0, so every range is forwarded from
the bucket through the server, as for a file no node has cached yet. Row w
(warm): a server whose node cache holds the file, so ranges go out with
sendfile from local disk. Both are compared with wrk loading the bucket
directly, through a presigned GET URL of the same object (its signature covers
no Range header, so every request may ask for another range): what a player
would get with STREAM_REDIRECT=presigned, minus the redirect. The bucket is the
one STORAGE_URL names; under `make bench` that is the SeaweedFS `server.dev`
starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import secrets
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import botocore.session
from botocore.config import Config

from server.core.storage import StorageLocation, parse_storage_url

from . import check, procs, tubelet, wrk
from .loads import HttpRow, Target, load, median_run, value_of
from .report import Row
from .workspace import Workspace, make_media

BUCKET_ROWS = {"k", "w"}
MiB = 2**20
GiB = 2**30
# The presigned URL must outlive the longest run.
URL_TTL = 12 * 3600
FILL_TIMEOUT = 300.0

Log = Callable[[str], None]


def bucket_rows(args: argparse.Namespace) -> list[HttpRow]:
    """Row k and row w as wrk loads; target_ratio 0 means reported, no target."""
    rows = [
        HttpRow("k", f"S3, cold node cache: 1 MiB ranges, {args.range_connections} conns",
                "MiB/s", MiB, args.range_connections, 0.0),
        HttpRow("w", f"S3, warm node cache: 1 MiB ranges, {args.range_connections} conns",
                "MiB/s", MiB, args.range_connections, 1.0),
        HttpRow("w-1k", f"S3, warm node cache: 1 KiB ranges, {args.connections} conns",
                "req/s", 1024, args.connections, 1.0),
    ]
    return [row for row in rows if row.key.split("-")[0] in args.rows]


def bucket_of(environ: Mapping[str, str]) -> StorageLocation | None:
    """The S3 location STORAGE_URL names, None when it names none."""
    raw = environ.get("STORAGE_URL", "").strip()
    if not raw:
        return None
    try:
        location = parse_storage_url(raw)
    except ValueError:
        return None
    return location if location.is_s3 else None


def storage_url(location: StorageLocation) -> str:
    """STORAGE_URL for location (the inverse of parse_storage_url)."""
    options = {name: value for name, value in (("endpoint", location.endpoint),
                                               ("region", location.region)) if value}
    prefix = location.prefix.rstrip("/")
    query = f"?{urlencode(options)}" if options else ""
    return f"s3://{location.bucket}{'/' + prefix if prefix else ''}{query}"


def presigned_url(location: StorageLocation, key: str) -> str:
    """A GET URL of the stored object, signed as the server's store signs its redirects."""
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=location.endpoint, region_name=location.region or "us-east-1",
        config=Config(signature_version="s3v4",
                      s3={"addressing_style": "path" if location.endpoint else "auto"}))
    url: str = client.generate_presigned_url(
        "get_object", Params={"Bucket": location.bucket, "Key": location.prefix + key},
        ExpiresIn=URL_TTL)
    return url


def bucket_pid(location: StorageLocation) -> int | None:
    """The S3 service's process, when it runs on this machine (for its CPU time)."""
    if location.endpoint is None:
        return None
    parts = urlsplit(location.endpoint)
    if parts.hostname not in ("127.0.0.1", "localhost") or parts.port is None:
        return None
    return procs.listener_pid(parts.port)


def wait_cached(path: Path, timeout: float = FILL_TIMEOUT) -> float:
    """Until the node's cache holds path; the seconds it took."""
    started = time.monotonic()
    while not path.exists():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{path.name} not in the node's cache after {timeout:.0f}s")
        time.sleep(0.1)
    return time.monotonic() - started


def compare(args: argparse.Namespace, spec: HttpRow, ours: Target, bucket: Target, size: int,
            load_cpus: set[int] | None, log: Log) -> Row:
    """The server and the bucket in turn, `rounds` times; the ratio is the median per round."""
    results: dict[str, list[wrk.WrkResult]] = {ours.name: [], bucket.name: []}
    for n in range(args.rounds):
        for target in (ours, bucket):
            res = load(args, target, spec, size, load_cpus)
            results[target.name].append(res)
            log(f"  {spec.key}) {spec.what}, round {n + 1}/{args.rounds}, {target.name}: "
                f"{value_of(spec, res):,.0f} {spec.unit}, p99 {res.p99_ms:.1f} ms, "
                f"errors {res.failed}, server CPU {res.server_cpu_seconds:.1f}s")
    per_round = [(value_of(spec, a) or 0.0) / (value_of(spec, b) or 1.0) for a, b in
                 zip(results[ours.name], results[bucket.name], strict=True)]
    r = statistics.median(per_round)
    failed = sum(res.failed for runs in results.values() for res in runs)
    cpu = {name: _cpu_cost(spec, median_run(spec, runs)) for name, runs in results.items()}
    per = "us per request" if spec.unit == "req/s" else "s per GiB sent"
    note = (f"server CPU, {per}: tubelet {cpu[ours.name]:,.2f}, bucket {cpu[bucket.name]:,.2f}"
            if bucket.pid else "the bucket's CPU is not measured")
    if failed:
        note += f"; {failed} failed requests"
    reported = spec.target_ratio == 0
    return Row(
        key=spec.key, what=spec.what, unit=spec.unit,
        tubelet=value_of(spec, median_run(spec, results[ours.name])),
        bucket=value_of(spec, median_run(spec, results[bucket.name])), ratio=r,
        target="reported" if reported else f">= {spec.target_ratio:g}x bucket",
        passed=None if reported else (r >= spec.target_ratio and failed == 0),
        note=note,
        detail={"runs": {name: [res.as_json() for res in runs]
                         for name, runs in results.items()},
                "ratio_per_round": [round(x, 3) for x in per_round],
                "server_cpu": {"unit": per, **{k: round(v, 3) for k, v in cpu.items()}}},
    )


def _cpu_cost(spec: HttpRow, result: wrk.WrkResult) -> float:
    """Server CPU per request (req/s rows) or per GiB sent (MiB/s rows)."""
    if spec.unit == "req/s":
        return result.server_cpu_seconds / max(result.requests, 1) * 1e6
    return result.server_cpu_seconds / max(result.bytes / GiB, 1e-9)


def run(args: argparse.Namespace, ws: Workspace, stack: contextlib.ExitStack,
        cpus: tuple[set[int] | None, set[int] | None], notes: list[str], log: Log) -> list[Row]:
    """Rows k and w: one upload to the bucket through the API, a cold and a warm server."""
    specs = bucket_rows(args)
    location = bucket_of(os.environ)
    if location is None:
        notes.append("rows k and w not measured: STORAGE_URL names no S3 bucket "
                     "(`make bench` runs under server.dev, which starts one)")
        log(f"NOTE: {notes[-1]}")
        return []
    server_cpus, load_cpus = cpus
    size = args.file_mib * MiB
    media = ws.root / "bucket-source.mp4"
    sha = make_media(media, size)
    # A prefix of the run's own, so its objects and marker meet no one else's.
    ours = dataclasses.replace(location,
                               prefix=f"{location.prefix}bench-{secrets.token_hex(4)}/")
    url = storage_url(ours)

    cold = tubelet.start(ws, "bucket-cold", cpus=server_cpus, storage_url=url,
                         extra_env={"CACHE_MAX_BYTES": "0"})
    stack.enter_context(procs.running(cold.proc))
    token, video_id = tubelet.upload_as_new_user(cold.base, media, "bench bucket")
    tubelet.mark_ready(cold, video_id)
    # Deleting the video removes the object; the servers are still up when this runs.
    stack.callback(_delete_quietly, cold.base, token, video_id, log)
    key = tubelet.storage_key(cold, video_id)
    bucket = Target("bucket", presigned_url(ours, key), bucket_pid(ours))
    check.verify(bucket.url, media, sha)
    log(f"uploaded {args.file_mib} MiB to {ours.bucket}/{ours.prefix}{key} as video "
        f"{video_id}; the bucket serves it (S3 process {bucket.pid or 'not found'})")
    notes.append("rows k and w: the bucket (the S3 service of STORAGE_URL) is not pinned; "
                 "on one machine it shares the cores with the server and wrk")

    stream = f"/videos/{video_id}/stream"
    rows: list[Row] = []
    for spec in [spec for spec in specs if spec.key == "k"]:
        target = Target("tubelet", cold.base + stream, cold.pid)
        check.verify(target.url, media, sha)
        rows.append(compare(args, spec, target, bucket, size, load_cpus, log))
        if (cold.storage / "cache" / key).exists():
            raise RuntimeError("row k: CACHE_MAX_BYTES=0, yet the file was cached")

    warm_specs = [spec for spec in specs if spec.key != "k"]
    if warm_specs:
        warm = tubelet.start(ws, "bucket-warm", cpus=server_cpus, storage_url=url)
        stack.enter_context(procs.running(warm.proc))
        got = asyncio.run(tubelet.stream_discard(warm.base + stream))
        if got != size:
            raise RuntimeError(f"row w: streamed {got} bytes of {size}")
        cached = warm.storage / "cache" / key
        seconds = wait_cached(cached)
        log(f"  w) the node's cache holds the file ({seconds:.1f}s after the first stream)")
        target = Target("tubelet", warm.base + stream, warm.pid)
        check.verify(target.url, media, sha)
        for spec in warm_specs:
            rows.append(compare(args, spec, target, bucket, size, load_cpus, log))
        if not cached.exists():
            raise RuntimeError("row w: the file left the node's cache during the row")
    return rows


def _delete_quietly(base: str, token: str, video_id: int, log: Log) -> None:
    try:
        tubelet.delete_video(base, token, video_id)
    except OSError as exc:
        log(f"NOTE: video {video_id} not deleted, its object stays in the bucket: {exc}")
