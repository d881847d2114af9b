"""Driving Debian's Chromium with Playwright: launching, signing up, watching the network."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, Playwright, Response, expect

from .conftest import require_tool

# No sandbox (containers), no GPU, and nothing that would try to reach the network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


async def launch(playwright: Playwright) -> Browser:
    return await playwright.chromium.launch(executable_path=require_tool("chromium"),
                                            args=CHROMIUM_ARGS)


def desktop_user_agent(headless_agent: str) -> str:
    """The agent a person's Chrome sends: the server never counts views from headless ones."""
    return headless_agent.replace("HeadlessChrome", "Chrome")


def make_seekable_clip(out: Path) -> Path:
    """12 s of H.264 with a keyframe every second and its moov atom at the end.

    Large enough (about 1.5 MB) that a browser on a throttled link has not
    fetched the last quarter by the time the test seeks there, so the seek
    needs a new range request.
    """
    if not out.exists():
        ffmpeg = require_tool("ffmpeg")
        subprocess.run(
            [ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
             "-f", "lavfi", "-i", "sine=frequency=440", "-t", "12",
             "-vf", "noise=alls=12:allf=t", "-c:v", "libx264", "-preset", "ultrafast",
             "-crf", "30", "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
             str(out)],
            check=True,
        )
    return out


async def throttle(page: Page, bytes_per_second: int) -> None:
    """Limit what the page downloads; uploads stay unthrottled."""
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Network.enable")
    await cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 20,
        "downloadThroughput": bytes_per_second, "uploadThroughput": -1,
    })


@dataclass
class StreamLog:
    """Every response to a /stream request the page made, in order of arrival."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("response", self._record)

    def _record(self, response: Response) -> None:
        if response.url.endswith("/stream"):
            self.entries.append({
                "at": time.monotonic(),
                "status": response.status,
                "range": response.request.headers.get("range"),
            })


@dataclass
class SocketLog:
    """Every JSON frame the page sent over its WebSockets."""

    sent: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("websocket", lambda ws: ws.on("framesent", self._record))

    def _record(self, payload: str | bytes) -> None:
        self.sent.append(payload if isinstance(payload, str) else payload.decode())


async def sign_up(page: Page, base: str, email: str, name: str) -> None:
    """Register through the form; the page signs in and goes home."""
    await page.goto(f"{base}/register")
    await page.fill("input[name=email]", email)
    await page.fill("input[name=name]", name)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/")
    await expect(page.locator("#nav-user")).to_have_text(name)


async def api_module(page: Page) -> str:
    """The URL of the page's own api.js, so a test can import the very same module."""
    src = await page.get_attribute("script[src$='/nav.js']", "src")
    assert src is not None
    return src.replace("/nav.js", "/api.js")
