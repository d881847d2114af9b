"""Small real clips made once per session by ffmpeg, and ways to look inside media files.

Import the fixtures a test module uses, e.g.
`from .media_clips import hevc_mov, h264_mp4  # noqa: F401`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import fake_mp4, make_clip, require_tool

TESTSRC = "testsrc=size={size}:rate=25"
X264 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")


@pytest.fixture(scope="session")
def h264_mp4(media_dir: Path) -> Path:
    """4 s of H.264 + AAC, 320x240, with its moov index at the end."""
    return make_clip(
        media_dir, "media-h264.mp4", "-f", "lavfi", "-i", TESTSRC.format(size="320x240"),
        "-f", "lavfi", "-i", "sine=frequency=440", "-t", "4", *X264, "-c:a", "aac",
        "-shortest")


@pytest.fixture(scope="session")
def hevc_mov(media_dir: Path) -> Path:
    """4 s of H.265 + AAC, 640x360, in a phone-style .mov with moov at the end."""
    return make_clip(
        media_dir, "media-hevc.mov", "-f", "lavfi", "-i", TESTSRC.format(size="640x360"),
        "-f", "lavfi", "-i", "sine=frequency=440", "-t", "4", "-c:v", "libx265",
        "-preset", "ultrafast", "-x265-params", "log-level=error", "-pix_fmt", "yuv420p",
        "-tag:v", "hvc1", "-c:a", "aac", "-shortest")


@pytest.fixture(scope="session")
def vp9_webm(media_dir: Path) -> Path:
    """3 s of VP9 + Opus, 320x240."""
    return make_clip(
        media_dir, "media-vp9.webm", "-f", "lavfi", "-i", TESTSRC.format(size="320x240"),
        "-f", "lavfi", "-i", "sine=frequency=440", "-t", "3", "-c:v", "libvpx-vp9",
        "-deadline", "realtime", "-cpu-used", "8", "-pix_fmt", "yuv420p", "-c:a", "libopus",
        "-shortest")


@pytest.fixture(scope="session")
def rotated_mp4(media_dir: Path, h264_mp4: Path) -> Path:
    """The H.264 clip as a phone held upright stores it: landscape pixels, turned 90°."""
    return make_clip(media_dir, "media-rotated.mp4", "-i", str(h264_mp4), "-c", "copy",
                     "-metadata:s:v:0", "rotate=90")


@pytest.fixture(scope="session")
def audio_only(media_dir: Path) -> Path:
    return make_clip(media_dir, "media-audio.m4a", "-f", "lavfi", "-i", "sine=frequency=440",
                     "-t", "2", "-c:a", "aac")


@pytest.fixture(scope="session")
def zero_length(media_dir: Path) -> Path:
    """An MP4 whose movie, track and media headers all say it lasts 0 seconds."""
    whole = make_clip(media_dir, "media-one-second.mp4", "-f", "lavfi",
                      "-i", TESTSRC.format(size="320x240"), "-t", "1", *X264,
                      "-movflags", "+faststart")
    out = media_dir / "media-zero.mp4"
    if not out.exists():
        data = bytearray(whole.read_bytes())
        index = data[: data.find(b"mdat")]
        # Offsets of the 32-bit duration in version-0 mvhd, tkhd and mdhd boxes.
        for tag, offset in ((b"mvhd", 16), (b"tkhd", 20), (b"mdhd", 16)):
            at = index.find(tag)
            while at >= 0:
                assert data[at + 4] == 0, "version 1 box"
                data[at + 4 + offset: at + 8 + offset] = bytes(4)
                at = index.find(tag, at + 4)
        out.write_bytes(data)
    return out


@pytest.fixture(scope="session")
def mjpeg_mov(media_dir: Path) -> Path:
    """2 s of motion JPEG, 320x240: a picture size easy to put over a lowered limit."""
    return make_clip(media_dir, "media-mjpeg.mov", "-f", "lavfi",
                     "-i", "testsrc=size=320x240:rate=10", "-t", "2", "-c:v", "mjpeg",
                     "-q:v", "5")


@pytest.fixture(scope="session")
def black_start_mp4(media_dir: Path) -> Path:
    """6 s of H.264 whose first half is black: where a naive poster lands."""
    return make_clip(
        media_dir, "media-black-start.mp4", "-f", "lavfi",
        "-i", "color=black:size=320x240:rate=25:duration=3",
        "-f", "lavfi", "-i", TESTSRC.format(size="320x240") + ":duration=3",
        "-filter_complex", "[0][1]concat=n=2:v=1:a=0", *X264)


@pytest.fixture(scope="session")
def truncated_mp4(media_dir: Path, h264_mp4: Path) -> Path:
    """The first 30 % of a moov-at-end MP4: an upload cut short."""
    out = media_dir / "media-truncated.mp4"
    if not out.exists():
        data = h264_mp4.read_bytes()
        out.write_bytes(data[: len(data) * 3 // 10])
    return out


@pytest.fixture(scope="session")
def half_faststart_mp4(media_dir: Path, h264_mp4: Path) -> Path:
    """The first half of a faststart MP4: a complete index over missing frames."""
    whole = make_clip(media_dir, "media-faststart.mp4", "-i", str(h264_mp4), "-c", "copy",
                      "-movflags", "+faststart")
    out = media_dir / "media-half.mp4"
    if not out.exists():
        data = whole.read_bytes()
        out.write_bytes(data[: len(data) // 2])
    return out


@pytest.fixture(scope="session")
def garbage_mp4(media_dir: Path) -> Path:
    """An MP4 header followed by noise."""
    out = media_dir / "media-garbage.mp4"
    if not out.exists():
        out.write_bytes(fake_mp4(64 * 1024, seed=7))
    return out


# --- looking inside ---------------------------------------------------------------------

def top_level_boxes(path: Path) -> list[str]:
    """The types of an MP4's top-level boxes, in file order."""
    boxes = []
    with path.open("rb") as f:
        size_total = path.stat().st_size
        offset = 0
        while offset + 8 <= size_total:
            f.seek(offset)
            header = f.read(16)
            size, kind = int.from_bytes(header[:4]), header[4:8].decode("latin-1")
            if size == 1:
                size = int.from_bytes(header[8:16])
            elif size == 0:
                size = size_total - offset
            assert size >= 8, f"broken box {kind!r} at {offset}"
            boxes.append(kind)
            offset += size
    return boxes


def ffprobe_json(path: Path) -> dict[str, Any]:
    done = subprocess.run(
        [require_tool("ffprobe"), "-v", "error", "-print_format", "json", "-show_format",
         "-show_streams", str(path)], capture_output=True, check=True)
    return json.loads(done.stdout)


def stream(path: Path, kind: str) -> dict[str, Any] | None:
    return next((s for s in ffprobe_json(path)["streams"] if s["codec_type"] == kind), None)


def mean_luma(path: Path) -> float:
    """Average brightness (0-255) of a picture's first frame."""
    done = subprocess.run(
        [require_tool("ffmpeg"), "-v", "error", "-i", str(path), "-frames:v", "1", "-vf",
         "format=gray", "-f", "rawvideo", "pipe:1"], capture_output=True, check=True)
    assert done.stdout
    return sum(done.stdout) / len(done.stdout)


def mean_luma_at(path: Path, seconds: float) -> float:
    """Average brightness of the frame a video shows at `seconds`."""
    done = subprocess.run(
        [require_tool("ffmpeg"), "-v", "error", "-ss", f"{seconds:.3f}", "-i", str(path),
         "-frames:v", "1", "-vf", "format=gray", "-f", "rawvideo", "pipe:1"],
        capture_output=True, check=True)
    assert done.stdout
    return sum(done.stdout) / len(done.stdout)


def mean_luma_of_box(path: Path, box: tuple[int, int, int, int]) -> float:
    """Average brightness of the (x, y, w, h) part of a picture."""
    x, y, w, h = box
    done = subprocess.run(
        [require_tool("ffmpeg"), "-v", "error", "-i", str(path), "-vf",
         f"crop={w}:{h}:{x}:{y},format=gray", "-f", "rawvideo", "pipe:1"],
        capture_output=True, check=True)
    assert len(done.stdout) == w * h
    return sum(done.stdout) / len(done.stdout)


def packet_hashes(path: Path, kind: str = "v") -> list[str]:
    """Hashes of a file's compressed packets: equal lists mean the stream was copied."""
    done = subprocess.run(
        [require_tool("ffmpeg"), "-v", "error", "-i", str(path), "-map", f"0:{kind}:0",
         "-c", "copy", "-f", "framemd5", "pipe:1"], capture_output=True, check=True)
    return [line.rsplit(",", 1)[-1].strip() for line in done.stdout.decode().splitlines()
            if line and not line.startswith("#")]


def processes_mentioning(token: str) -> list[int]:
    """Running processes whose command line contains `token`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if token.encode() in cmdline:
            found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    """Neither running nor a zombie nobody waited for."""
    return not Path(f"/proc/{pid}").exists()
