"""The clips rows p and f upload, made by ffmpeg once per run from its test sources.

Both are 1080p at 30 frames a second with a keyframe every second and a 48 kHz
sine tone, laid out the way a camera writes them: the `moov` index after the
media. One is H.264 + AAC in MP4 (browser-safe: the worker remuxes it), the
other H.265 + AAC in a QuickTime .mov, as a phone records (the worker
transcodes it). They are encoded with `-preset ultrafast` so that making them
stays cheap; testsrc2 is smoother than camera footage, so they are smaller
than a phone's files of the same length and decode faster.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WIDTH, HEIGHT, FPS = 1920, 1080, 30
SOURCE = f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}"
TONE = "sine=frequency=440:sample_rate=48000"
GOP = ("-g", str(FPS), "-keyint_min", str(FPS))
AAC = ("-c:a", "aac", "-b:a", "128k")


@dataclass(frozen=True)
class Clip:
    path: Path
    content_type: str
    seconds: float  # as made; the server's probe gives the duration it reports
    describe: str

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def as_json(self) -> dict[str, Any]:
        return {"file": self.path.name, "what": self.describe, "seconds": self.seconds,
                "bytes": self.size, "mbit_per_s": round(self.size * 8 / self.seconds / 1e6, 2)}


def ffmpeg_binary() -> str:
    found = shutil.which("ffmpeg")
    if found is None:
        raise RuntimeError("ffmpeg is not installed: rows p and f need it (apt-get install "
                           "ffmpeg)")
    return found


def h264_mp4(directory: Path, seconds: float) -> Clip:
    """1080p30 H.264 (yuv420p) + AAC in MP4, moov at the end (ffmpeg's default)."""
    out = directory / f"h264-1080p-{seconds:g}s.mp4"
    _make(out, seconds, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
          *GOP, *AAC)
    return Clip(out, "video/mp4", seconds, "1080p30 H.264 + AAC MP4, moov at the end")


def hevc_mov(directory: Path, seconds: float) -> Clip:
    """1080p30 H.265 (yuv420p, tagged hvc1 as Apple's are) + AAC in a .mov, moov at the end."""
    out = directory / f"hevc-1080p-{seconds:g}s.mov"
    _make(out, seconds, "-c:v", "libx265", "-preset", "ultrafast",
          "-x265-params", "log-level=error", "-pix_fmt", "yuv420p", "-tag:v", "hvc1",
          *GOP, *AAC)
    return Clip(out, "video/quicktime", seconds, "1080p30 H.265 + AAC .mov, moov at the end")


def small_mp4(directory: Path, seconds: float = 2.0) -> Clip:
    """A small H.264 clip that warms the worker up before anything is timed."""
    out = directory / "warmup.mp4"
    _make(out, seconds, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
          "-vf", "scale=640:360", *AAC)
    return Clip(out, "video/mp4", seconds, "360p H.264 + AAC MP4")


def moov_first(head: bytes) -> bool:
    """Whether, in a file starting with `head`, the top-level `moov` box comes before `mdat`
    (faststart): only the box headers that fall inside `head` are read."""
    at = 0
    while at + 8 <= len(head):
        size, kind = int.from_bytes(head[at:at + 4], "big"), head[at + 4:at + 8]
        if kind == b"moov":
            return True
        if kind == b"mdat" or size == 0:
            return False
        if size == 1:
            if at + 16 > len(head):
                return False
            size = int.from_bytes(head[at + 8:at + 16], "big")
        if size < 8:
            return False
        at += size
    return False


def head_of(path: Path, length: int = 2**20) -> bytes:
    with open(path, "rb") as src:
        return src.read(length)


def _make(out: Path, seconds: float, *codec: str) -> None:
    subprocess.run(
        [ffmpeg_binary(), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", SOURCE,
         "-f", "lavfi", "-i", TONE, "-t", f"{seconds:g}", *codec, "-shortest", str(out)],
        check=True)
