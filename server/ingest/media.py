"""What a stored file is, and the one way a media tool runs on it.

Public API:
    sniff_container(head: bytes) -> tuple[str, str] | None
        (content type, extension) from the first SNIFF_BYTES bytes, or None.
    class MediaError(Exception)
        .reason: str   a short sentence for the video's author
        .detail: str   the tool's stderr tail, for the log only
    SOURCE_FORMATS: str
        the only demuxers ffmpeg/ffprobe may use on an upload (-format_whitelist).
    async run_tool(argv, *, time_limit: float, memory_bytes: int | None, cwd: Path | None = None,
                   env: Mapping[str, str] | None = None,
                   on_line: Callable[[bytes], None] | None = None) -> Finished
        runs argv in its own process group under an address-space and CPU limit;
        raises MediaError(TOO_SLOW) after `time_limit` seconds, having killed the group.
        Finished(returncode: int, stdout: bytes, stderr: str); stdout is empty when on_line
        consumed it. OSError when the tool cannot start (a server fault, not the file's).
    failure(finished: Finished, *, memory_bytes: int | None, reason: str) -> MediaError
        the error for a tool that exited non-zero: out of memory or CPU time, or `reason`.
    async probe_duration(path: Path, limit: float = 30.0) -> float | None
        a quick duration read for the upload handler; None when ffprobe cannot tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import os
import resource
import shutil
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

# Enough of the file to see an EBML header's DocType.
SNIFF_BYTES = 64

QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}

# The demuxers behind the containers sniff_container accepts. Anything else
# (an HLS or concat playlist dressed as a video, say) would let ffmpeg open
# other files or URLs on the upload's behalf.
SOURCE_FORMATS = "mov,mp4,matroska,webm,ogg"

TOO_SLOW = "Processing took longer than the limit"
TOO_HUNGRY = "Processing needed more memory than the limit"
# How running out of address space shows in ffmpeg's messages: a thread that cannot
# get its stack says EAGAIN, and an encoder that cannot start its threads only that it
# could not open (our encoder settings are always valid ones).
OUT_OF_MEMORY = ("Cannot allocate memory", "failed to map segment", "malloc of size",
                 "Resource temporarily unavailable", "bad_alloc",
                 "Error while opening encoder")
STDERR_TAIL = 4096
STDOUT_LIMIT = 8 * 1024 * 1024
# Lower priority than request handling when a worker shares the machine.
NICENESS = 10
_PR_SET_PDEATHSIG = 1


def sniff_container(head: bytes) -> tuple[str, str] | None:
    """(content type, file extension) judged from the first bytes, or None.

    The client's filename and Content-Type are never consulted.
    """
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"qt  ":
            return "video/quicktime", "mov"
        if brand.startswith(b"3g"):
            return "video/3gpp", "3gp"
        return "video/mp4", "mp4"
    if len(head) >= 8 and head[4:8] in QUICKTIME_ATOMS and int.from_bytes(head[:4]) >= 8:
        return "video/quicktime", "mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        window = head[:SNIFF_BYTES]
        if b"webm" in window:
            return "video/webm", "webm"
        if b"matroska" in window:
            return "video/x-matroska", "mkv"
        return None
    if head.startswith(b"OggS\x00"):
        return "video/ogg", "ogv"
    return None


class MediaError(Exception):
    """A file that cannot become a playable video; `reason` is shown to its author."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Finished:
    returncode: int
    stdout: bytes
    stderr: str


async def run_tool(argv: Sequence[str], *, time_limit: float, memory_bytes: int | None,
                   cwd: Path | None = None, env: Mapping[str, str] | None = None,
                   on_line: Callable[[bytes], None] | None = None) -> Finished:
    """Run a media tool confined: its own process group, limits, and a deadline.

    On timeout, error or cancellation of the caller the whole group is killed
    before this returns, so no decoder outlives the job that started it.
    """
    confine = partial(_confine, _address_space(memory_bytes), _cpu_seconds(time_limit))
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=cwd, env=env, start_new_session=True,
        preexec_fn=confine,
    )
    assert proc.stdout is not None and proc.stderr is not None
    stdout = bytearray()
    tail = bytearray()
    overflow = False

    async def read_stdout(stream: asyncio.StreamReader) -> None:
        nonlocal overflow
        if on_line is not None:
            async for line in stream:
                on_line(line)
            return
        while chunk := await stream.read(65536):
            if not overflow:
                stdout.extend(chunk)
                overflow = len(stdout) > STDOUT_LIMIT
                if overflow:
                    stdout.clear()
                    _kill_group(proc)

    async def read_stderr(stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(4096):
            tail.extend(chunk)
            del tail[:-STDERR_TAIL]

    try:
        async with asyncio.timeout(time_limit):
            await asyncio.gather(read_stdout(proc.stdout), read_stderr(proc.stderr))
            returncode = await proc.wait()
    except TimeoutError:
        raise MediaError(TOO_SLOW, _text(tail)) from None
    finally:
        if proc.returncode is None:
            _kill_group(proc)
            await proc.wait()
    if overflow:
        raise MediaError("The file's description is too large to read")
    return Finished(returncode, bytes(stdout), _text(tail))


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # Called only while the leader is, or was a moment ago, alive: the system does not
    # hand its group id to anyone else while the group has a member.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def failure(finished: Finished, *, memory_bytes: int | None, reason: str) -> MediaError:
    """The error for a tool that exited non-zero: a limit it ran into, or `reason`.

    A crash with no word of memory is the file's doing: `reason`.
    """
    if finished.returncode == -signal.SIGXCPU:
        return MediaError(TOO_SLOW, finished.stderr)
    hungry = memory_bytes is not None and any(
        sign in finished.stderr for sign in OUT_OF_MEMORY)
    return MediaError(TOO_HUNGRY if hungry else reason, finished.stderr)


def parse_duration(ffprobe_json: bytes) -> float | None:
    try:
        value = float(json.loads(ffprobe_json)["format"]["duration"])
    except (ValueError, KeyError, TypeError):
        return None
    return value if math.isfinite(value) and value > 0 else None


async def probe_duration(path: Path, limit: float = 30.0) -> float | None:
    """Duration in seconds by ffprobe, or None when ffprobe is absent or cannot tell."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None
    try:
        done = await run_tool(
            [ffprobe, "-v", "error", "-format_whitelist", SOURCE_FORMATS,
             "-show_entries", "format=duration", "-of", "json", f"file:{path}"],
            time_limit=limit, memory_bytes=None,
        )
    except MediaError:
        return None
    return parse_duration(done.stdout) if done.returncode == 0 else None


# --- the child side -------------------------------------------------------------

def _address_space(memory_bytes: int | None) -> int | None:
    if memory_bytes is None:
        return None
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    return memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)


def _cpu_seconds(timeout: float) -> int | None:
    """A CPU-time ceiling that only a tool orphaned past its deadline can reach."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    limit = math.ceil(timeout * (os.cpu_count() or 1)) + 60
    return limit if hard == resource.RLIM_INFINITY or limit < hard else None


def _parent_death_signal() -> Callable[[], None]:
    if not sys.platform.startswith("linux"):
        return lambda: None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return lambda: None
    # Resolved here, in the parent: the child runs as little as it can before exec.
    return lambda: prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


_die_with_parent = _parent_death_signal()


def _confine(memory_bytes: int | None, cpu_seconds: int | None) -> None:
    """Runs in the child between fork and exec."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    if cpu_seconds is not None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    os.nice(NICENESS)
    # A worker killed outright takes its ffmpeg with it.
    _die_with_parent()


def _text(raw: bytearray) -> str:
    return raw.decode("utf-8", "replace").strip()
