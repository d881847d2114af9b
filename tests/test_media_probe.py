"""Probing real files with ffprobe: what a video is, and what is refused and why."""

from __future__ import annotations

import pytest

from server.core.config import Config
from server.ingest.media import MediaError, probe_duration
from server.ingest.probe import probe

from .conftest import require_tool
from .media_clips import (  # noqa: F401
    audio_only,
    garbage_mp4,
    h264_mp4,
    hevc_mov,
    mjpeg_mov,
    rotated_mp4,
    truncated_mp4,
    vp9_webm,
    zero_length,
)

MP4 = "mov,mp4,m4a,3gp,3g2,mj2"


@pytest.fixture(autouse=True)
def _ffprobe() -> None:
    require_tool("ffprobe")


async def test_h264_with_its_index_at_the_end(h264_mp4):
    found = await probe(h264_mp4, Config())
    assert found.container == MP4
    assert found.duration == pytest.approx(4.0, abs=0.1)
    assert (found.video_codec, found.pix_fmt, found.bit_depth) == ("h264", "yuv420p", 8)
    assert (found.width, found.height, found.display_size) == (320, 240, (320, 240))
    assert found.frame_rate == 25 and found.rotation == 0 and not found.interlaced
    assert (found.audio_codec, found.has_audio) == ("aac", True)
    assert found.video_index != found.audio_index


async def test_hevc_in_a_phone_style_mov(hevc_mov):
    found = await probe(hevc_mov, Config())
    assert found.container == MP4
    assert (found.video_codec, found.width, found.height) == ("hevc", 640, 360)
    assert found.audio_codec == "aac"
    assert found.duration == pytest.approx(4.0, abs=0.1)


async def test_vp9_and_opus_in_webm(vp9_webm):
    found = await probe(vp9_webm, Config())
    assert found.container == "matroska,webm"
    assert (found.video_codec, found.pix_fmt, found.audio_codec) == ("vp9", "yuv420p", "opus")
    assert found.duration == pytest.approx(3.0, abs=0.1)


async def test_a_rotated_phone_clip_reports_its_turn_and_upright_size(rotated_mp4):
    found = await probe(rotated_mp4, Config())
    assert found.rotation in (90, 270)
    assert (found.width, found.height) == (320, 240)
    assert found.display_size == (240, 320)


@pytest.mark.parametrize("clip, reason", [
    ("audio_only", "The file has no video stream"),
    ("zero_length", "The video has zero length"),
    ("truncated_mp4", "The file is damaged or incomplete: the index a player needs is missing"),
    ("garbage_mp4", "The file is damaged or incomplete: the index a player needs is missing"),
])
async def test_files_that_are_no_video(request, clip, reason):
    path = request.getfixturevalue(clip)
    with pytest.raises(MediaError) as caught:
        await probe(path, Config())
    assert caught.value.reason == reason


async def test_noise_with_no_header_at_all(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(bytes((i * 7919) % 256 for i in range(50_000)))
    with pytest.raises(MediaError) as caught:
        await probe(path, Config())
    assert caught.value.reason in {
        "The file is damaged or is not a video",
        "The file is damaged or incomplete: the index a player needs is missing",
    }


async def test_a_picture_over_the_pixel_limit_is_refused(mjpeg_mov):
    found = await probe(mjpeg_mov, Config(max_video_pixels=320 * 240))
    assert found.video_codec == "mjpeg"
    with pytest.raises(MediaError) as caught:
        await probe(mjpeg_mov, Config(max_video_pixels=320 * 240 - 1))
    assert caught.value.reason.startswith("The picture is too large (320x240)")


async def test_a_video_over_the_duration_limit_is_refused(h264_mp4):
    await probe(h264_mp4, Config(max_video_duration=5))
    with pytest.raises(MediaError) as caught:
        await probe(h264_mp4, Config(max_video_duration=3))
    assert caught.value.reason == "The video is too long (0:04); the limit is 0:03"


async def test_a_playlist_dressed_as_a_video_opens_nothing_else(tmp_path, h264_mp4):
    # An HLS playlist pointing at another file on the server: ffprobe left to its own
    # choice of demuxer would happily read that file on the upload's behalf.
    playlist = tmp_path / "upload"
    playlist.write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\nfile:{h264_mp4}\n#EXT-X-ENDLIST\n")
    with pytest.raises(MediaError) as caught:
        await probe(playlist, Config())
    assert caught.value.reason == "The file is damaged or is not a video"


async def test_probe_is_bounded_in_time(h264_mp4):
    from server.ingest.probe import probe_file

    with pytest.raises(MediaError) as caught:
        await probe_file(h264_mp4, time_limit=0.001)
    assert caught.value.reason == "Processing took longer than the limit"


async def test_the_upload_handlers_quick_duration_read(h264_mp4, garbage_mp4):
    assert await probe_duration(h264_mp4) == pytest.approx(4.0, abs=0.1)
    assert await probe_duration(garbage_mp4) is None
