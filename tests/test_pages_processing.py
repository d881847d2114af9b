"""Pages of videos in each processing state, rendered by the server (no browser).

Videos are moved between states by writing their rows directly, with a change
recorded on the change feed as the processing job does: these tests are about
what the pages show, not about how processing gets there.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from psycopg2 import sql

from server.core.keys import CHANGES_KEY, CONFIG_KEY, DB_KEY
from server.core.storage import new_storage_key, storage_path

from .conftest import fake_mp4, new_user_token, require_tool, upload
from .test_pages import HTML, Page, page

# The columns a test may set; names are checked against this before use.
SETTABLE = frozenset({
    "status", "failure_reason", "progress", "width", "height", "video_codec", "audio_codec",
    "storage_key", "content_type", "size", "duration", "poster_key", "storyboard_key",
    "storyboard_vtt_key",
})


async def set_video(app: web.Application, video_id: int, **columns: Any) -> None:
    """Write columns of a video row and record the change, as the processing job does."""
    assert columns and set(columns) <= SETTABLE, columns
    db, changes = app[DB_KEY], app[CHANGES_KEY]
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(name))
        for name in columns)
    statement = sql.SQL("UPDATE videos SET {}, processed_at = now() WHERE id = {}").format(
        assignments, sql.Placeholder("id"))
    async with db.transaction() as cur:
        await cur.execute(statement, {**columns, "id": video_id})
        assert cur.rowcount == 1
        seq = await changes.record(cur, video_id, "processed")
    changes.applied(video_id, seq)


@dataclass(frozen=True)
class Storyboard:
    """A storyboard as the pipeline makes one: a sprite of tiles and its WebVTT cues."""

    columns: int
    tile_width: int
    tile_height: int
    interval: float
    duration: float

    def cue_count(self) -> int:
        count = int(self.duration // self.interval)
        return count + (1 if self.duration - count * self.interval > 1e-6 else 0)

    def tile(self, index: int) -> tuple[int, int]:
        return ((index % self.columns) * self.tile_width,
                (index // self.columns) * self.tile_height)

    def vtt(self, sprite_url: str) -> str:
        lines = ["WEBVTT", ""]
        for index in range(self.cue_count()):
            start = index * self.interval
            end = min(self.duration, start + self.interval)
            x, y = self.tile(index)
            lines += [f"{stamp(start)} --> {stamp(end)}",
                      f"{sprite_url}#xywh={x},{y},{self.tile_width},{self.tile_height}", ""]
        return "\n".join(lines)


def stamp(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def make_artifacts(clip: Path, out: Path, board: Storyboard) -> tuple[Path, Path]:
    """A real poster JPEG and storyboard sprite made from `clip` by ffmpeg, once per session."""
    ffmpeg = require_tool("ffmpeg")
    poster, sprite = out / f"{clip.stem}-poster.jpg", out / f"{clip.stem}-sprite.jpg"
    if not poster.exists():
        subprocess.run([ffmpeg, "-v", "error", "-y", "-ss", "1.5", "-i", str(clip),
                        "-frames:v", "1", "-q:v", "4", str(poster)], check=True)
    if not sprite.exists():
        rows = -(-board.cue_count() // board.columns)
        # One frame from the middle of each interval, tiled left to right, top to bottom.
        tiles = (f"fps=1/{board.interval}:start_time={-board.interval / 2},"
                 f"scale={board.tile_width}:{board.tile_height},"
                 f"tile={board.columns}x{rows}")
        subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(clip), "-vf", tiles,
                        "-frames:v", "1", "-q:v", "5", str(sprite)], check=True)
    return poster, sprite


async def ready_with_files(app: web.Application, video_id: int, *, poster: bytes | None = None,
                     sprite: bytes | None = None, vtt: str | None = None,
                     **columns: Any) -> dict[str, str]:
    """Make a video ready with these files stored as its poster and storyboard."""
    storage_dir = app[CONFIG_KEY].storage_dir
    keys: dict[str, str] = {}
    for column, extension, data in (("poster_key", "jpg", poster),
                                    ("storyboard_key", "jpg", sprite),
                                    ("storyboard_vtt_key", "vtt",
                                     None if vtt is None else vtt.encode())):
        if data is not None:
            keys[column] = new_storage_key(extension)
            storage_path(storage_dir, keys[column]).write_bytes(data)
    await set_video(app, video_id, status="ready", progress=None, **keys, **columns)
    return keys


async def uploaded(client: Any, title: str = "A video", token: str | None = None) -> int:
    """A new upload, processing and with no worker to process it."""
    token = token or await new_user_token(client)
    resp = await upload(client, token, fake_mp4(4000), title=title)
    assert resp.status == 201, await resp.text()
    return int((await resp.json())["id"])


def cards(text: str) -> dict[str, str]:
    """The home page's cards, by title."""
    return {card.split('card-title">')[1].split("<")[0]: card
            for card in text.split('<li class="card">')[1:]}


def no_inline_code(parsed: Page) -> None:
    """Nothing the page's CSP would refuse: no inline scripts, handlers or style attributes."""
    for tag, attrs in parsed.elements:
        assert "style" not in attrs, (tag, attrs)
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "script":
            assert attrs.get("src"), "inline script"
        if tag == "style":
            raise AssertionError("inline style element")


# --- home ------------------------------------------------------------------

async def test_cards_of_ready_videos_show_their_posters(client):
    token = await new_user_token(client)
    title = '<b>"Sunrise" & sea</b>'
    with_poster = await uploaded(client, title, token)
    without_poster = await uploaded(client, "Old upload", token)
    await ready_with_files(client.app, with_poster, poster=b"\xff\xd8 not checked here",
                     width=1280, height=720, duration=61.0)
    # Videos from before processing existed are ready but have no poster.
    await set_video(client.app, without_poster, status="ready", progress=None)

    parsed, text, resp = await page(client, "/")
    image = parsed.find("img", src=f"/videos/{with_poster}/poster.jpg")
    assert image is not None
    assert image["class"] == "thumb-image"
    # The parser unescapes attributes: the title came through whole and as text.
    assert image["alt"] == title
    assert image["loading"] == "lazy"
    assert (image["width"], image["height"]) == ("1280", "720")
    assert '<b>"Sunrise"' not in text and "&lt;b&gt;" in text
    sunrise = next(card for key, card in cards(text).items() if "Sunrise" in key)
    assert '<span class="badge">1:01</span>' in sunrise
    old = cards(text)["Old upload"]
    assert "<img" not in old and "thumb-play" in old
    no_inline_code(parsed)
    # The poster the card names is on this origin, which the CSP's img-src allows.
    assert "img-src 'self'" in resp.headers["Content-Security-Policy"]


async def test_videos_not_ready_are_not_listed_for_anybody(client):
    token = await new_user_token(client)
    await uploaded(client, "Still processing", token)
    failed = await uploaded(client, "Broken upload", token)
    await set_video(client.app, failed, status="failed", progress=None,
                    failure_reason="The file ends before its first frame.")
    ready = await uploaded(client, "Finished one", token)
    await ready_with_files(client.app, ready)

    # The page is the same for everybody, its author included: only their
    # signed-in tab adds their own (the browser tests show that).
    for headers in (HTML, {**HTML, "Authorization": f"Bearer {token}"}):
        resp = await client.get("/", headers=headers)
        text = await resp.text()
        assert "Finished one" in text
        assert "Still processing" not in text and "Broken upload" not in text
        assert "ends before its first frame" not in text
    parsed, _, _ = await page(client, "/")
    section = parsed.find("section", id="my-uploads")
    assert section is not None and "hidden" in section
    assert any(tag == "script" and (attrs.get("src") or "").endswith("/home.js")
               for tag, attrs in parsed.elements)


# --- watch -----------------------------------------------------------------

async def test_ready_video_has_its_poster_and_storyboard(client):
    video_id = await uploaded(client, "Ready")
    await ready_with_files(client.app, video_id, poster=b"\xff\xd8", sprite=b"\xff\xd8",
                           vtt="WEBVTT\n")
    parsed, _, _ = await page(client, f"/watch/{video_id}")
    player = parsed.find("video", id="player")
    assert player is not None
    assert player["src"] == f"/videos/{video_id}/stream"
    assert player["poster"] == f"/videos/{video_id}/poster.jpg"
    assert player["preload"] == "metadata" and "controls" in player
    assert player["data-storyboard"] == f"/videos/{video_id}/storyboard.vtt"
    assert "hidden" not in player
    assert parsed.find("div", id="processing") is None
    failed = parsed.find("div", id="failed")
    assert failed is not None and "hidden" in failed
    assert parsed.find("article", data_status="ready") is not None
    no_inline_code(parsed)


async def test_ready_video_without_poster_has_a_plain_player(client):
    video_id = await uploaded(client, "Old")
    await set_video(client.app, video_id, status="ready", progress=None)
    parsed, _, _ = await page(client, f"/watch/{video_id}")
    player = parsed.find("video", id="player")
    assert player is not None and player["src"] == f"/videos/{video_id}/stream"
    assert "poster" not in player and "data-storyboard" not in player


async def test_processing_video_shows_its_progress_instead_of_a_player(client):
    video_id = await uploaded(client, "Coming soon")
    parsed, _, _ = await page(client, f"/watch/{video_id}")
    player = parsed.find("video", id="player")
    # No src: the stream of a video still processing answers 404.
    assert player is not None and "src" not in player and "hidden" in player
    panel = parsed.find("div", id="processing")
    assert panel is not None and panel["role"] == "status"
    assert "still being processed" in parsed.text_by_id["processing"]
    bar = parsed.find("progress", id="processing-progress")
    assert bar is not None and bar["value"] == "0.0" and bar["max"] == "1"
    assert parsed.text_by_id["processing-percent"] == "0%"
    assert parsed.find("article", data_status="processing") is not None

    await set_video(client.app, video_id, progress=0.375)
    parsed, _, _ = await page(client, f"/watch/{video_id}")
    assert parsed.find("progress", id="processing-progress")["value"] == "0.375"
    assert parsed.text_by_id["processing-percent"] == "38%"

    # Not known yet: an indeterminate bar rather than a made-up number.
    await set_video(client.app, video_id, progress=None)
    parsed, _, _ = await page(client, f"/watch/{video_id}")
    bar = parsed.find("progress", id="processing-progress")
    assert bar is not None and "value" not in bar
    no_inline_code(parsed)


async def test_failed_video_tells_nobody_why_in_the_page(client):
    token = await new_user_token(client)
    video_id = await uploaded(client, "Broken", token)
    reason = "The file is truncated: it ends 12 seconds in."
    await set_video(client.app, video_id, status="failed", progress=None,
                    failure_reason=reason)
    # Even with the author's token: the page is rendered alike for everyone, and
    # the author's own script asks the API for the reason.
    for headers in (HTML, {**HTML, "Authorization": f"Bearer {token}"}):
        resp = await client.get(f"/watch/{video_id}", headers=headers)
        assert resp.status == 200
        text = await resp.text()
        assert "truncated" not in text
        parsed = Page(text)
        assert "could not be processed" in parsed.text_by_id["failed"]
        assert "hidden" not in parsed.find("div", id="failed")
        reason_slot = parsed.find("p", id="failure-reason")
        assert reason_slot is not None and "hidden" in reason_slot
        assert parsed.text_by_id["failure-reason"] == ""
        player = parsed.find("video", id="player")
        assert player is not None and "src" not in player and "hidden" in player
    # The API tells the author, and only the author.
    resp = await client.get(f"/videos/{video_id}", headers={"Authorization": f"Bearer {token}"})
    assert (await resp.json())["failure_reason"] == reason
    resp = await client.get(f"/videos/{video_id}")
    assert (await resp.json())["failure_reason"] is None
    no_inline_code(parsed)
