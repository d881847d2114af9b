"""Real ffmpeg on small clips: remux, transcode, posters, storyboards, and its limits."""

from __future__ import annotations

import asyncio
import re
import resource
import secrets
import time
from pathlib import Path

import pytest

from server.core.config import Config
from server.ingest import ffmpeg
from server.ingest.media import MediaError
from server.ingest.plan import Action, plan_processing, storyboard_layout
from server.ingest.probe import Probe, probe

from .conftest import make_clip, require_tool
from .media_clips import (  # noqa: F401
    black_start_mp4,
    ffprobe_json,
    gone,
    h264_mp4,
    half_faststart_mp4,
    hevc_mov,
    mean_luma,
    mean_luma_at,
    mean_luma_of_box,
    packet_hashes,
    processes_mentioning,
    rotated_mp4,
    stream,
    top_level_boxes,
    vp9_webm,
)
from .test_media_plan import parse_vtt

CONFIG = Config(ffmpeg_threads=2)


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("ffmpeg")
    require_tool("ffprobe")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "job"
    path.mkdir()
    return path


async def produced(source: Path, work: Path, config: Config = CONFIG,
                   progress: ffmpeg.Progress | None = None) -> tuple[Probe, Path, Probe]:
    """(the plan's source probe, the output path, the output's probe)."""
    found = await probe(source, config)
    plan = plan_processing(found, config)
    out = work / f"stream.{plan.extension}"
    made = await ffmpeg.produce(source, plan, out, config, progress)
    return found, out, made


# --- the playable file -------------------------------------------------------------

async def test_browser_safe_mp4_is_remuxed_with_its_index_first_and_not_reencoded(
        h264_mp4, work):
    assert top_level_boxes(h264_mp4).index("mdat") < top_level_boxes(h264_mp4).index("moov")
    found = await probe(h264_mp4, CONFIG)
    plan = plan_processing(found, CONFIG)
    assert plan.action is Action.REMUX
    out = work / "stream.mp4"
    made = await ffmpeg.produce(h264_mp4, plan, out, CONFIG)

    boxes = top_level_boxes(out)
    assert boxes.index("moov") < boxes.index("mdat"), boxes
    assert (made.video_codec, made.audio_codec) == ("h264", "aac")
    assert made.duration == pytest.approx(found.duration, abs=0.05)
    # The very same compressed pictures and sound: copied, not encoded again.
    assert packet_hashes(out, "v") == packet_hashes(h264_mp4, "v")
    assert packet_hashes(out, "a") == packet_hashes(h264_mp4, "a")


async def test_webm_with_vp9_and_opus_is_remuxed(vp9_webm, work):
    _, out, made = await produced(vp9_webm, work)
    assert out.suffix == ".webm"
    assert (made.container, made.video_codec, made.audio_codec) == (
        "matroska,webm", "vp9", "opus")
    assert packet_hashes(out, "v") == packet_hashes(vp9_webm, "v")


async def test_hevc_mov_becomes_capped_h264_and_aac_in_a_faststart_mp4(hevc_mov, work):
    config = Config(transcode_max_height=240, ffmpeg_threads=2)
    reports: list[float] = []

    async def progress(fraction: float) -> None:
        reports.append(fraction)

    found, out, made = await produced(hevc_mov, work, config, progress)
    assert found.video_codec == "hevc"
    assert out.suffix == ".mp4"
    video = stream(out, "video")
    assert video is not None
    assert (video["codec_name"], video["pix_fmt"]) == ("h264", "yuv420p")
    assert (video["width"], video["height"]) == (426, 240)
    assert made.display_size == (426, 240)
    assert made.audio_codec == "aac"
    assert made.duration == pytest.approx(found.duration, abs=0.1)
    boxes = top_level_boxes(out)
    assert boxes.index("moov") < boxes.index("mdat"), boxes
    # Progress went forward and got close to the end.
    assert reports and reports == sorted(reports)
    assert reports[0] >= 0 and 0.8 <= reports[-1] <= 1


async def test_a_rotated_clip_comes_out_upright_with_no_rotation_left(rotated_mp4, work):
    found, out, made = await produced(rotated_mp4, work)
    assert found.rotation in (90, 270)
    video = stream(out, "video")
    assert video is not None
    assert (video["width"], video["height"]) == (240, 320)
    assert not video.get("side_data_list") and "rotate" not in video.get("tags", {})
    assert (made.rotation, made.display_size) == (0, (240, 320))


async def test_a_file_that_ends_early_fails_instead_of_playing_half(half_faststart_mp4,
                                                                    work):
    found = await probe(half_faststart_mp4, CONFIG)  # its index promises the whole clip
    assert found.duration == pytest.approx(4.0, abs=0.1)
    with pytest.raises(MediaError) as caught:
        await produced(half_faststart_mp4, work)
    assert re.fullmatch(r"The file ends early: only 0:0\d of 0:04 could be read",
                        caught.value.reason), caught.value.reason


async def test_a_failing_progress_report_does_not_fail_the_work(h264_mp4, work, caplog):
    async def broken(fraction: float) -> None:
        raise RuntimeError("the progress store is down")

    _, out, made = await produced(h264_mp4, work, progress=broken)
    assert out.stat().st_size > 0 and made.video_codec == "h264"
    assert "progress report failed" in caplog.text


# --- poster and storyboard ----------------------------------------------------------

async def test_the_poster_is_a_picture_not_the_black_opening(black_start_mp4, work):
    source = await probe(black_start_mp4, CONFIG)
    # Where a naive poster at 10 % would land, the clip is black.
    assert mean_luma_at(black_start_mp4, source.duration * 0.1) < 5

    out = work / "poster.jpg"
    await ffmpeg.poster(black_start_mp4, source, out, CONFIG)
    assert out.read_bytes()[:3] == b"\xff\xd8\xff"
    picture = stream(out, "video")
    assert picture is not None and (picture["width"], picture["height"]) == (320, 240)
    assert mean_luma(out) > 60
    # Nothing else is left in the working directory.
    assert sorted(p.name for p in work.iterdir()) == ["poster.jpg"]


async def test_a_poster_from_a_very_short_clip(media_dir, work):
    short = make_clip(media_dir, "media-short.mp4", "-f", "lavfi",
                      "-i", "testsrc=size=1920x1080:rate=25", "-t", "0.3", "-c:v", "libx264",
                      "-preset", "ultrafast", "-pix_fmt", "yuv420p")
    found = await probe(short, CONFIG)
    out = work / "poster.jpg"
    await ffmpeg.poster(short, found, out, CONFIG)
    picture = stream(out, "video")
    assert picture is not None and (picture["width"], picture["height"]) == (1280, 720)


async def test_the_storyboard_covers_the_whole_video(h264_mp4, work):
    _, out, made = await produced(h264_mp4, work)
    sprite = work / "storyboard.jpg"
    vtt = await ffmpeg.storyboard(out, made, sprite, CONFIG,
                                  sprite_url="/videos/9/storyboard.jpg")
    layout = storyboard_layout(made.duration, made.display_size)
    assert sprite.read_bytes()[:3] == b"\xff\xd8\xff"
    picture = stream(sprite, "video")
    assert picture is not None
    assert (picture["width"], picture["height"]) == layout.sprite_size

    cues = parse_vtt(vtt)
    assert len(cues) == layout.count >= 4
    assert cues[0][0] == 0
    assert all(a[1] == b[0] for a, b in zip(cues, cues[1:], strict=False))
    duration_ms = float(ffprobe_json(out)["format"]["duration"]) * 1000
    assert duration_ms <= cues[-1][1] < duration_ms + 1
    assert {url for _, _, url, _ in cues} == {"/videos/9/storyboard.jpg"}
    # Every cue's tile, the last one included, holds a picture, not padding.
    for _, _, _, box in cues:
        assert mean_luma_of_box(sprite, box) > 60, box


async def test_the_storyboard_has_pictures_where_the_sound_outlasts_the_video(media_dir,
                                                                             work):
    clip = make_clip(media_dir, "media-long-sound.mp4", "-f", "lavfi",
                     "-i", "testsrc=size=320x240:rate=25:duration=2", "-f", "lavfi",
                     "-i", "sine=frequency=440:duration=5.5", "-c:v", "libx264",
                     "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac")
    found = await probe(clip, CONFIG)
    assert found.duration == pytest.approx(5.5, abs=0.1)
    sprite = work / "storyboard.jpg"
    cues = parse_vtt(await ffmpeg.storyboard(clip, found, sprite, CONFIG))
    assert len(cues) == 6
    # The last cues show the last picture rather than empty grid.
    for _, _, _, box in cues:
        assert mean_luma_of_box(sprite, box) > 60, box


async def test_a_long_videos_storyboard_reads_keyframes_and_still_covers_it(media_dir,
                                                                             work):
    # 16:40 of tiny frames with a keyframe every 10 s: a hundred tiles 10 s apart.
    clip = make_clip(media_dir, "media-long.mp4", "-f", "lavfi",
                     "-i", "testsrc=size=64x48:rate=5", "-t", "1000", "-c:v", "libx264",
                     "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "50")
    found = await probe(clip, CONFIG)
    sprite = work / "storyboard.jpg"
    cues = parse_vtt(await ffmpeg.storyboard(clip, found, sprite, CONFIG))
    assert len(cues) == 100 and cues[1][0] == 10_000
    assert cues[-1][1] == 1_000_000
    picture = stream(sprite, "video")
    assert picture is not None and (picture["width"], picture["height"]) == (640, 480)
    # testsrc prints the time: tiles taken at different times differ.
    assert len({mean_luma_of_box(sprite, box) for _, _, _, box in cues[:10]}) > 1


async def test_storyboard_tiles_of_a_rotated_clip_stand_upright(rotated_mp4, work):
    found = await probe(rotated_mp4, CONFIG)
    sprite = work / "storyboard.jpg"
    vtt = await ffmpeg.storyboard(rotated_mp4, found, sprite, CONFIG)
    cues = parse_vtt(vtt)
    assert {box[2:] for _, _, _, box in cues} == {(120, 160)}
    picture = stream(sprite, "video")
    assert picture is not None
    assert (picture["width"], picture["height"]) == (120 * len(cues), 160)
    assert cues[0][2] == "storyboard.jpg"


# --- limits -------------------------------------------------------------------------

def endless(token: str) -> list[str]:
    """Arguments for an ffmpeg run that never ends on its own; `token` marks it."""
    return ["-f", "lavfi", "-i", "testsrc=size=640x360:rate=25", "-c:v", "libx264",
            "-preset", "ultrafast", "-f", "null", f"endless-{token}"]


async def spawned(token: str) -> int:
    for _ in range(200):
        found = processes_mentioning(f"endless-{token}")
        if found:
            return found[0]
        await asyncio.sleep(0.02)
    raise AssertionError("ffmpeg never started")


async def test_a_run_past_its_time_limit_is_killed_with_its_process_group(work):
    token = secrets.token_hex(6)
    task = asyncio.create_task(ffmpeg.run(endless(token), time_limit=1.5, threads=1,
                                          memory_bytes=None, cwd=work))
    pid = await spawned(token)
    started = time.monotonic()
    with pytest.raises(MediaError) as caught:
        await task
    assert caught.value.reason == "Processing took longer than the limit"
    assert time.monotonic() - started < 3
    assert gone(pid)
    assert processes_mentioning(f"endless-{token}") == []


def thread_count(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE).group(1))


async def test_the_thread_limit_reaches_the_decoder_and_the_encoder(work):
    # The same work left to ffmpeg's own choice of threads, for comparison.
    token = secrets.token_hex(6)
    free = await asyncio.create_subprocess_exec(
        require_tool("ffmpeg"), "-nostdin", "-v", "error", *endless(token),
        stdin=asyncio.subprocess.DEVNULL)
    try:
        await spawned(token)
        await asyncio.sleep(0.5)  # past start-up, encoding
        unlimited = thread_count(free.pid)
    finally:
        free.kill()
        await free.wait()

    token = secrets.token_hex(6)
    task = asyncio.create_task(ffmpeg.run(endless(token), time_limit=30, threads=1,
                                          memory_bytes=None, cwd=work))
    pid = await spawned(token)
    await asyncio.sleep(0.5)
    limited = thread_count(pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limited < unlimited
    # One thread to work with, beside ffmpeg's own few (3 in all with ffmpeg 5; x264's
    # own choice on two cores alone makes 7).
    assert limited <= 4, limited


async def test_a_cancelled_job_leaves_no_ffmpeg_behind(work):
    token = secrets.token_hex(6)
    task = asyncio.create_task(ffmpeg.run(endless(token), time_limit=60, threads=1,
                                          memory_bytes=None, cwd=work))
    pid = await spawned(token)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gone(pid)


# Too little to start at all; enough to start but not to encode 1080p.
@pytest.mark.parametrize("megabytes", [64, 320])
async def test_a_run_over_its_memory_limit_fails_cleanly(h264_mp4, work, megabytes):
    ours = resource.getrlimit(resource.RLIMIT_AS)
    with pytest.raises(MediaError) as caught:
        await ffmpeg.run(["-f", "lavfi", "-i", "testsrc=size=1920x1080:rate=25", "-t", "1",
                          "-c:v", "libx264", "-preset", "veryfast", str(work / "out.mp4")],
                         time_limit=30, threads=2, memory_bytes=megabytes * 1024**2,
                         cwd=work)
    assert caught.value.reason == "Processing needed more memory than the limit"
    assert caught.value.detail  # what ffmpeg said, for the log
    # The limit applied to ffmpeg alone.
    assert resource.getrlimit(resource.RLIMIT_AS) == ours
    # The same run within a sane limit succeeds.
    await ffmpeg.run(["-i", str(h264_mp4), "-c:v", "libx264", "-preset", "ultrafast",
                      str(work / "out.mp4")], time_limit=30, threads=1,
                     memory_bytes=CONFIG.ffmpeg_memory_bytes, cwd=work)


async def test_an_undecodable_input_is_a_media_error(work, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(5000))
    with pytest.raises(MediaError) as caught:
        await ffmpeg.run(["-i", str(junk), str(work / "out.mp4")], time_limit=30, threads=1,
                         memory_bytes=None, cwd=work)
    assert caught.value.reason == "The file could not be decoded"


def test_the_time_limit_grows_with_the_video():
    config = Config(ffmpeg_timeout=100, ffmpeg_timeout_per_second=3)
    assert ffmpeg.time_limit(config, 0) == 100
    assert ffmpeg.time_limit(config, 60) == 280
