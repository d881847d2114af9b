"""ffmpeg runs for a processing job: the playable file, the poster, the storyboard.

Public API:
    async produce(source: Path, plan: Plan, out: Path, config: Config,
                  progress: Progress | None = None) -> Probe
        writes the plan's output to `out` and returns the probe of what was written;
        MediaError when ffmpeg fails or the output is much shorter than the source.
    async poster(source: Path, probe: Probe, out: Path, config: Config) -> None
        a JPEG (quality 3, longest side at most 1280) chosen by the thumbnail filter from
        about 10 % in; darker than DARK, it tries 30 %, 50 %, 70 % and keeps the brightest.
    async storyboard(source: Path, probe: Probe, out: Path, config: Config, *,
                     sprite_url: str = "storyboard.jpg", tile_size: int = 160) -> str
        one sprite JPEG made in one pass, and the WebVTT text whose cues cover 0 to the
        duration with no gap, each `{sprite_url}#xywh=x,y,w,h` (see plan.storyboard_layout).
    async run(args: Sequence[str], *, time_limit: float, threads: int,
              memory_bytes: int | None, cwd: Path, progress: Progress | None = None,
              duration: float | None = None) -> None
        ffmpeg -nostdin -hide_banner -v error -y, `-threads` before every input and the
        output (args end with the output path), confined by media.run_tool; progress gets
        out_time/duration in 0..1. MediaError("Processing took longer than the limit"),
        ("Processing needed more memory than the limit") or ("The file could not be
        decoded"); the stderr tail goes to the log and MediaError.detail.
    time_limit(config: Config, duration: float) -> float
        FFMPEG_TIMEOUT + FFMPEG_TIMEOUT_PER_SECOND * duration: produce and storyboard
        get this; ffprobe and each poster attempt get FFMPEG_TIMEOUT.
    async brightness(image: Path, config: Config) -> float
        mean luma of a picture, 0-255.
    Progress = Callable[[float], Awaitable[None]]; reports never block ffmpeg (only the
        latest waits), and one that raises is logged and ends reporting, not the run.

Pass the probe of the produced file (not the upload) to poster and storyboard: it is
what the player shows. Temporary files stay in out's directory, which is each run's
working directory and TMPDIR.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from server.core.config import Config

from .media import SOURCE_FORMATS, MediaError, failure, run_tool
from .plan import Plan, poster_size, storyboard_layout
from .probe import Probe, clock, probe_file

logger = logging.getLogger(__name__)

Progress = Callable[[float], Awaitable[None]]

UNDECODABLE = "The file could not be decoded"
# Mean luma (0-255) under which a poster is taken for a black frame.
DARK = 24
POSTER_POINTS = (0.1, 0.3, 0.5, 0.7)
# Frames the thumbnail filter picks the most typical one from.
POSTER_FRAMES = 40
# Keyframes alone are close enough for frames this far apart, and far quicker to decode.
KEYFRAMES_ONLY_FROM = 10
# Output this much shorter than the source means the source ended early.
SHORT_OUTPUT = 0.9


def time_limit(config: Config, duration: float) -> float:
    return config.ffmpeg_timeout + config.ffmpeg_timeout_per_second * duration


async def produce(source: Path, plan: Plan, out: Path, config: Config,
                  progress: Progress | None = None) -> Probe:
    await run(
        [*_source(source), *plan.args, f"file:{out}"],
        time_limit=time_limit(config, plan.duration), threads=config.ffmpeg_threads,
        memory_bytes=config.ffmpeg_memory_bytes, cwd=out.parent, progress=progress,
        duration=plan.duration,
    )
    made = await probe_file(out, time_limit=config.ffmpeg_timeout,
                            memory_bytes=config.ffmpeg_memory_bytes)
    if made.duration < plan.duration * SHORT_OUTPUT - 1:
        raise MediaError(f"The file ends early: only {clock(made.duration)} of "
                         f"{clock(plan.duration)} could be read")
    return made


async def poster(source: Path, probe: Probe, out: Path, config: Config) -> None:
    width, height = poster_size(probe.display_size)
    taken: list[tuple[float, Path]] = []
    candidates = [out.with_name(f".{out.stem}-{n}.jpg") for n in range(len(POSTER_POINTS))]
    try:
        for point, candidate in zip(POSTER_POINTS, candidates, strict=True):
            await run(
                ["-ss", f"{probe.duration * point:.3f}", *_source(source), "-an", "-sn",
                 "-dn", "-vf", f"scale={width}:{height},setsar=1,thumbnail={POSTER_FRAMES}",
                 "-frames:v", "1", "-q:v", "3", "-update", "1", "-f", "image2",
                 f"file:{candidate}"],
                time_limit=config.ffmpeg_timeout, threads=config.ffmpeg_threads,
                memory_bytes=config.ffmpeg_memory_bytes, cwd=out.parent,
            )
            if not await asyncio.to_thread(_nonempty, candidate):
                continue  # the seek went past the last frame
            light = await brightness(candidate, config)
            taken.append((light, candidate))
            if light >= DARK:
                break
        if not taken:
            raise MediaError("No picture could be taken from the video")
        _, best = max(taken)
        await asyncio.to_thread(best.replace, out)
    finally:
        for candidate in candidates:
            await asyncio.to_thread(candidate.unlink, missing_ok=True)


async def brightness(image: Path, config: Config) -> float:
    """Mean luma of a picture, 0-255."""
    done = await run_tool(
        [_ffmpeg(), "-nostdin", "-v", "error", "-i", f"file:{image}", "-vf",
         "scale=16:16,format=gray", "-f", "rawvideo", "pipe:1"],
        time_limit=config.ffmpeg_timeout, memory_bytes=config.ffmpeg_memory_bytes,
        cwd=image.parent,
    )
    if done.returncode != 0 or not done.stdout:
        raise failure(done, memory_bytes=config.ffmpeg_memory_bytes, reason=UNDECODABLE)
    return sum(done.stdout) / len(done.stdout)


async def storyboard(source: Path, probe: Probe, out: Path, config: Config, *,
                     sprite_url: str = "storyboard.jpg", tile_size: int = 160) -> str:
    layout = storyboard_layout(probe.duration, probe.display_size, tile_size=tile_size)
    skip = ["-skip_frame", "nokey"] if layout.interval >= KEYFRAMES_ONLY_FROM else []
    await run(
        [*skip, *_source(source), "-an", "-sn", "-dn", "-vf", layout.video_filter(),
         "-frames:v", "1", "-q:v", "4", "-update", "1", "-f", "image2", f"file:{out}"],
        time_limit=time_limit(config, probe.duration), threads=config.ffmpeg_threads,
        memory_bytes=config.ffmpeg_memory_bytes, cwd=out.parent,
    )
    if not await asyncio.to_thread(_nonempty, out):
        raise MediaError("No storyboard could be made from the video")
    return layout.vtt(sprite_url)


async def run(args: Sequence[str], *, time_limit: float, threads: int,
              memory_bytes: int | None, cwd: Path, progress: Progress | None = None,
              duration: float | None = None) -> None:
    argv = [_ffmpeg(), "-nostdin", "-hide_banner", "-v", "error", "-y",
            "-filter_threads", str(threads), "-filter_complex_threads", str(threads)]
    reporter = _Reporter(progress, duration) if progress is not None else None
    if reporter is not None:
        argv += ["-progress", "pipe:1", "-nostats"]
    argv += _with_threads(args, threads)
    env = {**os.environ, "TMPDIR": str(cwd)}
    try:
        done = await run_tool(argv, time_limit=time_limit, memory_bytes=memory_bytes, cwd=cwd,
                              env=env, on_line=reporter.line if reporter else None)
        if done.returncode != 0:
            raise failure(done, memory_bytes=memory_bytes, reason=UNDECODABLE)
    except MediaError as error:
        logger.warning("ffmpeg failed: %s; %s", error.reason, error.detail[-1000:] or "-")
        raise
    finally:
        if reporter is not None:
            await reporter.close()


def _with_threads(args: Sequence[str], threads: int) -> list[str]:
    """`-threads` before each input (decoding) and before the output (encoding)."""
    limit = ["-threads", str(threads)]
    out: list[str] = []
    for arg in args[:-1]:
        if arg == "-i":
            out += limit
        out.append(arg)
    return [*out, *limit, *args[-1:]]


def _source(path: Path) -> list[str]:
    return ["-format_whitelist", SOURCE_FORMATS, "-protocol_whitelist", "file",
            "-i", f"file:{path}"]


def _ffmpeg() -> str:
    return shutil.which("ffmpeg") or "ffmpeg"


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


class _Reporter:
    """Feeds ffmpeg's -progress lines to a callback, latest value first, never blocking."""

    def __init__(self, progress: Progress, duration: float | None) -> None:
        self._progress = progress
        self._duration = duration
        self._latest = 0.0
        self._wake = asyncio.Event()
        self._closed = False
        self._task = asyncio.create_task(self._deliver())

    def line(self, raw: bytes) -> None:
        key, _, value = raw.decode("ascii", "replace").strip().partition("=")
        if key != "out_time_us" or not self._duration:
            return
        with contextlib.suppress(ValueError):
            fraction = min(1.0, max(0.0, int(value) / (self._duration * 1e6)))
            if fraction > self._latest:
                self._latest = fraction
                self._wake.set()

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        await self._task

    async def _deliver(self) -> None:
        reported = -1.0
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            if self._latest == reported:
                continue
            reported = self._latest
            try:
                await self._progress(reported)
            except Exception:
                # A progress display never fails the work it describes.
                logger.exception("progress report failed; no more reports for this run")
                return
