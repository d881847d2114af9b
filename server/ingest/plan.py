"""Pure decisions about an upload: remux or transcode, to what size, and the storyboard grid.

Public API:
    plan_processing(probe: Probe, config: Config) -> Plan
        REMUX when the streams already play in every mainstream browser (H.264 yuv420p
        8-bit + AAC or no audio, from MP4/MOV/Matroska, into a faststart MP4; VP8/VP9/AV1
        + Opus/Vorbis or no audio into WebM), the picture is upright, progressive and
        fits the size box; the video is then copied, and only an unsuitable audio track
        is re-encoded. TRANSCODE otherwise: H.264 yuv420p + AAC (copied when it was AAC,
        else 128k stereo; or no audio) in a faststart MP4, scaled to fit the box
        (config.transcode_max_height lines, 16:9, turned for portrait), x264 at
        config.transcode_crf/transcode_preset, at most 60 frames a second, a keyframe
        every 2 seconds.
    Plan (frozen): action (Action.REMUX | Action.TRANSCODE), args (ffmpeg output options,
        placed between "-i source" and the output path), extension ("mp4" | "webm"),
        content_type, width, height (output picture), video_codec, audio_codec (output),
        duration (of the source), reasons (why a transcode was needed, for the log);
        property copies_video.
    fit(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]
        the size scaled down (never up) to fit the box, both sides even.
    output_size(display: tuple[int, int], max_height: int) -> tuple[int, int]
        fit into a 16:9 box max_height lines high, turned to match the picture.
    poster_size(display: tuple[int, int], longest: int = 1280) -> tuple[int, int]
    storyboard_layout(duration: float, display: tuple[int, int], *, tile_size: int = 160,
                      max_tiles: int = 100, max_columns: int = 10) -> Storyboard
        Storyboard (frozen): interval, count, columns, rows, tile_width, tile_height,
        duration; sprite_size; cues() -> list[Cue]; vtt(sprite_url) -> str;
        video_filter() -> str (the ffmpeg -vf that builds the sprite in one pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from server.core.config import Config

from .probe import Probe

MP4_FAMILY = "mov"  # ffprobe's format_name for MP4, MOV and 3GP: "mov,mp4,m4a,3gp,3g2,mj2"
MATROSKA_FAMILY = "matroska"  # "matroska,webm"
EIGHT_BIT_420 = frozenset({"yuv420p", "yuvj420p"})
WEBM_VIDEO = {"vp8": EIGHT_BIT_420, "vp9": EIGHT_BIT_420,
              "av1": EIGHT_BIT_420 | {"yuv420p10le"}}
WEBM_AUDIO = frozenset({"opus", "vorbis"})
NICE_INTERVALS = (1, 2, 3, 4, 5, 6, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300, 600,
                  900, 1200, 1800, 3600)
AUDIO_BITRATE = "128k"
MAX_FPS = 60
# A keyframe every few seconds keeps seeking quick in the player.
KEYFRAME_SECONDS = 2
# Every output drops the upload's global tags (a phone's GPS position among them).
NO_METADATA = ("-map_metadata", "-1", "-map_chapters", "-1")


class Action(StrEnum):
    REMUX = "remux"
    TRANSCODE = "transcode"


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    args: tuple[str, ...]
    extension: str
    content_type: str
    width: int
    height: int
    video_codec: str
    audio_codec: str | None
    duration: float
    reasons: tuple[str, ...] = ()

    @property
    def copies_video(self) -> bool:
        return self.action is Action.REMUX


def plan_processing(probe: Probe, config: Config) -> Plan:
    target = _copy_target(probe)
    reasons = _transcode_reasons(probe, config.transcode_max_height, target)
    if target is not None and not reasons:
        return _remux(probe, target)
    return _transcode(probe, config, reasons)


def _copy_target(probe: Probe) -> str | None:
    """The container the video stream could be copied into, or None."""
    family = probe.container.split(",")
    if MP4_FAMILY not in family and MATROSKA_FAMILY not in family:
        return None
    if probe.video_codec == "h264" and probe.pix_fmt in EIGHT_BIT_420:
        return "mp4"
    if probe.pix_fmt in WEBM_VIDEO.get(probe.video_codec, frozenset()):
        return "webm"
    return None


def _transcode_reasons(probe: Probe, max_height: int, target: str | None) -> tuple[str, ...]:
    reasons = []
    if target is None:
        reasons.append(f"{probe.video_codec} {probe.pix_fmt or '?'} in {probe.container}")
    if probe.rotation:
        # Browsers disagree about honouring rotation metadata; upright pixels play everywhere.
        reasons.append(f"rotated {probe.rotation} degrees")
    if probe.interlaced:
        reasons.append("interlaced")
    display = probe.display_size
    if output_size(display, max_height) != _even(display):
        reasons.append(f"{display[0]}x{display[1]} is larger than {max_height} lines")
    return tuple(reasons)


def _remux(probe: Probe, target: str) -> Plan:
    display = probe.display_size
    audio: list[str] = []
    audio_codec = probe.audio_codec
    if probe.audio_codec is not None:
        safe = (probe.audio_codec == "aac") if target == "mp4" else (
            probe.audio_codec in WEBM_AUDIO)
        if safe:
            audio = ["-map", f"0:{probe.audio_index}", "-c:a", "copy"]
        else:
            audio_codec = "aac" if target == "mp4" else "opus"
            encoder = "aac" if target == "mp4" else "libopus"
            audio = ["-map", f"0:{probe.audio_index}", "-c:a", encoder,
                     "-b:a", AUDIO_BITRATE, "-ac", "2"]
    if target == "mp4":
        container = ["-movflags", "+faststart", "-f", "mp4"]
    else:
        container = ["-cues_to_front", "1", "-f", "webm"]
    args = ["-map", f"0:{probe.video_index}", "-c:v", "copy", *audio, *NO_METADATA,
            *container]
    return Plan(
        action=Action.REMUX, args=tuple(args), extension=target,
        content_type=f"video/{target}", width=display[0], height=display[1],
        video_codec=probe.video_codec, audio_codec=audio_codec, duration=probe.duration,
    )


def _transcode(probe: Probe, config: Config, reasons: tuple[str, ...]) -> Plan:
    width, height = output_size(probe.display_size, config.transcode_max_height)
    # ffmpeg turns rotated pictures upright before these filters and then writes no
    # rotation, so the size here is the displayed one.
    filters = ["yadif=deint=interlaced"] if probe.interlaced else []
    filters += [f"scale={width}:{height}", "setsar=1", "format=yuv420p"]
    audio: list[str] = []
    if probe.audio_codec == "aac":
        audio = ["-map", f"0:{probe.audio_index}", "-c:a", "copy"]
    elif probe.audio_codec is not None:
        audio = ["-map", f"0:{probe.audio_index}", "-c:a", "aac",
                 "-b:a", AUDIO_BITRATE, "-ac", "2"]
    args = [
        "-map", f"0:{probe.video_index}", *audio,
        "-vf", ",".join(filters),
        "-c:v", "libx264", "-preset", config.transcode_preset,
        "-crf", str(config.transcode_crf), "-profile:v", "high", "-pix_fmt", "yuv420p",
        "-fpsmax", str(MAX_FPS), "-force_key_frames", f"expr:gte(t,n_forced*{KEYFRAME_SECONDS})",
        *NO_METADATA, "-max_muxing_queue_size", "1024",
        "-movflags", "+faststart", "-f", "mp4",
    ]
    return Plan(
        action=Action.TRANSCODE, args=tuple(args), extension="mp4", content_type="video/mp4",
        width=width, height=height, video_codec="h264",
        audio_codec="aac" if probe.audio_codec is not None else None,
        duration=probe.duration, reasons=reasons,
    )


# --- sizes ---------------------------------------------------------------------------

def fit(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    scale = min(1.0, box[0] / width, box[1] / height)
    return _even((width * scale, height * scale))


def output_size(display: tuple[int, int], max_height: int) -> tuple[int, int]:
    """Fit a 16:9 box `max_height` lines high, turned upright for a portrait picture.

    So a 1080x1920 phone clip stays 1080p, as 1920x1080 does.
    """
    long_side = max_height * 16 / 9
    width, height = display
    box = (long_side, max_height) if width >= height else (max_height, long_side)
    scale = min(1.0, box[0] / width, box[1] / height)
    return _even((width * scale, height * scale))


def poster_size(display: tuple[int, int], longest: int = 1280) -> tuple[int, int]:
    return fit(display, (longest, longest))


def _even(size: tuple[float, float]) -> tuple[int, int]:
    """H.264 in 4:2:0 needs even sides."""
    width, height = size
    # Down, so a fitted picture never outgrows its box; the epsilon absorbs float error.
    return max(2, math.floor(width / 2 + 1e-6) * 2), max(2, math.floor(height / 2 + 1e-6) * 2)


# --- the storyboard ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Cue:
    start_ms: int
    end_ms: int
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class Storyboard:
    duration: float
    interval: int  # seconds between frames
    count: int  # frames, one per cue
    columns: int
    rows: int
    tile_width: int
    tile_height: int

    @property
    def sprite_size(self) -> tuple[int, int]:
        return self.columns * self.tile_width, self.rows * self.tile_height

    def cues(self) -> list[Cue]:
        """Back to back from 0, the last ending at the duration (rounded up to the ms)."""
        end = math.ceil(round(self.duration * 1000, 3))
        step = self.interval * 1000
        return [
            Cue(start_ms=i * step, end_ms=end if i == self.count - 1 else (i + 1) * step,
                x=(i % self.columns) * self.tile_width,
                y=(i // self.columns) * self.tile_height)
            for i in range(self.count)
        ]

    def vtt(self, sprite_url: str) -> str:
        lines = ["WEBVTT", ""]
        for cue in self.cues():
            lines += [
                f"{_timestamp(cue.start_ms)} --> {_timestamp(cue.end_ms)}",
                f"{sprite_url}#xywh={cue.x},{cue.y},{self.tile_width},{self.tile_height}",
                "",
            ]
        return "\n".join(lines)

    def video_filter(self) -> str:
        """One pass: a frame per interval, then the grid; run it for one output frame.

        The last picture is held for ever (the first full grid ends the run), so
        every cue has a frame even when the sound outlasts the picture.
        """
        return ",".join([
            "setpts=PTS-STARTPTS",
            "tpad=stop_mode=clone:stop=-1",
            f"fps=1/{self.interval}",
            f"scale={self.tile_width}:{self.tile_height}",
            "setsar=1",
            f"tile={self.columns}x{self.rows}",
        ])


def storyboard_layout(duration: float, display: tuple[int, int], *, tile_size: int = 160,
                      max_tiles: int = 100, max_columns: int = 10) -> Storyboard:
    """Frames at a round interval, at most `max_tiles`, each fitting tile_size square."""
    interval = storyboard_interval(duration, max_tiles)
    # A last frame under a millisecond long would be a cue no player can show.
    count = max(1, math.ceil(duration / interval - 0.001))
    columns = min(count, max_columns)
    tile_width, tile_height = fit(display, (tile_size, tile_size))
    return Storyboard(duration=duration, interval=interval, count=count, columns=columns,
                      rows=math.ceil(count / columns), tile_width=tile_width,
                      tile_height=tile_height)


def storyboard_interval(duration: float, max_tiles: int = 100) -> int:
    wanted = duration / max_tiles
    for interval in NICE_INTERVALS:
        if interval >= wanted:
            return interval
    return math.ceil(wanted / 3600) * 3600


def _timestamp(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02}:{minutes:02}:{seconds:02}.{millis:03}"
