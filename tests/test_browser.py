"""The web front end in a real headless Chromium against a real server on a socket."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, async_playwright, expect

from server.app import create_app
from server.core.config import Config

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
from .conftest import session_upload

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
    uploads: list[str] = []
    page.on("request", lambda r: uploads.append(r.method) if r.url.endswith("/upload")
            and r.method == "POST" else None)
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
    assert uploads == ["POST"]
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
