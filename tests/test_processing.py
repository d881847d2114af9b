"""Processing: real clips through ffmpeg, real procrastinate workers, real PostgreSQL.

An upload is `processing` with its job queued; a worker (in this process, or
`python -m server worker` where a process must die) makes it `ready` with a
browser-safe faststart stream, a poster and a storyboard, or `failed` with a
reason its author sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
import pytest
from aiohttp import FormData

from server.core.config import Config
from server.core.db import PackageSchema, migrate, package_steps, parse_version
from server.core.keys import DB_KEY
from server.ingest.jobs import ATTEMPTS, Upkeep, create_job_app, work
from server.ingest.processing import FAILED_REPEATEDLY, WORK_DIR

from .conftest import (
    fake_mp4,
    make_clip,
    make_ready,
    new_user_token,
    query,
    require_tool,
    temporary_database,
)

ROOT = Path(__file__).resolve().parents[1]


# --- clips -------------------------------------------------------------------------

@pytest.fixture(scope="session")
def hevc_mov(media_dir: Path) -> Path:
    """What a phone records: H.265 in QuickTime, its moov index at the end."""
    return make_clip(
        media_dir, "phone.mov", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=330", "-t", "3", "-c:v", "libx265",
        "-preset", "ultrafast", "-x265-params", "log-level=error", "-tag:v", "hvc1",
        "-c:a", "aac", "-shortest", "-f", "mov")


@pytest.fixture(scope="session")
def audio_only(media_dir: Path) -> Path:
    """An M4A: it sniffs as MP4, and has no picture."""
    return make_clip(media_dir, "voice.m4a", "-f", "lavfi", "-i", "sine=frequency=500",
                     "-t", "2", "-c:a", "aac", "-f", "mp4")


@pytest.fixture(scope="session")
def slow_clip(media_dir: Path) -> Path:
    """MPEG-4 part 2 needs a transcode, which a slow x264 preset makes last."""
    return make_clip(media_dir, "slow.mp4", "-f", "lavfi", "-i",
                     "testsrc2=size=640x360:rate=25", "-t", "10", "-c:v", "mpeg4", "-q:v", "5")


# --- helpers -----------------------------------------------------------------------

async def video_of(client: Any, video_id: int, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = await client.get(f"/videos/{video_id}", headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def uploaded(client: Any, token: str, path: Path | bytes, name: str = "clip.mp4") -> int:
    data = path if isinstance(path, bytes) else path.read_bytes()
    form = FormData()
    form.add_field("title", "A clip")
    form.add_field("file", io.BytesIO(data), filename=name)
    resp = await client.post("/videos/upload", data=form,
                             headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 201, await resp.text()
    video = await resp.json()
    assert video["status"] == "processing" and video["progress"] == 0
    return video["id"]


def top_level_atoms(data: bytes) -> list[str]:
    atoms, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[pos + 8:pos + 16], "big")
        atoms.append(kind)
        if size < 8:
            break
        pos += size
    return atoms


def ffprobe_streams(path: Path) -> dict[str, dict[str, Any]]:
    out = subprocess.run(
        [require_tool("ffprobe"), "-v", "error", "-show_streams", "-of", "json", str(path)],
        check=True, capture_output=True, text=True).stdout
    return {s["codec_type"]: s for s in json.loads(out)["streams"]}


def video_bitstream_md5(path: Path) -> str:
    """The video stream's packets, as ffmpeg copies them: equal only if never re-encoded."""
    out = subprocess.run(
        [require_tool("ffmpeg"), "-v", "error", "-i", str(path), "-map", "0:v", "-c", "copy",
         "-bsf:v", "h264_mp4toannexb", "-f", "md5", "-"],
        check=True, capture_output=True, text=True).stdout
    return out.strip()


def row(database_url: str, video_id: int) -> dict[str, Any]:
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute("SELECT * FROM videos WHERE id = %s", (video_id,))
            found = cur.fetchone()
    finally:
        conn.close()
    assert found is not None
    return dict(found)


def stored(config: Any) -> set[str]:
    """Names of stored media files (not the work or upload directories)."""
    return {p.name for p in config.storage_dir.iterdir() if p.is_file()}


def work_dirs(config: Any) -> list[Path]:
    root = config.storage_dir / WORK_DIR
    return list(root.iterdir()) if root.exists() else []


def vtt_cues(text: str) -> list[tuple[float, float, str]]:
    def seconds(stamp: str) -> float:
        h, m, s = stamp.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    assert text.startswith("WEBVTT")
    return [(seconds(a), seconds(b), url) for a, b, url in re.findall(
        r"^(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})\n(\S+)$", text, re.MULTILINE)]


# --- the pipeline --------------------------------------------------------------------

async def test_a_browser_safe_mp4_is_remuxed_to_faststart_with_poster_and_storyboard(
        client, config, database_url, real_mp4, api_error):
    token = await new_user_token(client)
    video_id = await uploaded(client, token, real_mp4)
    # Until processed: visible, not streamed, no pictures.
    await api_error(await client.get(f"/videos/{video_id}/stream"), 404)
    await api_error(await client.get(f"/videos/{video_id}/poster.jpg"), 404)
    before = row(database_url, video_id)

    await work(config, wait=False)

    video = await video_of(client, video_id, token)
    assert video["status"] == "ready", video
    assert (video["width"], video["height"]) == (320, 240)
    assert (video["video_codec"], video["audio_codec"]) == ("h264", "aac")
    assert video["duration"] == pytest.approx(12, abs=0.2)
    assert video["progress"] is None and video["failure_reason"] is None
    assert video["poster_url"] == f"/videos/{video_id}/poster.jpg"
    assert video["storyboard_url"] == f"/videos/{video_id}/storyboard.vtt"

    after = row(database_url, video_id)
    assert after["original_key"] == before["storage_key"] != after["storage_key"]
    # The original is kept as uploaded; the stream is a new file with a new ETag.
    original = config.storage_dir / after["original_key"]
    assert original.read_bytes() == real_mp4.read_bytes()
    stream = await client.get(f"/videos/{video_id}/stream")
    assert stream.status == 200
    assert stream.headers["ETag"] == f'"{after["storage_key"]}"'
    body = await stream.read()
    assert len(body) == video["size"] == after["size"]
    atoms = top_level_atoms(body)
    assert atoms.index("moov") < atoms.index("mdat"), atoms
    source = top_level_atoms(real_mp4.read_bytes())
    assert source.index("moov") > source.index("mdat"), source
    # Remuxed, not re-encoded: the same H.264 packets.
    processed = config.storage_dir / after["storage_key"]
    assert video_bitstream_md5(processed) == video_bitstream_md5(real_mp4)

    # The poster: a JPEG with validators, revalidated with a 304.
    poster = await client.get(video["poster_url"])
    assert poster.status == 200
    assert poster.headers["Content-Type"] == "image/jpeg"
    assert poster.headers["X-Content-Type-Options"] == "nosniff"
    assert poster.headers["Cache-Control"].startswith("public, max-age=")
    assert poster.headers["ETag"] == f'"{after["poster_key"]}"'
    assert (await poster.read())[:3] == b"\xff\xd8\xff"
    again = await client.get(video["poster_url"], headers={"If-None-Match": poster.headers["ETag"]})
    assert again.status == 304
    head = await client.head(video["poster_url"])
    assert head.status == 200 and head.headers["ETag"] == poster.headers["ETag"]

    # The storyboard: a sprite, and cues over it covering the whole video.
    sprite = await client.get(f"/videos/{video_id}/storyboard.jpg")
    assert sprite.status == 200 and sprite.headers["Content-Type"] == "image/jpeg"
    sprite_size = ffprobe_streams(config.storage_dir / after["storyboard_key"])["video"]
    vtt = await client.get(video["storyboard_url"])
    assert vtt.status == 200
    assert vtt.headers["Content-Type"] == "text/vtt; charset=utf-8"
    cues = vtt_cues(await vtt.text())
    assert cues[0][0] == 0
    assert all(a[1] == b[0] for a, b in zip(cues, cues[1:], strict=False)), "gap between cues"
    assert cues[-1][1] >= video["duration"] - 0.05
    for _, _, url in cues:
        match = re.fullmatch(rf"/videos/{video_id}/storyboard\.jpg#xywh=(\d+),(\d+),(\d+),(\d+)",
                             url)
        assert match, url
        x, y, w, h = map(int, match.groups())
        assert x + w <= sprite_size["width"] and y + h <= sprite_size["height"]
    assert work_dirs(config) == []


async def test_an_hevc_mov_becomes_an_h264_faststart_mp4(client, config, database_url, hevc_mov):
    token = await new_user_token(client)
    video_id = await uploaded(client, token, hevc_mov, name="IMG_0001.MOV")
    await work(config, wait=False)

    video = await video_of(client, video_id)
    assert video["status"] == "ready", video
    assert video["content_type"] == "video/mp4"
    assert (video["video_codec"], video["audio_codec"]) == ("h264", "aac")
    stream = await client.get(video["stream_url"])
    assert stream.headers["Content-Type"] == "video/mp4"
    body = await stream.read()
    atoms = top_level_atoms(body)
    assert atoms.index("moov") < atoms.index("mdat"), atoms
    streams = ffprobe_streams(config.storage_dir / row(database_url, video_id)["storage_key"])
    assert streams["video"]["codec_name"] == "h264"
    assert streams["video"]["pix_fmt"] == "yuv420p"
    assert streams["audio"]["codec_name"] == "aac"


@pytest.mark.parametrize("kind", ["truncated", "audio-only", "garbage"])
async def test_hostile_input_fails_with_a_reason_only_its_author_sees(
        client, config, real_mp4, audio_only, kind, api_error):
    data = {
        # An upload cut short: the index at the end never arrived.
        "truncated": real_mp4.read_bytes()[:200_000],
        "audio-only": audio_only.read_bytes(),
        # An MP4 header on bytes that decode to nothing.
        "garbage": fake_mp4(50_000),
    }[kind]
    author = await new_user_token(client)
    other = await new_user_token(client)
    video_id = await uploaded(client, author, data)

    await work(config, wait=False)  # returns: the worker survives the input

    mine = await video_of(client, video_id, author)
    assert mine["status"] == "failed"
    assert isinstance(mine["failure_reason"], str) and len(mine["failure_reason"]) > 10
    assert mine["progress"] is None and mine["poster_url"] is None
    assert (await video_of(client, video_id, other))["failure_reason"] is None
    assert (await video_of(client, video_id))["status"] == "failed"
    await api_error(await client.get(f"/videos/{video_id}/stream"), 404)
    listed = await (await client.get("/videos")).json()
    assert video_id not in [v["id"] for v in listed["items"]]
    resp = await client.get("/videos", headers={"Authorization": f"Bearer {author}"})
    assert [v["status"] for v in (await resp.json())["items"] if v["id"] == video_id] == ["failed"]
    assert work_dirs(config) == []


async def test_listing_shows_unready_videos_to_their_author_only(client):
    author = await new_user_token(client)
    other = await new_user_token(client)
    ready = await uploaded(client, other, fake_mp4(3000))
    await make_ready(client.server.app, ready)
    processing = await uploaded(client, author, fake_mp4(3000, seed=2))

    async def listed(token: str | None = None, bad: bool = False) -> list[int]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if bad:
            headers = {"Authorization": "Bearer not-a-token"}
        page = await (await client.get("/videos", headers=headers)).json()
        return [v["id"] for v in page["items"]]

    assert await listed() == [ready]
    assert await listed(other) == [ready]
    assert await listed(bad=True) == [ready]
    assert await listed(author) == [processing, ready]
    # Anyone may look at it; its status says it is not ready.
    assert (await video_of(client, processing))["status"] == "processing"


async def test_deleting_a_processed_video_removes_every_file(client, config, database_url,
                                                             real_mp4, api_error):
    token = await new_user_token(client)
    video_id = await uploaded(client, token, real_mp4)
    await work(config, wait=False)
    keys = row(database_url, video_id)
    files = {keys[c] for c in ("storage_key", "original_key", "poster_key", "storyboard_key",
                               "storyboard_vtt_key")}
    assert None not in files and stored(config) == files
    resp = await client.delete(f"/videos/{video_id}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 204
    assert stored(config) == set()
    await api_error(await client.get(f"/videos/{video_id}/storyboard.vtt"), 404)


async def test_a_video_deleted_before_its_job_runs_leaves_nothing(client, config, real_mp4):
    token = await new_user_token(client)
    video_id = await uploaded(client, token, real_mp4)
    resp = await client.delete(f"/videos/{video_id}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 204
    await work(config, wait=False)
    assert stored(config) == set() and work_dirs(config) == []


async def test_a_video_deleted_while_processed_takes_the_new_files_with_it(
        client, make_config, slow_clip, caplog):
    caplog.set_level(logging.INFO, logger="server.ingest.processing")
    config = make_config(transcode_preset="veryslow")
    token = await new_user_token(client)
    video_id = await uploaded(client, token, slow_clip)
    processing = asyncio.create_task(work(config, wait=False))
    async with asyncio.timeout(60):
        while not (await video_of(client, video_id))["progress"]:
            assert not processing.done()
            await asyncio.sleep(0.1)
    resp = await client.delete(f"/videos/{video_id}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 204
    assert stored(config) == set()  # the upload went with the row
    await processing
    assert "was deleted or settled while it was processed" in caplog.text
    assert stored(config) == set() and work_dirs(config) == []


async def test_the_orphan_sweep_keeps_every_file_a_video_names(client, config, database_url,
                                                              real_mp4):
    from server.catalog.handlers import CATALOG_KEY

    token = await new_user_token(client)
    video_id = await uploaded(client, token, real_mp4)
    await work(config, wait=False)
    names = stored(config)
    stray = config.storage_dir / ("f" * 32 + ".jpg")
    stray.write_bytes(b"left by a crash")
    assert await client.server.app[CATALOG_KEY].sweep_orphans(min_age=0) == 1
    assert stored(config) == names and len(names) == 5
    assert (await video_of(client, video_id))["status"] == "ready"


# --- failures and recovery -------------------------------------------------------------

async def test_transient_failures_are_retried_then_fail_the_video(make_config, client,
                                                                  database_url, real_mp4):
    config = make_config(processing_retry_wait=0)
    token = await new_user_token(client)
    video_id = await uploaded(client, token, real_mp4)
    # Job directories cannot be made: a fault of this machine, not of the upload.
    config.storage_dir.joinpath(WORK_DIR).write_bytes(b"")
    # Retried at once (no wait), so one worker run makes every attempt.
    await work(config, wait=False)
    assert query(database_url, "SELECT status::text, attempts FROM procrastinate_jobs") == [
        ("failed", ATTEMPTS)]
    video = await video_of(client, video_id, token)
    assert video["status"] == "failed" and video["failure_reason"] == FAILED_REPEATEDLY


async def test_a_job_already_tried_too_often_fails_its_video(client, config, database_url,
                                                            real_mp4):
    token = await new_user_token(client)
    video_id = await uploaded(client, token, real_mp4)
    # As if every earlier run had ended with its worker.
    query(database_url, "UPDATE procrastinate_jobs SET attempts = %s WHERE queueing_lock = %s",
        (ATTEMPTS, f"video-{video_id}"))
    await work(config, wait=False)
    video = await video_of(client, video_id, token)
    assert video["status"] == "failed" and video["failure_reason"] == FAILED_REPEATEDLY


async def test_a_video_whose_job_was_lost_gets_another(client, config, database_url, real_mp4):
    token = await new_user_token(client)
    video_id = await uploaded(client, token, real_mp4)
    query(database_url, "DELETE FROM procrastinate_jobs")
    upkeep = Upkeep(create_job_app(config), client.server.app[DB_KEY], 30)
    assert await upkeep.requeue_lost() == 1
    assert await upkeep.requeue_lost() == 0  # one job per video
    await work(config, wait=False)
    assert (await video_of(client, video_id))["status"] == "ready"


async def test_a_worker_killed_mid_job_leaves_the_video_to_another(
        client, make_config, database_url, slow_clip, tmp_path):
    config = make_config(worker_stalled_after=2.0, transcode_preset="ultrafast")
    token = await new_user_token(client)
    video_id = await uploaded(client, token, slow_clip)
    env = {
        **os.environ, "DATABASE_URL": database_url, "STORAGE_DIR": str(config.storage_dir),
        "JWT_SECRET": "x" * 40, "WORKER_STALLED_AFTER": "2", "TRANSCODE_PRESET": "veryslow",
        "FFMPEG_THREADS": "1", "LOG_LEVEL": "INFO",
    }
    log = tmp_path / "victim.log"
    with log.open("wb") as out:
        victim = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", "worker", cwd=ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        # Mid-job: the transcode has reported progress.
        async with asyncio.timeout(60):
            while not (await video_of(client, video_id))["progress"]:
                assert victim.returncode is None, log.read_text()
                await asyncio.sleep(0.2)
        assert len(work_dirs(config)) == 1
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
    finally:
        if victim.returncode is None:
            victim.kill()
            await victim.wait()
    assert (await video_of(client, video_id))["status"] == "processing"
    assert query(database_url, "SELECT status FROM procrastinate_jobs") == [("doing",)]

    rescuer = asyncio.create_task(work(config))
    try:
        async with asyncio.timeout(90):
            while (video := await video_of(client, video_id))["status"] == "processing":
                assert not rescuer.done(), rescuer
                await asyncio.sleep(0.3)
    finally:
        rescuer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rescuer
    assert video["status"] == "ready", video
    assert video["video_codec"] == "h264"
    # The killed worker's job directory was swept.
    assert work_dirs(config) == []


# --- the schema --------------------------------------------------------------------------

async def test_procrastinate_schema_comes_with_our_migrations():
    with temporary_database("tubelet_pkg") as url:
        await migrate(url)
        assert query(url, "SELECT package, version FROM schema_packages") == [
            ("procrastinate", PackageSchema("procrastinate").version)]
        assert query(url, "SELECT to_regclass('procrastinate_jobs') IS NOT NULL") == [(True,)]
        assert await migrate(url) == []


@pytest.mark.parametrize("recorded, installed, expected", [
    ("3.10.0", "3.10.0", []),
    ("3.3.0", "3.10.0", ["03.04.00_01_pre_x.sql", "03.04.00_50_post_x.sql"]),
    ("3.4.0", "3.11.0", ["03.11.00_01_pre_y.sql"]),
    ("3.0.0", "3.2.0", ["03.01.00_01_pre_h.sql", "03.02.00_01_pre_b.sql"]),
])
def test_package_steps_are_those_between_the_versions(recorded, installed, expected):
    names = ["03.04.00_50_post_x.sql", "03.04.00_01_pre_x.sql", "03.11.00_01_pre_y.sql",
             "03.01.00_01_pre_h.sql", "03.02.00_01_pre_b.sql", "__init__.py"]
    assert package_steps(names, parse_version(recorded), parse_version(installed)) == expected


def test_the_queued_job_names_match_the_task():
    queries = (ROOT / "sql" / "queries" / "processing.sql").read_text()
    task = create_job_app(Config(jwt_secret="x" * 40)).tasks["process_video"]
    assert f"'{task.queue}', '{task.name}'" in queries


def test_the_packet_checksum_tells_a_re_encode(real_mp4, tmp_path):
    """The remux test relies on it: a re-encode changes the packets."""
    again = tmp_path / "again.mp4"
    subprocess.run([require_tool("ffmpeg"), "-v", "error", "-i", str(real_mp4), "-c:v",
                    "libx264", "-preset", "ultrafast", str(again)], check=True)
    assert video_bitstream_md5(again) != video_bitstream_md5(real_mp4)


@pytest.mark.parametrize("kind", ["file", "s3"])
async def test_a_relative_storage_dir_processes_like_an_absolute_one(
        aiohttp_client, make_config, real_mp4, tmp_path, monkeypatch, kind, request):
    """`storage`, the default STORAGE_DIR, is relative; ffmpeg runs in the job's directory."""
    from server.app import create_app

    monkeypatch.chdir(tmp_path)
    storage = None if kind == "file" else request.getfixturevalue("s3_location")
    config = make_config(storage_dir=Path("storage"), storage=storage)
    client = await aiohttp_client(create_app(config))
    token = await new_user_token(client)
    video_id = await uploaded(client, token, real_mp4)
    await work(config, wait=False)
    video = await video_of(client, video_id, token)
    assert video["status"] == "ready", video
    resp = await client.get(f"/videos/{video_id}/poster.jpg")
    assert resp.status == 200
