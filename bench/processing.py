"""Row p: how fast the worker makes an upload watchable, as multiples of real time.

A server and one `python -m server worker` run on a database of their own,
with the server's default processing settings. Each clip (bench.clips) is
uploaded through POST /videos/upload; from the moment its 201 arrives, GET
/videos/{id} is polled every POLL seconds. The worker writes the job's
progress when each step ends (STREAM_DONE once the browser-safe stream exists,
then the poster and the storyboard), so the polls tell

- stream: upload accepted -> the remuxed or transcoded file exists (queue
  pickup, probe and the remux or transcode);
- total: upload accepted -> `ready` (plus the poster and the storyboard, and
  moving the files into place).

Speed is the clip's duration (as the server probed it) over those times. The
worker's log tells which plan each job ran, and the processed stream is checked
to be H.264 with its `moov` first, so a row never times the wrong work.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from server.core.config import Config
from server.ingest.processing import POSTER_DONE, STORYBOARD_DONE, STREAM_DONE

from . import clips, procs, tubelet
from .report import Row
from .workspace import Workspace

LABEL = "media"
POLL = 0.025
# Remuxing copies the streams: a 1080p file should take a small fraction of its length.
REMUX_TARGET = 20.0
MARKS = {"stream": STREAM_DONE, "poster": POSTER_DONE, "storyboard": STORYBOARD_DONE}
# Lines of the worker's log (LOG_LEVEL=INFO), each stamped to the millisecond.
STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?"
JOB_STARTED = STAMP + r"Starting job \S+\(video_id={id}\)$"
PLAN_MADE = STAMP + r"video {id}: (remux|transcode)\b"
READY = STAMP + r"video {id} is ready\b"

Log = Callable[[str], None]


def processing_settings() -> dict[str, str]:
    """The server's own defaults, set explicitly so the caller's environment cannot change
    what is measured."""
    base = Config(jwt_secret="-" * 32)
    return {
        "TRANSCODE_PRESET": base.transcode_preset,
        "TRANSCODE_CRF": str(base.transcode_crf),
        "TRANSCODE_MAX_HEIGHT": str(base.transcode_max_height),
        "FFMPEG_THREADS": str(base.ffmpeg_threads),
        "WORKER_CONCURRENCY": "1",
    }


@dataclass
class Timed:
    """One clip processed: seconds from upload accepted to each step, and what came out."""

    clip: clips.Clip
    processed: tubelet.Processed
    upload_seconds: float
    plan: str
    # From the worker's log, seconds after the upload was accepted: "started" (the job),
    # "stream", "ready"; a check on the polled times, free of their granularity.
    worker: dict[str, float]

    @property
    def duration(self) -> float:
        return float(self.processed.video["duration"])

    @property
    def stream_seconds(self) -> float:
        return self.processed.seen["stream"]

    @property
    def total_seconds(self) -> float:
        return self.processed.seen["ready"]

    def as_json(self) -> dict[str, Any]:
        video = self.processed.video
        return {
            "video_id": self.processed.video_id, "plan": self.plan,
            "duration": self.duration, "upload_seconds": round(self.upload_seconds, 3),
            "seconds_after_accepted": {k: round(v, 3) for k, v in self.processed.seen.items()},
            "x_real_time_stream": round(self.duration / self.stream_seconds, 2),
            "x_real_time_total": round(self.duration / self.total_seconds, 2),
            "polls": self.processed.polls,
            "worker_log_seconds_after_accepted": {k: round(v, 3)
                                                  for k, v in self.worker.items()},
            "result": {k: video.get(k) for k in ("width", "height", "video_codec",
                                                 "audio_codec", "size", "content_type")},
        }


@dataclass
class Site:
    """A server and one processing worker on a database of their own, and a signed-in user."""

    ws: Workspace
    server: tubelet.Server
    worker: tubelet.Worker
    token: str
    settings: dict[str, str]
    made: dict[str, clips.Clip] = field(default_factory=dict)
    making_seconds: dict[str, float] = field(default_factory=dict)

    def close(self) -> None:
        procs.stop(self.worker.proc)
        procs.stop(self.server.proc)

    def clip(self, kind: str, seconds: float) -> clips.Clip:
        """The run's clip of that kind ("h264" or "hevc"), made the first time it is asked for."""
        if kind not in self.made:
            started = time.monotonic()
            make = clips.h264_mp4 if kind == "h264" else clips.hevc_mov
            self.made[kind] = make(self.ws.root, seconds)
            if clips.moov_first(clips.head_of(self.made[kind].path)):
                raise RuntimeError(f"{self.made[kind].path.name} has its moov first: it would "
                                   "not stand for a camera's file")
            self.making_seconds[kind] = time.monotonic() - started
        return self.made[kind]

    def process(self, clip: clips.Clip, title: str) -> Timed:
        """Upload `clip` and wait until it is ready; fail unless its stream is faststart H.264."""
        return asyncio.run(self._process(clip, title))

    async def _process(self, clip: clips.Clip, title: str) -> Timed:
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            started = time.monotonic()
            video_id = await tubelet.upload_file(session, self.server.base, self.token,
                                                 clip.path, title, clip.content_type)
            accepted = time.monotonic()
            accepted_wall = time.time()
            processed = await tubelet.wait_processed(session, self.server.base, self.token,
                                                     video_id, accepted, MARKS, interval=POLL)
            head = await stream_head(session, self.server.base, video_id)
        plan, worker = self.worker_log(video_id, accepted_wall)
        timed = Timed(clip, processed, accepted - started, plan, worker)
        video = processed.video
        if video["video_codec"] != "h264" or not clips.moov_first(head):
            raise RuntimeError(f"video {video_id} is ready but its stream is not a faststart "
                               f"H.264 file: {timed.as_json()}")
        return timed

    def worker_log(self, video_id: int, accepted: float) -> tuple[str, dict[str, float]]:
        """What the worker's log says it did with the video ("remux" or "transcode"), and
        when it started the job, had the stream and had it ready, in seconds after
        `accepted` (a time.time())."""
        text = self.worker.log.read_text(errors="replace")
        found: dict[str, float] = {}
        plan = None
        for name, pattern in (("started", JOB_STARTED), ("stream", PLAN_MADE),
                              ("ready", READY)):
            matches = list(re.finditer(pattern.replace("{id}", str(video_id)), text,
                                       re.MULTILINE))
            if not matches:
                raise RuntimeError(f"the worker's log has no {name!r} line for video "
                                   f"{video_id}:\n" + procs.tail(self.worker.log))
            match = matches[-1]  # a retried job logs again
            stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            found[name] = stamp.timestamp() - accepted
            if name == "stream":
                plan = match.group(2)
        assert plan is not None
        return plan, found


async def stream_head(session: aiohttp.ClientSession, base: str, video_id: int,
                      length: int = 2**20) -> bytes:
    """The first bytes of the video's stream, as a player's first range request gets them."""
    async with session.get(f"{base}/videos/{video_id}/stream",
                           headers={"Range": f"bytes=0-{length - 1}"}) as resp:
        if resp.status != 206:
            raise RuntimeError(f"GET {resp.url} with a Range answered {resp.status}")
        return await resp.read()


def open_site(ws: Workspace, log: Log) -> Site:
    """Start the server and the worker, sign up, and time one small clip to warm them up.

    Neither is pinned: the worker's ffmpeg uses FFMPEG_THREADS threads, as deployed.
    """
    settings = processing_settings()
    database_url = ws.new_database()
    # A prefix of its own: video ids of this database would meet the main server's in Redis.
    env = {**settings, "REDIS_PREFIX": f"{ws.redis_prefix}-{LABEL}"}
    server = tubelet.start(ws, LABEL, database_url=database_url, extra_env=env)
    worker = None
    try:
        worker = tubelet.start_worker(ws, LABEL, database_url=database_url, extra_env=env)
        token = asyncio.run(_sign_in(server.base))
        site = Site(ws, server, worker, token, settings)
        started = time.monotonic()
        warm = site.process(clips.small_mp4(ws.root), "warm-up")
        log(f"  worker up: a {warm.duration:g} s warm-up clip was ready "
            f"{time.monotonic() - started:.1f} s after its upload began")
        return site
    except BaseException:
        if worker is not None:
            procs.stop(worker.proc)
        procs.stop(server.proc)
        raise


async def _sign_in(base: str) -> str:
    async with aiohttp.ClientSession() as session:
        return await tubelet.login(session, base)


def run(args: argparse.Namespace, site: Site, log: Log) -> tuple[list[Row], Timed]:
    """Both clips, `media_rounds` times over, alternating; the rows and one remuxed video."""
    h264 = site.clip("h264", args.clip_seconds)
    hevc = site.clip("hevc", args.clip_seconds)
    for kind, clip in (("h264", h264), ("hevc", hevc)):
        log(f"  p) {clip.path.name}: {clip.size / 2**20:.1f} MiB, made in "
            f"{site.making_seconds[kind]:.1f} s")
    results: dict[str, list[Timed]] = {"remux": [], "transcode": []}
    for n in range(args.media_rounds):
        for kind, clip in (("remux", h264), ("transcode", hevc)):
            timed = site.process(clip, f"bench {kind} {n + 1}")
            if timed.plan != kind:
                raise RuntimeError(f"{clip.path.name} was meant to be a {kind}, the worker "
                                   f"did a {timed.plan}")
            results[kind].append(timed)
            w = timed.worker
            log(f"  p) {kind}, round {n + 1}/{args.media_rounds}: stream after "
                f"{timed.stream_seconds:.2f} s ({timed.duration / timed.stream_seconds:.1f}x "
                f"real time), ready after {timed.total_seconds:.2f} s "
                f"({timed.duration / timed.total_seconds:.1f}x); worker log: job started "
                f"{w['started']:.2f} s, stream {w['stream']:.2f} s, ready {w['ready']:.2f} s")
    settings = site.settings
    rows = [
        _row("p-remux", "remux 1080p H.264 MP4 to faststart MP4", results["remux"],
             f">= {REMUX_TARGET:g}x", REMUX_TARGET, settings),
        _row("p-transcode",
             f"transcode 1080p HEVC .mov to H.264 ({settings['TRANSCODE_PRESET']}, "
             f"CRF {settings['TRANSCODE_CRF']})", results["transcode"], "reported", None,
             settings),
    ]
    return rows, results["remux"][-1]


def _row(key: str, what: str, runs: list[Timed], target: str, minimum: float | None,
         settings: dict[str, str]) -> Row:
    stream = statistics.median(t.duration / t.stream_seconds for t in runs)
    total = statistics.median(t.duration / t.total_seconds for t in runs)
    stream_s = statistics.median(t.stream_seconds for t in runs)
    total_s = statistics.median(t.total_seconds for t in runs)
    clip = runs[0].clip
    return Row(
        key=key, what=what, unit="x real time", tubelet=stream,
        shown=f"{stream:.1f}x; {total:.1f}x to ready",
        target=target, passed=None if minimum is None else stream >= minimum,
        note=(f"{runs[0].duration:g} s clip ({clip.size / 2**20:.1f} MiB): "
              f"stream {stream_s:.2f} s, ready {total_s:.2f} s after the upload was accepted "
              f"(poster + storyboard {total_s - stream_s:.2f} s); median of {len(runs)}, "
              f"polled every {POLL * 1000:.0f} ms; worker not pinned"),
        detail={"clip": clip.as_json(), "settings": settings,
                "runs": [t.as_json() for t in runs]},
    )
