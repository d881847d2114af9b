"""The web front end in a real headless Chromium against a real server on a socket."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, FormData
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, async_playwright, expect

from server.app import create_app
from server.core.config import Config
from server.core.keys import CONFIG_KEY
from server.core.storage import new_storage_key, storage_path
from server.ingest.jobs import work

from .browser import (
    ARTIFACTS,
    PASSWORD,
    SocketLog,
    StreamLog,
    api_module,
    desktop_user_agent,
    launch,
    make_seekable_clip,
    sign_up,
    throttle,
)
from .conftest import make_clip, make_ready, require_tool, session_upload
from .test_pages_processing import Storyboard, make_artifacts, ready_with_files, set_video

pytestmark = pytest.mark.browser

# Faster than the clip plays (about 150 KB/s) but far slower than loopback:
# playback is smooth, yet the last quarter is not fetched a second in.
THROTTLE = 256 * 1024
# A server that is shut down must not wait long for a throttled download.
SHUTDOWN_TIMEOUT = 2.0

Serve = Callable[..., Awaitable[TestServer]]


@pytest.fixture
def serve(aiohttp_server: Any, make_config: Callable[..., Config]) -> Serve:
    async def start(port: int | None = None, **overrides: Any) -> TestServer:
        return await aiohttp_server(create_app(make_config(**overrides)), port=port,
                                    shutdown_timeout=SHUTDOWN_TIMEOUT)

    return start


@pytest.fixture
async def browser(serve: Serve) -> AsyncIterator[Browser]:
    # Depends on `serve` so the browser closes before the servers stop.
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture(scope="session")
def seekable_mp4(media_dir: Path) -> Path:
    return make_seekable_clip(media_dir / "seekable.mp4")


def base_url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def watch_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


async def eventually(check: Callable[[], bool]) -> None:
    """Wait up to 5 s for something the page reports through an event."""
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the page did not report it within 5 s")


SEEK = """(fraction) => new Promise((resolve) => {
  const video = document.getElementById('player');
  video.addEventListener('seeked', () => resolve({
    time: video.currentTime, duration: video.duration, paused: video.paused,
  }), { once: true });
  video.currentTime = video.duration * fraction;
})"""


async def test_sign_up_upload_watch_seek_and_live_counts(serve, browser, seekable_mp4):
    server = await serve(view_min_watch=2.0, view_flush_interval=0.5)
    base = base_url(server)
    probe = await browser.new_page()
    agent = desktop_user_agent(await probe.evaluate("navigator.userAgent"))
    await probe.close()
    context = await browser.new_context(user_agent=agent,
                                        viewport={"width": 1100, "height": 900})
    page = await context.new_page()
    errors = watch_errors(page)
    email = f"ada-{secrets.token_hex(3)}@example.com"

    # Register (which signs in), log out where everybody can see, log in again.
    await sign_up(page, base, email, "Ada")
    await page.click("#logout")
    await expect(page.locator("#nav-login")).to_be_visible()
    await expect(page.locator("#nav-user")).to_be_hidden()
    assert await page.evaluate("sessionStorage.length") == 0
    await page.click("#nav-login")
    await page.wait_for_url(f"{base}/login")
    await page.fill("input[name=email]", email)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/")
    await expect(page.locator("#nav-user")).to_have_text("Ada")

    # Upload through the form; the bar reports progress and the page moves on.
    await page.click("a[href='/upload']")
    await page.wait_for_url(f"{base}/upload")
    progress: list[float] = []
    await page.expose_function("recordProgress", lambda value: progress.append(value))
    await page.evaluate("""() => {
      const bar = document.getElementById('upload-progress');
      new MutationObserver(() => window.recordProgress(bar.value))
        .observe(bar, { attributes: true });
    }""")
    await page.fill("input[name=title]", "Test pattern")
    await page.fill("textarea[name=description]", "Colour bars.\nAnd a tone.")
    await page.set_input_files("input[name=file]", seekable_mp4)
    streams = StreamLog()
    streams.attach(page)
    frames = SocketLog()
    frames.attach(page)
    await throttle(page, THROTTLE)
    await page.click("button[type=submit]")
    await page.wait_for_url(re.compile(re.escape(base) + r"/watch/\d+$"))
    await eventually(lambda: bool(progress) and progress[-1] == 100)
    watch_url = page.url

    # The upload is processed before anybody can play it: the page says so, and
    # becomes the player once the video is ready, without a reload.
    await expect(page.locator("#processing")).to_contain_text("still being processed")
    await make_ready(server.app, int(watch_url.rsplit("/", 1)[1]))
    await expect(page.locator("#player")).to_be_visible(timeout=6000)

    # The page is live: one viewer (us) before anything plays.
    await expect(page.locator("h1")).to_have_text("Test pattern")
    await expect(page.locator("#active-viewers")).to_have_text("1")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    await page.wait_for_function("() => document.getElementById('player').readyState >= 1")

    # Play, then seek to three quarters: the player asks for the range it lacks.
    await page.evaluate("() => document.getElementById('player').play()")
    await page.wait_for_function("() => document.getElementById('player').currentTime > 0.5")
    seek_started = time.monotonic()
    landed = await page.evaluate(SEEK, 0.75)
    assert landed["duration"] == pytest.approx(12, abs=0.2)
    assert landed["time"] == pytest.approx(0.75 * landed["duration"], abs=1.0)
    size = seekable_mp4.stat().st_size
    await eventually(lambda: any(e["at"] >= seek_started and e["status"] == 206
                                 for e in streams.entries))
    after_seek = [e for e in streams.entries if e["at"] >= seek_started and e["status"] == 206]
    starts = [int(re.fullmatch(r"bytes=(\d+)-\d*", e["range"])[1]) for e in after_seek]
    assert max(starts) >= size // 2, streams.entries
    assert all(e["status"] in (200, 206) for e in streams.entries)

    # The page told the server it was playing, from where it really was.
    await eventually(lambda: any(m.get("type") == "progress" and m.get("playing")
                                 and m.get("position", 0) >= 8
                                 for m in map(json.loads, frames.sent)))
    assert "auth" in {m["type"] for m in map(json.loads, frames.sent)}

    # A second viewer makes two; when they leave it is one again.
    other_context = await browser.new_context()
    other = await other_context.new_page()
    await other.goto(watch_url)
    await expect(other.locator("#active-viewers")).to_have_text("2")
    await expect(page.locator("#active-viewers")).to_have_text("2")
    await other_context.close()
    await expect(page.locator("#active-viewers")).to_have_text("1")

    # Two seconds of real playback (VIEW_MIN_WATCH here) counted as a view.
    await expect(page.locator("#views")).to_have_text("1", timeout=10_000)

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "watch-page.png")
    assert errors == []
    await context.close()


async def test_upload_explains_what_is_wrong(serve, browser, real_mp4, tmp_path):
    server = await serve(max_upload_bytes=200_000)
    base = base_url(server)
    page = await browser.new_page()
    errors = watch_errors(page)
    # Requests that carry an upload: tus's to /uploads, or a multipart POST.
    uploads: list[str] = []
    page.on("request", lambda r: uploads.append(r.method)
            if re.search(r"/uploads(/|$)|/videos/upload$", r.url)
            and r.method in ("POST", "PATCH") else None)
    await sign_up(page, base, f"bob-{secrets.token_hex(3)}@example.com", "Bob")
    await page.goto(f"{base}/upload")
    message = page.locator("#form-message")

    await page.fill("input[name=title]", "Too big")
    await page.set_input_files("input[name=file]", real_mp4)  # ~300 KB, limit 200 KB
    await page.click("button[type=submit]")
    await expect(message).to_contain_text("too large")
    await expect(message).to_contain_text("195 KB")
    assert uploads == []  # refused before a byte was sent

    notes = tmp_path / "notes.mp4"
    notes.write_text("These are my notes, not a video.\n" * 20)
    await page.set_input_files("input[name=file]", notes)
    await page.click("button[type=submit]")
    await expect(message).to_contain_text("not a video")
    assert uploads and uploads[0] == "POST"
    assert page.url == f"{base}/upload"
    await expect(page.locator("button[type=submit]")).to_be_enabled()
    assert errors == []


async def test_signed_out_upload_goes_to_login_and_back(serve, browser):
    server = await serve()
    base = base_url(server)
    page = await browser.new_page()
    await page.goto(f"{base}/upload")
    await page.wait_for_url(f"{base}/login?next=/upload")
    await page.fill("input[name=email]", "nobody@example.com")
    await page.fill("input[name=password]", "wrong password")
    await page.click("button[type=submit]")
    await expect(page.locator("#form-message")).to_contain_text("incorrect")
    assert await page.evaluate("sessionStorage.length") == 0


async def test_expired_access_token_is_refreshed_once(serve, browser):
    server = await serve(access_token_ttl=2)
    base = base_url(server)
    page = await browser.new_page()
    refreshes: list[int] = []
    page.on("response", lambda r: refreshes.append(r.status)
            if r.url.endswith("/auth/refresh") else None)
    await sign_up(page, base, f"cy-{secrets.token_hex(3)}@example.com", "Cy")
    module = await api_module(page)
    three_calls = """async (module) => {
      const { api } = await import(module);
      const calls = [1, 2, 3].map(() => api('/auth/me', { auth: true }));
      return Promise.all(calls.map(async (c) => (await c).status));
    }"""

    await asyncio.sleep(2.1)
    # Three requests at once with an expired token: one refresh, and all succeed.
    assert await page.evaluate(three_calls, module) == [200, 200, 200]
    assert refreshes == [200]
    # The rotated pair was kept: the next expiry refreshes with the new token
    # (reusing the old one would revoke the session).
    await asyncio.sleep(2.1)
    assert await page.evaluate(three_calls, module) == [200, 200, 200]
    assert refreshes == [200, 200]
    await page.reload()
    await expect(page.locator("#nav-user")).to_have_text("Cy")


async def test_live_widget_reconnects_when_the_server_comes_back(serve, browser, real_mp4):
    server = await serve()
    port = server.port
    async with ClientSession() as session:
        _, video_id = await session_upload(session, server, real_mp4.read_bytes())
    page = await browser.new_page()
    errors = watch_errors(page)
    await page.goto(f"{base_url(server)}/watch/{video_id}")
    widget = page.locator("#live")
    await expect(page.locator("#active-viewers")).to_have_text("1")

    await server.close()
    await expect(widget).to_have_attribute("data-state", "reconnecting")
    await asyncio.sleep(1.5)  # a few failed attempts while nobody listens
    await serve(port=port)
    await expect(widget).to_have_attribute("data-state", "live", timeout=15_000)
    await expect(page.locator("#active-viewers")).to_have_text("1")
    assert errors == []


# As an attacker would write them in a link to /login?next=...
HOSTILE_NEXT = [
    "/%09/evil.example/phish",  # the browser drops the tab: //evil.example/phish
    "/%0A/evil.example",
    "//evil.example",
    "/%5Cevil.example",  # /\evil.example
    "/%5C%5Cevil.example",
    "%2F%2Fevil.example",
    "%20//evil.example",
    "https://evil.example",
    "javascript:alert(1)",
    "/.//evil.example/phish",  # the path collapses to //evil.example/phish
    "/a/..//evil.example",
    "/%2e//evil.example",
]


async def test_login_goes_back_only_to_this_site(serve, browser):
    server = await serve(auth_rate_limit=1000)
    base = base_url(server)
    email = f"dee-{secrets.token_hex(3)}@example.com"
    async with ClientSession() as session, session.post(
            server.make_url("/auth/register"), json={"email": email, "password": PASSWORD}) as r:
        assert r.status == 201
    context = await browser.new_context()
    await context.route(re.compile(r"^[a-z]+://evil\.example"), lambda route: route.abort())
    page = await context.new_page()
    errors = watch_errors(page)
    navigations: list[str] = []
    page.on("request", lambda r: navigations.append(r.url) if r.is_navigation_request()
            else None)
    dialogs: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))

    async def log_in(next_param: str, lands_on: str) -> None:
        await page.goto(f"{base}/login?next={next_param}")
        await page.fill("input[name=email]", email)
        await page.fill("input[name=password]", PASSWORD)
        await page.click("button[type=submit]")
        await page.wait_for_url(lands_on, timeout=10_000)
        await page.evaluate("sessionStorage.clear()")

    for hostile in HOSTILE_NEXT:
        await log_in(hostile, f"{base}/")
    # Paths on this site are still followed, query included.
    await log_in("/watch/1", f"{base}/watch/1")
    await log_in("%2Fwatch%2F1%3Ft%3D3", f"{base}/watch/1?t=3")
    assert [url for url in navigations if not url.startswith(base + "/")] == []
    assert dialogs == [] and errors == []
    await context.close()


# --- processing states, posters, seek previews, media errors ---------------

# 12 one-second tiles of 160x90, four to a row: the storyboard of the 12 s clip.
BOARD = Storyboard(columns=4, tile_width=160, tile_height=90, interval=1.0, duration=12.0)
# A poster no frame of the clip looks like, so the test can tell it is showing.
POSTER_RGB = (40, 110, 220)
# Chromium's progress bar: this far from each side of the video box, and this
# far above its bottom edge (measured by clicking along it).
BAR_INSET = 22
BAR_FROM_BOTTOM = 14

CSP_WATCH = """() => {
  window.__cspViolations = [];
  document.addEventListener('securitypolicyviolation', (event) => {
    window.__cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
  });
}"""

# The mean colour of a PNG, decoded by the page itself (no imaging library here;
# an image, as the CSP's img-src allows data: URLs and its connect-src does not).
MEAN_RGB = """async (png) => {
  const image = new Image();
  image.src = `data:image/png;base64,${png}`;
  await image.decode();
  const canvas = new OffscreenCanvas(image.naturalWidth, image.naturalHeight);
  const context = canvas.getContext('2d');
  context.drawImage(image, 0, 0);
  const { data } = context.getImageData(0, 0, canvas.width, canvas.height);
  const sum = [0, 0, 0];
  for (let i = 0; i < data.length; i += 4) for (let c = 0; c < 3; c++) sum[c] += data[i + c];
  return sum.map((s) => s / (data.length / 4));
}"""


class Watcher:
    """Page errors, CSP violations (the event and the console's report) and responses."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors = watch_errors(page)
        self.console: list[str] = []
        self.responses: list[tuple[str, int, str]] = []
        page.on("console", lambda m: self.console.append(m.text)
                if "Content Security Policy" in m.text else None)
        page.on("response", lambda r: self.responses.append(
            (r.url, r.status, r.headers.get("content-type", ""))))

    async def start(self) -> None:
        await self.page.add_init_script(f"({CSP_WATCH})()")

    async def assert_clean(self) -> None:
        violations = await self.page.evaluate("window.__cspViolations")
        assert violations == [] and self.console == [], (violations, self.console)
        assert self.errors == []

    def fetched(self, suffix: str) -> list[tuple[int, str]]:
        return [(status, kind) for url, status, kind in self.responses if url.endswith(suffix)]


@pytest.fixture(scope="session")
def solid_poster(media_dir: Path) -> bytes:
    out = media_dir / "solid-poster.jpg"
    if not out.exists():
        colour = "0x{:02x}{:02x}{:02x}".format(*POSTER_RGB)
        subprocess.run([require_tool("ffmpeg"), "-v", "error", "-y", "-f", "lavfi", "-i",
                        f"color=c={colour}:s=640x360", "-frames:v", "1", "-q:v", "2", str(out)],
                       check=True)
    return out.read_bytes()


async def upload_as(server: TestServer, clip: Path, title: str,
                    email: str | None = None) -> tuple[str, int]:
    """(email, video id): a user who uploaded the clip; the video is processing."""
    email = email or f"author-{secrets.token_hex(3)}@example.com"
    creds = {"email": email, "password": PASSWORD}
    async with ClientSession() as session:
        async with session.post(server.make_url("/auth/register"), json=creds) as resp:
            assert resp.status in (201, 409), await resp.text()
        async with session.post(server.make_url("/auth/login"), json=creds) as resp:
            token = (await resp.json())["access_token"]
        video_id = await upload_with(session, server, token, clip.read_bytes(), title)
    return email, video_id


async def upload_with(session: ClientSession, server: TestServer, token: str, data: bytes,
                      title: str) -> int:
    form = FormData()
    form.add_field("title", title)
    form.add_field("file", io.BytesIO(data), filename="clip.mp4")
    async with session.post(server.make_url("/videos/upload"), data=form,
                            headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 201, await resp.text()
        return int((await resp.json())["id"])


async def ready_with_storyboard(server: TestServer, video_id: int, clip: Path, media_dir: Path,
                                poster: bytes) -> None:
    _, sprite = make_artifacts(clip, media_dir, BOARD)
    await ready_with_files(server.app, video_id, poster=poster, sprite=sprite.read_bytes(),
                     vtt=BOARD.vtt(f"/videos/{video_id}/storyboard.jpg"),
                     width=640, height=360, duration=BOARD.duration)


async def sign_in(page: Page, base: str, email: str, next_path: str) -> None:
    await page.goto(f"{base}/login?next={next_path}")
    await page.fill("input[name=email]", email)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}{next_path}")


async def bar_point(page: Page, seconds: float) -> tuple[float, float]:
    """Where on Chromium's progress bar `seconds` lies, in page pixels."""
    box = await page.locator("#player").bounding_box()
    assert box is not None
    duration = await page.evaluate("document.getElementById('player').duration")
    x = box["x"] + BAR_INSET + seconds / duration * (box["width"] - 2 * BAR_INSET)
    return x, box["y"] + box["height"] - BAR_FROM_BOTTOM


PREVIEW = """() => {
  const box = document.querySelector('.storyboard');
  if (!box || box.hidden) return null;
  const tile = box.querySelector('.storyboard-tile');
  return {
    time: Number(box.dataset.time), label: box.querySelector('.storyboard-time').textContent,
    position: tile.style.backgroundPosition, image: tile.style.backgroundImage,
    width: tile.offsetWidth, height: tile.offsetHeight,
  };
}"""


async def preview(page: Page) -> dict[str, Any] | None:
    return await page.evaluate(PREVIEW)


def tile_position(seconds: float) -> str:
    x, y = BOARD.tile(min(int(seconds // BOARD.interval), BOARD.cue_count() - 1))
    return f"{-x}px {-y}px"


async def test_ready_video_shows_its_poster_and_storyboard_previews(
        serve, browser, seekable_mp4, media_dir, solid_poster):
    server = await serve()
    base = base_url(server)
    _, video_id = await upload_as(server, seekable_mp4, "Test pattern")
    await ready_with_storyboard(server, video_id, seekable_mp4, media_dir, solid_poster)
    context = await browser.new_context(viewport={"width": 1100, "height": 900})
    page = await context.new_page()
    watcher = Watcher(page)
    await watcher.start()
    await page.goto(f"{base}/watch/{video_id}")
    player = page.locator("#player")
    await page.wait_for_function("() => document.getElementById('player').readyState >= 1")

    # Before anything plays, the player shows the poster, not a black box.
    assert await player.get_attribute("poster") == f"/videos/{video_id}/poster.jpg"
    await eventually(lambda: watcher.fetched("/poster.jpg") == [(200, "image/jpeg")])
    await page.mouse.move(5, 5)  # away from the player, so no controls cover it
    shot = await player.screenshot(type="png")
    mean = await page.evaluate(MEAN_RGB, base64.b64encode(shot).decode())
    assert all(abs(m - c) < 25 for m, c in zip(mean, POSTER_RGB, strict=True)), mean
    # The storyboard is fetched only when somebody shows interest.
    assert watcher.fetched("/storyboard.vtt") == []

    # Pointing at the bar shows the tile of the time under the pointer; clicking
    # there seeks to a time in the same tile, so the preview tells the truth.
    for seconds in (2.5, 7.5, 11.5):
        x, y = await bar_point(page, seconds)
        await page.mouse.move(x, y - 40)
        await page.mouse.move(x, y, steps=4)
        await page.wait_for_function(
            f"() => {{ const b = document.querySelector('.storyboard');"
            f" return b && !b.hidden && Math.abs(b.dataset.time - {seconds}) < 0.3; }}")
        shown = await preview(page)
        assert shown is not None
        assert shown["position"] == tile_position(shown["time"]), shown
        assert shown["image"] == f'url("{base}/videos/{video_id}/storyboard.jpg")'
        assert (shown["width"], shown["height"]) == (BOARD.tile_width, BOARD.tile_height)
        if seconds == 7.5:
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=ARTIFACTS / "watch-storyboard.png")
        await page.mouse.click(x, y)
        await page.wait_for_function(
            f"() => Math.abs(document.getElementById('player').currentTime - {seconds}) < 0.4")
        landed = await page.evaluate("document.getElementById('player').currentTime")
        assert tile_position(landed) == shown["position"], (landed, shown)
    assert watcher.fetched("/storyboard.vtt") == [(200, "text/vtt; charset=utf-8")]
    assert watcher.fetched("/storyboard.jpg") == [(200, "image/jpeg")]

    # Off the bar, no preview.
    box = await player.bounding_box()
    await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    await eventually_async(lambda: preview(page), None)

    # A seek from the keyboard shows where it landed, then the preview goes away.
    await page.evaluate("document.getElementById('player').currentTime = 1.95")
    await eventually_async(lambda: preview(page), None)
    await page.focus("#player")
    await page.keyboard.press("ArrowRight")
    await page.wait_for_function("() => document.getElementById('player').currentTime > 2")
    await page.wait_for_function("() => document.querySelector('.storyboard:not([hidden])')")
    shown = await preview(page)
    landed = await page.evaluate("document.getElementById('player').currentTime")
    assert shown is not None and shown["position"] == tile_position(landed), (shown, landed)
    await eventually_async(lambda: preview(page), None)

    await watcher.assert_clean()
    await context.close()


async def eventually_async(read: Callable[[], Awaitable[Any]], expected: Any) -> None:
    for _ in range(100):
        if await read() == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never became {expected!r}")


async def test_processing_video_turns_into_a_player_without_a_reload(
        serve, browser, seekable_mp4, media_dir, solid_poster):
    server = await serve()
    base = base_url(server)
    _, video_id = await upload_as(server, seekable_mp4, "Fresh upload")
    page = await browser.new_page()
    watcher = Watcher(page)
    await watcher.start()
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    await page.goto(f"{base}/watch/{video_id}")
    await expect(page.locator("#processing")).to_contain_text("still being processed")
    await expect(page.locator("#player")).to_be_hidden()
    await page.evaluate("window.__samePage = true")

    # The page polls the video and shows how far along it is.
    await set_video(server.app, video_id, progress=0.5)
    await expect(page.locator("#processing-percent")).to_have_text("50%", timeout=6000)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "watch-processing.png")
    assert await page.evaluate("document.getElementById('processing-progress').value") == 0.5

    await ready_with_storyboard(server, video_id, seekable_mp4, media_dir, solid_poster)
    await expect(page.locator("#player")).to_be_visible(timeout=6000)
    await expect(page.locator("#processing")).to_have_count(0)
    player = page.locator("#player")
    assert await player.get_attribute("poster") == f"/videos/{video_id}/poster.jpg"
    assert await page.evaluate("window.__samePage") is True
    assert navigations == [f"{base}/watch/{video_id}"]
    # The player plays, and its storyboard works like any other's.
    await page.evaluate("document.getElementById('player').play()")
    await page.wait_for_function("() => document.getElementById('player').currentTime > 0.5")
    await page.evaluate("document.getElementById('player').pause()")
    x, y = await bar_point(page, 5.5)
    await page.mouse.move(x, y - 40)
    await page.mouse.move(x, y, steps=4)
    await page.wait_for_function("() => document.querySelector('.storyboard:not([hidden])')")
    shown = await preview(page)
    assert shown is not None and shown["position"] == tile_position(shown["time"])
    # Nothing asked for the stream while it would have been a 404.
    assert all(status in (200, 206) for status, _ in watcher.fetched("/stream"))
    await watcher.assert_clean()


async def test_author_alone_sees_unfinished_videos_and_why_one_failed(
        serve, browser, seekable_mp4, media_dir, solid_poster):
    server = await serve()
    base = base_url(server)
    email, failed = await upload_as(server, seekable_mp4, "Broken upload")
    _, processing = await upload_as(server, seekable_mp4, "Still going", email)
    _, ready = await upload_as(server, seekable_mp4, "All done", email)
    reason = "The file ends before its first frame. <img src=x>"
    await set_video(server.app, failed, status="failed", progress=None, failure_reason=reason)
    await set_video(server.app, processing, progress=0.25)
    await ready_with_storyboard(server, ready, seekable_mp4, media_dir, solid_poster)

    # Anybody: only the ready video, with its poster, and no reason for the failure.
    page = await browser.new_page()
    watcher = Watcher(page)
    await watcher.start()
    await page.goto(f"{base}/")
    poster = page.locator(f"img.thumb-image[src='/videos/{ready}/poster.jpg']")
    await expect(poster).to_have_attribute("alt", "All done")
    await page.wait_for_function("() => document.querySelector('img.thumb-image').naturalWidth > 0")
    await expect(page.locator("#my-uploads")).to_be_hidden()
    assert await page.locator(".card").count() == 1
    await page.goto(f"{base}/watch/{failed}")
    await expect(page.locator("#failed")).to_contain_text("could not be processed")
    await page.wait_for_load_state("networkidle")
    await expect(page.locator("#failure-reason")).to_be_hidden()
    await watcher.assert_clean()
    await page.close()

    # The author: their unfinished uploads on the home page, and the reason.
    page = await browser.new_page()
    watcher = Watcher(page)
    await watcher.start()
    await sign_in(page, base, email, "/")
    mine = page.locator("#my-uploads")
    await expect(mine).to_be_visible()
    await expect(mine.locator(".card")).to_have_count(2)
    await expect(mine.locator(f"a[href='/watch/{processing}']")).to_contain_text("Processing… 25%")
    await expect(mine.locator(f"a[href='/watch/{failed}']")).to_contain_text("Failed")
    await expect(page.locator("#videos .card")).to_have_count(1)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "home-my-uploads.png")
    # The one still processing is followed until it is ready.
    await ready_with_storyboard(server, processing, seekable_mp4, media_dir, solid_poster)
    card = mine.locator(f"a[href='/watch/{processing}']")
    await expect(card).to_contain_text("Ready", timeout=10_000)
    await expect(card.locator("img.thumb-image")).to_have_attribute("alt", "Still going")

    await page.goto(f"{base}/watch/{failed}")
    why = page.locator("#failure-reason")
    await expect(why).to_have_text(f"Why: {reason}")
    assert await page.locator("#failed img").count() == 0  # shown as text, never as markup
    await watcher.assert_clean()
    await page.close()


async def test_processing_that_fails_tells_the_author_without_a_reload(
        serve, browser, seekable_mp4):
    server = await serve()
    base = base_url(server)
    email, video_id = await upload_as(server, seekable_mp4, "Doomed")
    page = await browser.new_page()
    watcher = Watcher(page)
    await watcher.start()
    await sign_in(page, base, email, f"/watch/{video_id}")
    await expect(page.locator("#processing")).to_be_visible()
    await set_video(server.app, video_id, status="failed", progress=None,
                    failure_reason="Audio only: there is no picture to show.")
    await expect(page.locator("#failure-reason")).to_have_text(
        "Why: Audio only: there is no picture to show.", timeout=6000)
    await expect(page.locator("#processing")).to_have_count(0)
    await expect(page.locator("#player")).to_be_hidden()
    await watcher.assert_clean()


async def test_a_file_the_browser_cannot_play_gets_a_message(serve, browser, seekable_mp4):
    server = await serve()
    base = base_url(server)
    _, video_id = await upload_as(server, seekable_mp4, "Not really a video")
    storage_dir = server.app[CONFIG_KEY].storage_dir
    key = new_storage_key("mp4")
    junk = b"\x00\x00\x00\x18ftypisom" + b"this is not a movie, only words. " * 2000
    storage_path(storage_dir, key).write_bytes(junk)
    await set_video(server.app, video_id, status="ready", progress=None, storage_key=key,
                    size=len(junk), content_type="video/mp4")
    page = await browser.new_page()
    watcher = Watcher(page)
    await watcher.start()
    await page.goto(f"{base}/watch/{video_id}")
    problem = page.locator("#playback-problem")
    await expect(problem).to_be_visible()
    await expect(page.locator("#playback-message")).to_contain_text(
        "can't be played in your browser")
    await expect(page.locator("#playback-detail")).to_contain_text("Media error 4")
    # Trying again would not help a file like this one.
    await expect(page.locator("#playback-retry")).to_be_hidden()
    await watcher.assert_clean()


async def test_a_lost_connection_can_be_retried(serve, browser, seekable_mp4):
    server = await serve()
    base = base_url(server)
    _, video_id = await upload_as(server, seekable_mp4, "Flaky link")
    await set_video(server.app, video_id, status="ready", progress=None)
    page = await browser.new_page()
    watcher = Watcher(page)
    await watcher.start()
    # A slow link, so the part after the seek is certainly not buffered yet when the
    # connection drops, however slowly this test runs.
    await throttle(page, THROTTLE)
    await page.goto(f"{base}/watch/{video_id}")
    await page.wait_for_function("() => document.getElementById('player').readyState >= 1")
    # From now on the stream's requests fail as a dropped link would.
    broken = True

    async def stream(route: Any) -> None:
        if broken:
            await route.abort("connectionreset")
        else:
            await route.continue_()

    await page.route(re.compile(r".*/stream$"), stream)
    await page.evaluate("""() => {
      const player = document.getElementById('player');
      player.currentTime = 9; player.play().catch(() => {});
    }""")
    await expect(page.locator("#playback-retry")).to_be_visible(timeout=20_000)
    await expect(page.locator("#playback-message")).to_contain_text("stopped loading")
    broken = False
    await page.click("#playback-retry")
    await expect(page.locator("#playback-problem")).to_be_hidden()
    await page.wait_for_function("() => document.getElementById('player').currentTime > 9.3",
                                 timeout=10_000)
    await watcher.assert_clean()


PARSE_STORYBOARDS = """async ([module, files]) => {
  const { parseStoryboard, cueAt } = await import(module);
  const base = `${location.origin}/videos/7/storyboard.vtt`;
  const parsed = files.map((text) => parseStoryboard(text, base));
  const cues = parsed[0];
  const at = [0, 2.49, 2.5, 61, 3600.5, 99999].map((t) => cueAt(cues, t)?.start ?? null);
  return { parsed, at, none: cueAt([], 3) };
}"""


async def test_storyboard_files_are_read_as_written(serve, browser):
    server = await serve()
    page = await browser.new_page()
    await page.goto(base_url(server) + "/")
    module = (await api_module(page)).replace("/api.js", "/storyboard.js")
    origin = base_url(server)
    files = [
        # CRLF, a cue id, cue settings, relative and absolute URLs, hours, a
        # cue without a tile (skipped), a NOTE block, and cues out of order.
        "\ufeffWEBVTT - storyboard\r\n\r\n1\r\n00:00:00.000 --> 00:00:02.500 align:start\r\n"
        "/videos/7/storyboard.jpg#xywh=0,0,160,90\r\n\r\n"
        "1:00:00.000 --> 1:00:01.500\nhttps://elsewhere.example/s.jpg#xywh=pixel:1,2,3,4\n\n"
        "NOTE made by a test\n\n"
        "00:01.000 --> 00:02.000\nsprite.jpg\n\n"
        "01:00.000 --> 01:02.000\nstoryboard.jpg#xywh=160,0,160,90\n\n"
        "00:00:02.500 --> 00:01:00.000\nstoryboard.jpg#xywh=320,0,160,90\n",
        "not a WebVTT file\n\n00:00.000 --> 00:01.000\nx.jpg#xywh=0,0,1,1\n",
        "WEBVTT\n\nbroken --> 00:01.000\nx.jpg#xywh=0,0,1,1\n\n"
        "00:00.000 --> 00:01.000\nx.jpg#xywh=0,0,1\n",
    ]
    result = await page.evaluate(PARSE_STORYBOARDS, [module, files])
    sprite = f"{origin}/videos/7/storyboard.jpg"
    assert result["parsed"][0] == [
        {"start": 0, "end": 2.5, "image": sprite, "x": 0, "y": 0, "w": 160, "h": 90},
        {"start": 2.5, "end": 60, "image": sprite, "x": 320, "y": 0, "w": 160, "h": 90},
        {"start": 60, "end": 62, "image": sprite, "x": 160, "y": 0, "w": 160, "h": 90},
        {"start": 3600, "end": 3601.5, "image": "https://elsewhere.example/s.jpg",
         "x": 1, "y": 2, "w": 3, "h": 4},
    ]
    assert result["parsed"][1] == [] and result["parsed"][2] == []
    # The cue at a time is the last to start by then: the very end keeps its frame.
    assert result["at"] == [0, 0, 2.5, 60, 3600, 3600]
    assert result["none"] is None


# --- what a phone records, after processing ------------------------------------

async def test_a_phone_hevc_mov_plays_in_chromium_once_processed(serve, browser, media_dir):
    """H.265 in a .mov with its index at the end: Chromium cannot decode it as uploaded;
    processed, the same upload plays (frames decoded, the playhead moving)."""
    clip = make_clip(
        media_dir, "phone-browser.mov", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=330", "-t", "4", "-c:v", "libx265",
        "-preset", "ultrafast", "-x265-params", "log-level=error", "-tag:v", "hvc1",
        "-c:a", "aac", "-shortest", "-f", "mov")
    server = await serve()
    _, video_id = await upload_as(server, clip, "From a phone")
    await work(server.app[CONFIG_KEY], wait=False)

    context = await browser.new_context()
    page = await context.new_page()
    errors = watch_errors(page)
    await page.goto(f"{base_url(server)}/watch/{video_id}")
    hevc = await page.evaluate(
        "document.createElement('video').canPlayType('video/mp4; codecs=\"hvc1.1.6.L93.B0\"')")
    assert hevc == ""  # why the upload could not be served as it came
    await page.evaluate("() => { const v = document.querySelector('video');"
                        " v.muted = true; return v.play(); }")
    await page.wait_for_function(
        "() => { const v = document.querySelector('video');"
        " return v.videoWidth > 0 && v.currentTime > 0.5; }", timeout=20_000)
    assert await page.evaluate("document.querySelector('video').videoWidth") == 320
    assert errors == []
    await context.close()
