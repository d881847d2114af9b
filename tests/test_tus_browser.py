"""The upload page's tus-js-client in a real Chromium: a reload mid-upload, a dropped PATCH."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Page, Route, expect

from server.app import create_app
from server.core.config import Config

from .browser import sign_up
from .conftest import fake_mp4

# Chromium, closed before this module's `serve` stops its servers.
from .test_browser import browser  # noqa: F401 (fixture)

pytestmark = pytest.mark.browser

CHUNK = 256 * 1024
FILE_SIZE = 4 * 1024 * 1024 + 12_345
# Each PATCH waits this long in the browser before it goes out, so a reload lands mid-upload.
PATCH_DELAY = 0.15


@dataclass
class Seen:
    """The tus requests the server answered: method, path, Upload-Offset sent, status."""

    requests: list[tuple[str, str, int | None, int]] = field(default_factory=list)
    video_ids: list[int] = field(default_factory=list)

    async def record(self, request: web.Request, response: web.StreamResponse) -> None:
        if not request.path.startswith("/uploads"):
            return
        offset = request.headers.get("Upload-Offset")
        self.requests.append((request.method, request.path,
                              int(offset) if offset is not None else None, response.status))
        if "Tubelet-Video-Id" in response.headers:
            self.video_ids.append(int(response.headers["Tubelet-Video-Id"]))

    def of(self, method: str) -> list[tuple[str, str, int | None, int]]:
        return [r for r in self.requests if r[0] == method]


Serve = Callable[..., Awaitable[tuple[TestServer, Seen]]]


@pytest.fixture
def serve(aiohttp_server: Any, make_config: Callable[..., Config]) -> Serve:
    async def start(**overrides: Any) -> tuple[TestServer, Seen]:
        app = create_app(make_config(**overrides))
        seen = Seen()
        app.on_response_prepare.append(seen.record)
        return await aiohttp_server(app, shutdown_timeout=2.0), seen

    return start


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "holiday.mp4"
    path.write_bytes(fake_mp4(FILE_SIZE, seed=7))
    return path


def base_url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def slow_patches(page: Page, aborted: list[str] | None = None) -> None:
    """Delay every PATCH a little; with `aborted`, the first one after two is dropped."""
    count = 0

    async def handle(route: Route) -> None:
        nonlocal count
        if route.request.method != "PATCH":
            await route.continue_()
            return
        count += 1
        await asyncio.sleep(PATCH_DELAY)
        if aborted is not None and count == 3:
            aborted.append(route.request.headers.get("upload-offset", ""))
            await route.abort("connectionreset")
            return
        # The page may have been reloaded while this request waited.
        with contextlib.suppress(Exception):
            await route.continue_()

    await page.route(re.compile(r".*/uploads/[0-9a-f]{32}$"), handle)


async def choose(page: Page, path: Path, title: str | None = None) -> None:
    await page.evaluate(f"document.getElementById('upload-form').dataset.chunkBytes = '{CHUNK}'")
    if title is not None:
        await page.fill("input[name=title]", title)
    await page.set_input_files("input[name=file]", path)


def stored_bytes(database_url: str, storage_dir: Path, video_id: int) -> tuple[bytes, str]:
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cur:
        cur.execute("SELECT storage_key, original_key, status FROM videos WHERE id = %s",
                    (video_id,))
        key, original, status = cur.fetchone()
    conn.close()
    return (storage_dir / (original or key)).read_bytes(), status


async def until(check: Callable[[], bool], within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)


def page_problems(page: Page) -> list[str]:
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda msg: problems.append(msg.text)
            if "Content Security Policy" in msg.text else None)
    return problems


async def test_upload_resumes_after_the_page_is_reloaded(serve, browser, big_file,
                                                        database_url, make_config):
    server, seen = await serve()
    base = base_url(server)
    page = await browser.new_page()
    problems = page_problems(page)
    await sign_up(page, base, f"eve-{secrets.token_hex(3)}@example.com", "Eve")
    await page.goto(f"{base}/upload")
    await slow_patches(page)
    await choose(page, big_file, "Holiday, resumed")
    await page.click("button[type=submit]")
    await until(lambda: len([r for r in seen.of("PATCH") if r[3] == 204]) >= 4)
    assert float(await page.locator("#upload-progress").get_attribute("value") or 0) > 0

    # Reload mid-upload: the page forgets the File, the browser keeps the upload's URL.
    await page.reload()
    before = len(seen.requests)
    assert len(seen.of("POST")) == 1
    await slow_patches(page)
    await choose(page, big_file)
    await expect(page.locator("#upload-resume")).to_contain_text("resume")
    await expect(page.locator("input[name=title]")).to_have_value("Holiday, resumed")
    await page.click("button[type=submit]")
    await page.wait_for_url(re.compile(re.escape(base) + r"/watch/\d+$"), timeout=30_000)

    after = seen.requests[before:]
    upload_path = seen.of("POST")[0][1]
    assert [r for r in after if r[0] == "POST"] == []  # resumed, not created again
    heads = [r for r in after if r[0] == "HEAD"]
    assert heads and heads[0][3] == 200
    patches = [r for r in after if r[0] == "PATCH"]
    assert all(path.startswith(upload_path) for _, path, _, _ in after)
    # The first PATCH after the reload starts where the server had got to, not at zero.
    first_offset = patches[0][2]
    assert first_offset is not None and first_offset >= 4 * CHUNK
    assert patches[-1][3] == 204
    video_id = int(page.url.rsplit("/", 1)[1])
    assert seen.video_ids[-1] == video_id
    data, status = stored_bytes(database_url, make_config().storage_dir, video_id)
    assert hashlib.sha256(data).digest() == hashlib.sha256(big_file.read_bytes()).digest()
    assert status == "processing"
    # The upload left nothing to resume in the browser.
    stored = await page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('tus::'))")
    assert stored == []
    assert problems == []


async def test_a_dropped_patch_is_retried_from_where_the_server_got_to(serve, browser, big_file,
                                                                      database_url, make_config):
    server, seen = await serve()
    base = base_url(server)
    page = await browser.new_page()
    problems = page_problems(page)
    progress: list[float] = []
    await sign_up(page, base, f"fay-{secrets.token_hex(3)}@example.com", "Fay")
    await page.goto(f"{base}/upload")
    await page.expose_function("recordProgress", lambda value: progress.append(float(value)))
    await page.evaluate("""() => {
      const bar = document.getElementById('upload-progress');
      new MutationObserver(() => window.recordProgress(bar.value))
        .observe(bar, { attributes: true });
    }""")
    aborted: list[str] = []
    await slow_patches(page, aborted)
    await choose(page, big_file, "Dropped once")
    await page.click("button[type=submit]")
    await page.wait_for_url(re.compile(re.escape(base) + r"/watch/\d+$"), timeout=30_000)

    assert aborted == [str(2 * CHUNK)]
    # After the drop the client asked where to go on, and went on from there.
    methods = [r[0] for r in seen.requests]
    assert methods[0] == "POST" and "HEAD" in methods
    patches = seen.of("PATCH")
    assert [offset for _, _, offset, _ in patches] == list(range(0, FILE_SIZE, CHUNK))
    assert progress and progress[-1] == 100 and sorted(progress) == progress
    video_id = int(page.url.rsplit("/", 1)[1])
    data, _ = stored_bytes(database_url, make_config().storage_dir, video_id)
    assert data == big_file.read_bytes()
    assert problems == []
