"""Pure media decisions: reading ffprobe's report, limits, remux or transcode, storyboards."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest

from server.core.config import Config, ConfigError
from server.ingest.media import MediaError
from server.ingest.plan import (
    Action,
    output_size,
    plan_processing,
    poster_size,
    storyboard_interval,
    storyboard_layout,
)
from server.ingest.probe import InputLimits, Probe, check_limits, clock, read_probe

MP4 = "mov,mp4,m4a,3gp,3g2,mj2"
MKV = "matroska,webm"


def video(**fields: Any) -> Probe:
    base = Probe(container=MP4, duration=60.0, width=1280, height=720, video_codec="h264",
                 video_index=0, pix_fmt="yuv420p", bit_depth=8, frame_rate=30.0, rotation=0,
                 sample_aspect=1.0, interlaced=False, audio_codec="aac", audio_index=1)
    return replace(base, **fields)


def report(*streams: dict[str, Any], duration: str | None = "10.5",
           format_name: str = MP4) -> dict[str, Any]:
    fmt: dict[str, Any] = {"format_name": format_name}
    if duration is not None:
        fmt["duration"] = duration
    return {"streams": list(streams), "format": fmt}


def vstream(index: int = 0, **extra: Any) -> dict[str, Any]:
    return {"index": index, "codec_type": "video", "codec_name": "h264", "width": 1920,
            "height": 1080, "pix_fmt": "yuv420p", "avg_frame_rate": "30000/1001",
            "sample_aspect_ratio": "1:1", "field_order": "progressive", **extra}


def astream(index: int = 1, codec: str = "aac", **extra: Any) -> dict[str, Any]:
    return {"index": index, "codec_type": "audio", "codec_name": codec, **extra}


# --- reading ffprobe's report ------------------------------------------------------

def test_a_plain_report_reads_every_field():
    probe = read_probe(report(vstream(), astream()))
    assert probe.container == MP4 and probe.duration == 10.5
    assert (probe.width, probe.height, probe.display_size) == (1920, 1080, (1920, 1080))
    assert (probe.video_codec, probe.video_index, probe.pix_fmt) == ("h264", 0, "yuv420p")
    assert probe.frame_rate == pytest.approx(29.97, abs=0.01)
    assert (probe.bit_depth, probe.rotation, probe.interlaced) == (8, 0, False)
    assert (probe.audio_codec, probe.audio_index, probe.has_audio) == ("aac", 1, True)


@pytest.mark.parametrize("stream_extra, rotation, display", [
    # An iPhone portrait clip: the display matrix turns -90 (counterclockwise).
    ({"side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}]}, 90,
     (1080, 1920)),
    ({"side_data_list": [{"side_data_type": "Display Matrix", "rotation": 90}]}, 270,
     (1080, 1920)),
    ({"side_data_list": [{"side_data_type": "Display Matrix", "rotation": 180}]}, 180,
     (1920, 1080)),
    ({"tags": {"rotate": "90"}}, 90, (1080, 1920)),
    ({"tags": {"rotate": "-270"}}, 90, (1080, 1920)),
    ({"side_data_list": [{"side_data_type": "Display Matrix", "rotation": -89.98}]}, 90,
     (1080, 1920)),
    ({"tags": {"rotate": "sideways"}}, 0, (1920, 1080)),
])
def test_rotation_is_read_from_the_display_matrix_or_the_old_tag(stream_extra, rotation,
                                                                  display):
    probe = read_probe(report(vstream(**stream_extra)))
    assert probe.rotation == rotation
    assert probe.display_size == display
    assert (probe.width, probe.height) == (1920, 1080)


def test_non_square_pixels_widen_the_displayed_picture():
    dvd = read_probe(report(vstream(width=720, height=480, sample_aspect_ratio="32:27",
                                    codec_name="mpeg2video", field_order="tt")))
    assert dvd.display_size == (853, 480)
    assert dvd.interlaced


@pytest.mark.parametrize("sar", ["0:1", "N/A", "1000:1", "1:0"])
def test_an_unknown_or_absurd_pixel_shape_counts_as_square(sar):
    assert read_probe(report(vstream(sample_aspect_ratio=sar))).display_size == (1920, 1080)


@pytest.mark.parametrize("pix_fmt, raw, depth", [
    ("yuv420p10le", None, 10), ("yuv422p12be", None, 12), ("yuv420p", None, 8),
    ("yuv420p", "8", 8), ("yuv420p10le", "10", 10),
])
def test_bit_depth(pix_fmt, raw, depth):
    extra = {"pix_fmt": pix_fmt} | ({"bits_per_raw_sample": raw} if raw else {})
    assert read_probe(report(vstream(**extra))).bit_depth == depth


def test_cover_art_is_not_a_video_stream():
    art = vstream(codec_name="mjpeg", disposition={"attached_pic": 1, "default": 0})
    with pytest.raises(MediaError) as caught:
        read_probe(report(astream(index=0, codec="mp3"), {**art, "index": 1}))
    assert caught.value.reason == "The file has no video stream"


def test_the_default_streams_are_chosen_and_mapped_by_index():
    probe = read_probe(report(
        {**vstream(index=0), "disposition": {"attached_pic": 1}},
        vstream(index=1, codec_name="hevc"),
        astream(index=2, codec="ac3"),
        astream(index=3, codec="aac", disposition={"default": 1}),
    ))
    assert (probe.video_codec, probe.video_index) == ("hevc", 1)
    assert (probe.audio_codec, probe.audio_index) == ("aac", 3)


def test_an_audio_stream_of_an_unknown_codec_counts_as_no_audio():
    probe = read_probe(report(vstream(), {"index": 1, "codec_type": "audio"}))
    assert not probe.has_audio
    assert (probe.audio_codec, probe.audio_index) == (None, None)
    assert plan_processing(probe, Config()).audio_codec is None
    other = read_probe(report(vstream(), {"index": 1, "codec_type": "audio"}, astream(2)))
    assert (other.audio_codec, other.audio_index) == ("aac", 2)


@pytest.mark.parametrize("streams, duration, reason", [
    ([astream(index=0)], "10", "The file has no video stream"),
    ([], "10", "The file has no video stream"),
    ([vstream()], "0.000000", "The video has zero length"),
    ([vstream()], "-3", "The video has zero length"),
    ([vstream()], None, "The length of the video cannot be read"),
    ([vstream()], "nan", "The length of the video cannot be read"),
    ([vstream()], "inf", "The length of the video cannot be read"),
    ([vstream()], "N/A", "The length of the video cannot be read"),
    ([vstream(width=0)], "10", "The size of the picture cannot be read"),
    ([{k: v for k, v in vstream().items() if k != "height"}], "10",
     "The size of the picture cannot be read"),
    ([{k: v for k, v in vstream().items() if k != "codec_name"}], "10",
     "The video is in a format this server cannot decode"),
])
def test_reports_that_are_not_a_usable_video(streams, duration, reason):
    with pytest.raises(MediaError) as caught:
        read_probe(report(*streams, duration=duration))
    assert caught.value.reason == reason


def test_the_stream_duration_stands_in_for_a_missing_container_duration():
    assert read_probe(report(vstream(duration="4.2"), duration=None)).duration == 4.2


# --- limits --------------------------------------------------------------------------

LIMITS = InputLimits.from_config(Config())


@pytest.mark.parametrize("fields, message", [
    ({"width": 30000, "height": 30000}, r"too large \(30000x30000\)"),
    ({"width": 8200, "height": 8200}, r"too large \(8200x8200\)"),
    ({"width": 16385, "height": 64}, r"too large \(16385x64\)"),
    # Non-square pixels that would widen the picture past the limit when shown.
    ({"width": 8000, "height": 8000, "sample_aspect": 2.5}, r"too large"),
    ({"width": 1, "height": 1}, r"too small \(1x1\)"),
    ({"duration": 6 * 3600 + 1}, r"too long \(6:00:01\); the limit is 6:00:00"),
    ({"duration": 1e12}, r"too long"),
])
def test_what_exceeds_the_limits(fields, message):
    with pytest.raises(MediaError) as caught:
        check_limits(video(**fields), LIMITS)
    assert re.search(message, caught.value.reason), caught.value.reason


@pytest.mark.parametrize("fields", [
    {}, {"width": 8192, "height": 8192}, {"width": 16384, "height": 1024},
    {"width": 2, "height": 2}, {"duration": 6 * 3600}, {"duration": 0.04},
])
def test_what_the_limits_accept(fields):
    check_limits(video(**fields), LIMITS)


def test_limits_come_from_the_configuration():
    limits = InputLimits.from_config(Config(max_video_pixels=100, max_video_duration=5))
    with pytest.raises(MediaError):
        check_limits(video(width=20, height=10), limits)
    with pytest.raises(MediaError):
        check_limits(video(width=10, height=10, duration=5.5), limits)
    check_limits(video(width=10, height=10, duration=5), limits)


@pytest.mark.parametrize("seconds, text", [
    (0.4, "0:00"), (59.6, "1:00"), (125, "2:05"), (3600, "1:00:00"), (25200, "7:00:00"),
])
def test_clock(seconds, text):
    assert clock(seconds) == text


# --- remux or transcode -------------------------------------------------------------

CONFIG = Config()


@pytest.mark.parametrize("fields, action, extension, audio", [
    # Browser-safe already: copied.
    ({}, Action.REMUX, "mp4", "aac"),
    ({"audio_codec": None, "audio_index": None}, Action.REMUX, "mp4", None),
    ({"pix_fmt": "yuvj420p"}, Action.REMUX, "mp4", "aac"),
    ({"container": MKV}, Action.REMUX, "mp4", "aac"),
    ({"container": MKV, "video_codec": "vp9", "audio_codec": "opus"}, Action.REMUX, "webm",
     "opus"),
    ({"container": MKV, "video_codec": "vp8", "audio_codec": "vorbis"}, Action.REMUX, "webm",
     "vorbis"),
    ({"container": MKV, "video_codec": "av1", "pix_fmt": "yuv420p10le",
      "audio_codec": None, "audio_index": None}, Action.REMUX, "webm", None),
    # The video is fine, the audio is not: only the audio is encoded.
    ({"audio_codec": "pcm_s16le"}, Action.REMUX, "mp4", "aac"),
    ({"audio_codec": "mp3"}, Action.REMUX, "mp4", "aac"),
    ({"container": MKV, "video_codec": "vp9", "audio_codec": "aac"}, Action.REMUX, "webm",
     "opus"),
    # Everything else is transcoded to H.264 + AAC in MP4.
    ({"video_codec": "hevc"}, Action.TRANSCODE, "mp4", "aac"),
    ({"video_codec": "prores", "pix_fmt": "yuv422p10le", "audio_codec": "pcm_s24le"},
     Action.TRANSCODE, "mp4", "aac"),
    ({"video_codec": "mpeg2video", "interlaced": True}, Action.TRANSCODE, "mp4", "aac"),
    ({"pix_fmt": "yuv420p10le", "bit_depth": 10}, Action.TRANSCODE, "mp4", "aac"),
    ({"pix_fmt": "yuv444p"}, Action.TRANSCODE, "mp4", "aac"),
    ({"interlaced": True}, Action.TRANSCODE, "mp4", "aac"),
    ({"rotation": 90}, Action.TRANSCODE, "mp4", "aac"),
    ({"rotation": 180}, Action.TRANSCODE, "mp4", "aac"),
    ({"width": 3840, "height": 2160}, Action.TRANSCODE, "mp4", "aac"),
    ({"container": MKV, "video_codec": "vp9", "pix_fmt": "yuv420p10le"}, Action.TRANSCODE,
     "mp4", "aac"),
    ({"container": "ogg", "video_codec": "theora", "audio_codec": "vorbis"},
     Action.TRANSCODE, "mp4", "aac"),
    # H.264 in a container we do not copy from.
    ({"container": "avi"}, Action.TRANSCODE, "mp4", "aac"),
    ({"video_codec": "hevc", "audio_codec": None, "audio_index": None}, Action.TRANSCODE,
     "mp4", None),
])
def test_remux_or_transcode(fields, action, extension, audio):
    probe = video(**fields)
    plan = plan_processing(probe, CONFIG)
    args = list(plan.args)
    assert (plan.action, plan.extension, plan.audio_codec) == (action, extension, audio)
    assert plan.content_type == f"video/{extension}"
    assert plan.duration == probe.duration
    assert args[-2:] == ["-f", extension]
    assert ("-movflags" in args and "+faststart" in args) == (extension == "mp4")
    assert args[args.index("-map") + 1] == f"0:{probe.video_index}"
    if audio is None:
        assert args.count("-map") == 1 and "-c:a" not in args
    else:
        assert args.count("-map") == 2 and f"0:{probe.audio_index}" in args
        copies_audio = args[args.index("-c:a") + 1] == "copy"
        assert copies_audio == (audio == probe.audio_codec)
    if action is Action.REMUX:
        assert plan.copies_video and not plan.reasons
        assert args[args.index("-c:v") + 1] == "copy"
        assert plan.video_codec == probe.video_codec
        assert (plan.width, plan.height) == probe.display_size
    else:
        assert not plan.copies_video and plan.reasons
        assert args[args.index("-c:v") + 1] == "libx264"
        assert args[args.index("-pix_fmt") + 1] == "yuv420p"
        assert plan.video_codec == "h264"
        assert "format=yuv420p" in args[args.index("-vf") + 1]
    # The upload's global tags (a phone's location among them) never reach the output.
    assert args[args.index("-map_metadata") + 1] == "-1"


def test_a_transcode_follows_the_configuration():
    config = Config(transcode_max_height=240, transcode_crf=30, transcode_preset="faster")
    plan = plan_processing(video(width=640, height=360, video_codec="hevc"), config)
    args = list(plan.args)
    assert (plan.width, plan.height) == (426, 240)
    assert args[args.index("-crf") + 1] == "30"
    assert args[args.index("-preset") + 1] == "faster"
    assert "scale=426:240" in args[args.index("-vf") + 1]
    # AAC is kept as it is; other audio becomes 128k stereo AAC.
    assert args[args.index("-c:a") + 1] == "copy"
    other = list(plan_processing(video(video_codec="hevc", audio_codec="opus"), config).args)
    assert other[other.index("-c:a") + 1] == "aac"
    assert other[other.index("-b:a") + 1] == "128k" and other[other.index("-ac") + 1] == "2"


def test_a_rotated_clip_is_transcoded_to_its_displayed_size():
    plan = plan_processing(video(width=1920, height=1080, rotation=90), CONFIG)
    assert (plan.width, plan.height) == (1080, 1920)
    assert "scale=1080:1920" in plan.args[plan.args.index("-vf") + 1]


def test_interlaced_video_is_deinterlaced():
    plan = plan_processing(video(interlaced=True), CONFIG)
    assert plan.args[plan.args.index("-vf") + 1].startswith("yadif")
    assert "yadif" not in " ".join(plan_processing(video(video_codec="hevc"), CONFIG).args)


def test_a_picture_with_odd_sides_is_copied_but_sized_even_when_transcoded():
    assert plan_processing(video(width=321, height=241), CONFIG).action is Action.REMUX
    plan = plan_processing(video(width=321, height=241, video_codec="hevc"), CONFIG)
    assert (plan.width % 2, plan.height % 2) == (0, 0)


@pytest.mark.parametrize("display, max_height, size", [
    ((640, 360), 240, (426, 240)),
    ((1920, 1080), 1080, (1920, 1080)),
    ((1280, 720), 1080, (1280, 720)),  # never scaled up
    ((3840, 2160), 1080, (1920, 1080)),
    # A portrait phone clip is 1080p too, not squeezed to 608x1080.
    ((1080, 1920), 1080, (1080, 1920)),
    ((2160, 3840), 1080, (1080, 1920)),
    ((1080, 1920), 720, (720, 1280)),
    # Ultra-wide fits the 16:9 box by its width.
    ((2560, 1080), 1080, (1920, 810)),
    ((321, 241), 1080, (320, 240)),
    ((16384, 2), 1080, (1920, 2)),
    ((1440, 1440), 1080, (1080, 1080)),
])
def test_output_size(display, max_height, size):
    assert output_size(display, max_height) == size


@pytest.mark.parametrize("display, size", [
    ((1920, 1080), (1280, 720)), ((640, 360), (640, 360)), ((1080, 1920), (720, 1280)),
    ((853, 480), (852, 480)),
])
def test_poster_size(display, size):
    assert poster_size(display) == size


# --- storyboards --------------------------------------------------------------------

VTT_CUE = re.compile(
    r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n"
    r"(\S+)#xywh=(\d+),(\d+),(\d+),(\d+)$")


def parse_vtt(text: str) -> list[tuple[int, int, str, tuple[int, int, int, int]]]:
    """(start ms, end ms, url, (x, y, w, h)) of each cue; strict about the layout."""
    header, *blocks = text.strip("\n").split("\n\n")
    assert header == "WEBVTT"
    cues = []
    for block in blocks:
        match = VTT_CUE.match(block)
        assert match, block
        g = [int(x) if x.isdigit() else x for x in match.groups()]
        start = ((g[0] * 60 + g[1]) * 60 + g[2]) * 1000 + g[3]
        end = ((g[4] * 60 + g[5]) * 60 + g[6]) * 1000 + g[7]
        cues.append((start, end, str(g[8]), (g[9], g[10], g[11], g[12])))
    return cues


@pytest.mark.parametrize("duration, interval", [
    (0.04, 1), (5, 1), (100, 1), (100.5, 2), (250, 3), (1000, 10), (3600, 45),
    (7200, 90), (6 * 3600, 240), (36 * 3600, 1800), (400 * 3600, 14400),
])
def test_the_interval_is_round_and_keeps_the_sprite_under_a_hundred_tiles(duration,
                                                                          interval):
    assert storyboard_interval(duration) == interval
    assert storyboard_layout(duration, (1280, 720)).count <= 100


@pytest.mark.parametrize("duration", [0.04, 0.9, 1.0, 4.018, 5.0004, 12, 99.999, 100.5,
                                      347.3, 3600, 6 * 3600 - 0.001, 21601.37])
def test_cues_cover_the_whole_video_back_to_back(duration):
    layout = storyboard_layout(duration, (1920, 1080))
    cues = parse_vtt(layout.vtt("storyboard.jpg"))
    assert len(cues) == layout.count
    assert cues[0][0] == 0
    for before, after in zip(cues, cues[1:], strict=False):
        assert before[1] == after[0]
    for start, end, _, _ in cues:
        assert end > start
    # The last cue ends at the duration, never short of it (PeerTube misses the last 10 %).
    last_end = cues[-1][1]
    assert duration * 1000 <= last_end < duration * 1000 + 1
    assert cues[-1][0] < duration * 1000


def test_cues_point_at_their_own_tile_in_the_grid():
    layout = storyboard_layout(25.5, (1920, 1080))
    assert (layout.interval, layout.count, layout.columns, layout.rows) == (1, 26, 10, 3)
    assert (layout.tile_width, layout.tile_height) == (160, 90)
    assert layout.sprite_size == (1600, 270)
    cues = parse_vtt(layout.vtt("/videos/7/storyboard.jpg"))
    assert {url for _, _, url, _ in cues} == {"/videos/7/storyboard.jpg"}
    boxes = [box for _, _, _, box in cues]
    assert boxes[0] == (0, 0, 160, 90)
    assert boxes[9] == (1440, 0, 160, 90)
    assert boxes[10] == (0, 90, 160, 90)
    assert boxes[25] == (800, 180, 160, 90)
    assert len(set(boxes)) == len(boxes)
    for x, y, w, h in boxes:
        assert x + w <= layout.sprite_size[0] and y + h <= layout.sprite_size[1]


@pytest.mark.parametrize("display, tile", [
    ((1920, 1080), (160, 90)), ((1080, 1920), (90, 160)), ((640, 480), (160, 120)),
    ((100, 50), (100, 50)), ((16384, 2), (160, 2)), ((2, 16384), (2, 160)),
])
def test_tiles_fit_a_square_so_portrait_and_extreme_shapes_stay_small(display, tile):
    layout = storyboard_layout(10, display)
    assert (layout.tile_width, layout.tile_height) == tile


def test_a_short_video_gets_a_single_row():
    layout = storyboard_layout(3.2, (320, 240))
    assert (layout.count, layout.columns, layout.rows) == (4, 4, 1)
    assert layout.video_filter() == (
        "setpts=PTS-STARTPTS,tpad=stop_mode=clone:stop=-1,fps=1/1,"
        "scale=160:120,setsar=1,tile=4x1")


# --- configuration ------------------------------------------------------------------

def test_media_settings_are_read_from_the_environment():
    config = Config.from_env({
        "TRANSCODE_MAX_HEIGHT": "720", "TRANSCODE_CRF": "28", "TRANSCODE_PRESET": "Faster",
        "FFMPEG_THREADS": "1", "FFMPEG_TIMEOUT": "60", "FFMPEG_TIMEOUT_PER_SECOND": "2.5",
        "FFMPEG_MEMORY_BYTES": str(512 * 1024**2), "MAX_VIDEO_DURATION": "600",
        "MAX_VIDEO_PIXELS": str(1920 * 1080),
    })
    assert (config.transcode_max_height, config.transcode_crf, config.transcode_preset) == (
        720, 28, "faster")
    assert (config.ffmpeg_threads, config.ffmpeg_timeout, config.ffmpeg_timeout_per_second,
            config.ffmpeg_memory_bytes) == (1, 60, 2.5, 512 * 1024**2)
    assert (config.max_video_duration, config.max_video_pixels) == (600, 1920 * 1080)
    defaults = Config.from_env({})
    assert (defaults.transcode_max_height, defaults.transcode_crf,
            defaults.transcode_preset, defaults.ffmpeg_threads) == (1080, 23, "veryfast", 2)


@pytest.mark.parametrize("name, value", [
    ("TRANSCODE_PRESET", "placebo-ish"), ("TRANSCODE_CRF", "52"),
    ("TRANSCODE_MAX_HEIGHT", "8"), ("FFMPEG_THREADS", "0"), ("FFMPEG_MEMORY_BYTES", "1000"),
    ("MAX_VIDEO_PIXELS", "-1"), ("FFMPEG_TIMEOUT", "0"),
])
def test_unusable_media_settings_stop_the_start(name, value):
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})
