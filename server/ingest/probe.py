"""What ffprobe says about an upload, and whether it is a video we accept.

Public API:
    async probe(path: Path, config: Config) -> Probe
        probe_file with config's limits: time (FFMPEG_TIMEOUT), memory
        (FFMPEG_MEMORY_BYTES), MAX_VIDEO_PIXELS and MAX_VIDEO_DURATION.
    async probe_file(path: Path, *, time_limit: float, memory_bytes: int | None = None,
                     limits: InputLimits | None = None) -> Probe
        runs ffprobe (only SOURCE_FORMATS demuxers, local files only); raises MediaError
        when the file is not a readable video, and, given limits, when it exceeds them.
    read_probe(report: Mapping[str, Any]) -> Probe
        pure: ffprobe's JSON (-show_format -show_streams) to a Probe, or MediaError.
    check_limits(probe: Probe, limits: InputLimits) -> None
        pure: MediaError for a picture too large or too small, or a video too long.
    InputLimits(max_pixels: int, max_duration: float, max_side: int = 16384)
        InputLimits.from_config(config)
    Probe (frozen): container, duration, width, height (coded, before rotation),
        video_codec, video_index, pix_fmt, bit_depth, frame_rate, rotation (clockwise
        degrees, 0/90/180/270), sample_aspect, interlaced, audio_codec, audio_index;
        properties has_audio, display_size (width, height as shown: rotation and
        non-square pixels applied).
    clock(seconds: float) -> str
        "1:02:03", or "2:03" under an hour: durations in reasons.
    MediaError is server.ingest.media.MediaError, re-exported.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.core.config import Config

from .media import SOURCE_FORMATS, MediaError, failure, run_tool

__all__ = ["InputLimits", "MediaError", "Probe", "check_limits", "clock", "probe",
           "probe_file", "read_probe"]

MAX_SIDE = 16384
NOT_MEDIA = "The file is damaged or is not a video"
NO_INDEX = "The file is damaged or incomplete: the index a player needs is missing"
NO_VIDEO = "The file has no video stream"
INTERLACED_ORDERS = frozenset({"tt", "bb", "tb", "bt"})


@dataclass(frozen=True, slots=True)
class InputLimits:
    max_pixels: int
    max_duration: float
    max_side: int = MAX_SIDE

    @classmethod
    def from_config(cls, config: Config) -> InputLimits:
        return cls(max_pixels=config.max_video_pixels,
                   max_duration=config.max_video_duration)


@dataclass(frozen=True, slots=True)
class Probe:
    container: str  # ffprobe's format_name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    duration: float  # seconds, finite and positive
    width: int  # coded size, before rotation
    height: int
    video_codec: str  # "h264", "hevc", "vp9", "av1", "prores", "mpeg2video", ...
    video_index: int  # absolute stream index, for -map 0:N
    pix_fmt: str | None
    bit_depth: int | None
    frame_rate: float | None
    rotation: int  # clockwise degrees a player must turn the picture: 0, 90, 180, 270
    sample_aspect: float  # width of a pixel over its height
    interlaced: bool
    audio_codec: str | None = None
    audio_index: int | None = None

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as a viewer sees the picture."""
        width = max(1, round(self.width * self.sample_aspect))
        if self.rotation in (90, 270):
            return self.height, width
        return width, self.height


async def probe(path: Path, config: Config) -> Probe:
    return await probe_file(path, time_limit=config.ffmpeg_timeout,
                            memory_bytes=config.ffmpeg_memory_bytes,
                            limits=InputLimits.from_config(config))


async def probe_file(path: Path, *, time_limit: float, memory_bytes: int | None = None,
                     limits: InputLimits | None = None) -> Probe:
    ffprobe = shutil.which("ffprobe") or "ffprobe"
    done = await run_tool(
        [ffprobe, "-v", "error", "-format_whitelist", SOURCE_FORMATS,
         "-protocol_whitelist", "file", "-print_format", "json", "-show_format",
         "-show_streams", f"file:{path}"],
        time_limit=time_limit, memory_bytes=memory_bytes,
    )
    if done.returncode != 0:
        reason = NO_INDEX if "moov atom not found" in done.stderr else NOT_MEDIA
        raise failure(done, memory_bytes=memory_bytes, reason=reason)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        raise MediaError(NOT_MEDIA, done.stderr) from None
    if not isinstance(report, dict):
        raise MediaError(NOT_MEDIA, done.stderr)
    found = read_probe(report)
    if limits is not None:
        check_limits(found, limits)
    return found


def read_probe(report: Mapping[str, Any]) -> Probe:
    streams = [s for s in report.get("streams") or () if isinstance(s, dict)]
    fmt = report.get("format")
    fmt = fmt if isinstance(fmt, dict) else {}
    video = _pick(streams, "video")
    if video is None:
        raise MediaError(NO_VIDEO)
    codec = video.get("codec_name")
    if not isinstance(codec, str) or not codec:
        raise MediaError("The video is in a format this server cannot decode")
    width, height = _int(video.get("width")), _int(video.get("height"))
    if not width or not height or width <= 0 or height <= 0:
        raise MediaError("The size of the picture cannot be read")
    # An audio track ffmpeg cannot name, it cannot decode either: the video goes without.
    audio = _pick([s for s in streams if isinstance(s.get("codec_name"), str)
                   and s["codec_name"]], "audio")
    pix_fmt = video.get("pix_fmt") if isinstance(video.get("pix_fmt"), str) else None
    return Probe(
        container=str(fmt.get("format_name") or ""),
        duration=_duration(fmt, video),
        width=width,
        height=height,
        video_codec=codec,
        video_index=_int(video.get("index")) or 0,
        pix_fmt=pix_fmt,
        bit_depth=_bit_depth(video, pix_fmt),
        frame_rate=_rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate")),
        rotation=_rotation(video),
        sample_aspect=_aspect(video.get("sample_aspect_ratio")),
        interlaced=video.get("field_order") in INTERLACED_ORDERS,
        audio_codec=audio["codec_name"] if audio is not None else None,
        audio_index=_int(audio.get("index")) if audio is not None else None,
    )


def check_limits(probe: Probe, limits: InputLimits) -> None:
    width, height = probe.display_size
    sides = (probe.width, probe.height, width, height)
    if (max(sides) > limits.max_side or probe.width * probe.height > limits.max_pixels
            or width * height > limits.max_pixels):
        raise MediaError(
            f"The picture is too large ({probe.width}x{probe.height}); this server accepts "
            f"up to {limits.max_pixels:,} pixels and {limits.max_side} on a side")
    if min(sides) < 2:
        raise MediaError(f"The picture is too small ({probe.width}x{probe.height})")
    if probe.duration > limits.max_duration:
        raise MediaError(f"The video is too long ({clock(probe.duration)}); "
                         f"the limit is {clock(limits.max_duration)}")


def clock(seconds: float) -> str:
    """1:02:03, or 2:03 under an hour."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


# --- reading ffprobe's fields ------------------------------------------------------

def _pick(streams: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    """The stream a player would choose: the default one, else the first."""
    candidates = [
        s for s in streams
        if s.get("codec_type") == kind
        # Cover art in an audio file is a "video" stream of one picture.
        and not _flag(s, "attached_pic") and not _flag(s, "timed_thumbnails")
    ]
    for stream in candidates:
        if _flag(stream, "default"):
            return stream
    return candidates[0] if candidates else None


def _flag(stream: Mapping[str, Any], name: str) -> bool:
    disposition = stream.get("disposition")
    return isinstance(disposition, dict) and disposition.get(name) == 1


def _duration(fmt: Mapping[str, Any], video: Mapping[str, Any]) -> float:
    raw = fmt.get("duration", video.get("duration"))
    value = _float(raw)
    if value is None or not math.isfinite(value):
        raise MediaError("The length of the video cannot be read")
    if value <= 0:
        raise MediaError("The video has zero length")
    return value


def _rotation(video: Mapping[str, Any]) -> int:
    clockwise: float | None = None
    for item in video.get("side_data_list") or ():
        if isinstance(item, dict) and _float(item.get("rotation")) is not None:
            # ffprobe reports the display matrix's turn counterclockwise.
            clockwise = -(_float(item.get("rotation")) or 0.0)
            break
    if clockwise is None:
        tags = video.get("tags")
        clockwise = _float(tags.get("rotate")) if isinstance(tags, dict) else None
    if clockwise is None or not math.isfinite(clockwise):
        return 0
    return round(clockwise / 90) % 4 * 90


def _bit_depth(video: Mapping[str, Any], pix_fmt: str | None) -> int | None:
    raw = _int(video.get("bits_per_raw_sample"))
    if raw:
        return raw
    if pix_fmt is None:
        return None
    match = re.search(r"(\d+)(le|be)$", pix_fmt)
    return int(match.group(1)) if match else 8


def _aspect(raw: object) -> float:
    ratio = _rate(raw, separator=":")
    # Absent, unknown (0:1) or absurd: treat the pixels as square.
    return ratio if ratio is not None and 0.1 <= ratio <= 10 else 1.0


def _rate(raw: object, separator: str = "/") -> float | None:
    if not isinstance(raw, str) or separator not in raw:
        return None
    num, _, den = raw.partition(separator)
    top, bottom = _float(num), _float(den)
    if top is None or not bottom or top <= 0:
        return None
    value = top / bottom
    return value if math.isfinite(value) and value > 0 else None


def _float(raw: object) -> float | None:
    if isinstance(raw, bool) or raw is None:
        return None
    try:
        return float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _int(raw: object) -> int | None:
    value = _float(raw)
    return int(value) if value is not None and math.isfinite(value) else None
