"""Row f: HTTP requests for the video before Chromium shows a ready video's first frame.

Headless Chromium (Debian's, driven by Playwright) opens the watch page of a
video the worker made ready, on a link emulated at LATENCY_MS of latency and
THROUGHPUT_BYTES a second (Chrome DevTools' network conditions). A script
installed before the page's own (first_frame.js) starts the player muted once
the document is parsed and reports when it has its first data (`loadeddata`)
and its first frame on screen (`requestVideoFrameCallback`; `loadeddata` where
that is missing). Only requests for the video's stream count, not the page, its
scripts, its poster or its storyboard. A faststart file needs one: its first
range response holds the `moov` index and the first frames.

For contrast, the same measure for the upload as it came (its `moov` after the
media), served by the aiohttp FileResponse peer with a page of its own holding
nothing but a <video>: a player must look at the end of such a file before it
can decode.
Each trial uses a fresh browser context, so nothing comes from the HTTP cache.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .report import Row

HERE = Path(__file__).resolve().parent
PROBE = HERE / "first_frame.js"
LATENCY_MS = 100
THROUGHPUT_BYTES = 10_000_000 // 8
# Requests before the first frame a faststart file should need.
TARGET = 1
WAIT_SECONDS = 60.0
# No sandbox (containers), no GPU, and nothing that would try to reach the network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]

Log = Callable[[str], None]


def chromium_missing() -> str | None:
    """Why row f cannot run here, or None."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[dev]')"
    if chromium_binary() is None:
        return "Chromium is not installed (apt-get install chromium)"
    return None


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Trial:
    """One page load: the stream requests and the player's events, in seconds on our clock."""

    page: str
    requests: list[tuple[float, str | None]] = field(default_factory=list)  # (at, Range)
    events: dict[str, float] = field(default_factory=dict)
    in_page_ms: dict[str, float] = field(default_factory=dict)  # since navigation start
    frame_event: str = "frame"

    @property
    def first_frame(self) -> float:
        return self.events[self.frame_event]

    @property
    def before_frame(self) -> list[tuple[float, str | None]]:
        return [r for r in self.requests if r[0] <= self.first_frame]

    def ms_after_first_request(self, event: str) -> float:
        return (self.events[event] - self.requests[0][0]) * 1000

    def as_json(self) -> dict[str, Any]:
        start = self.requests[0][0]
        return {
            "page": self.page,
            "requests_before_first_frame": len(self.before_frame),
            "ranges": [{"ms": round((at - start) * 1000, 1), "range": rng}
                       for at, rng in self.requests],
            "first_frame_event": self.frame_event,
            "ms_after_first_stream_request": {
                name: round((at - start) * 1000, 1) for name, at in self.events.items()},
            "ms_after_navigation_start": {k: round(v, 1) for k, v in self.in_page_ms.items()},
        }


async def measure(browser: Any, url: str, stream_path: str, label: str) -> Trial:
    """Open `url` in a fresh context on the emulated link; note the stream's requests and the
    player's events until its first frame is shown."""
    trial = Trial(label)
    context = await browser.new_context()
    try:
        page = await context.new_page()
        shown = asyncio.Event()
        loaded = asyncio.Event()

        def on_request(request: Any) -> None:
            if urlsplit(request.url).path == stream_path:
                trial.requests.append((time.monotonic(), request.headers.get("range")))

        def on_mark(name: str, page_ms: float, detail: str | None) -> None:
            trial.events.setdefault(name, time.monotonic())
            trial.in_page_ms.setdefault(name, page_ms)
            if name == "error":
                trial.frame_event = f"error: {detail}"
                loaded.set()
            if name == "loadeddata":
                loaded.set()
            if name in {"frame", "error"} or (name == "loadeddata"
                                              and "no-frame-callback" in trial.events):
                shown.set()

        page.on("request", on_request)
        await page.expose_function("benchMark", on_mark)
        await page.add_init_script(path=str(PROBE))
        cdp = await context.new_cdp_session(page)
        await cdp.send("Network.enable")
        await cdp.send("Network.emulateNetworkConditions", {
            "offline": False, "latency": LATENCY_MS,
            "downloadThroughput": THROUGHPUT_BYTES, "uploadThroughput": THROUGHPUT_BYTES,
        })
        await page.goto(url)
        try:
            await asyncio.wait_for(shown.wait(), WAIT_SECONDS)
            # The frame callback may run before loadeddata is dispatched.
            await asyncio.wait_for(loaded.wait(), WAIT_SECONDS)
        except TimeoutError:
            raise RuntimeError(f"{label}: no first frame within {WAIT_SECONDS:.0f} s; "
                               f"events {trial.in_page_ms}") from None
        if trial.frame_event.startswith("error"):
            raise RuntimeError(f"{label}: the player failed ({trial.frame_event})")
        if "frame" not in trial.events:
            trial.frame_event = "loadeddata"
        if not trial.requests:
            raise RuntimeError(f"{label}: a frame was shown with no request for {stream_path}")
    finally:
        await context.close()
    return trial


async def _trials(rounds: int, base: str, video_id: int, peer: str | None,
                  log: Log) -> dict[str, list[Trial]]:
    from playwright.async_api import async_playwright

    found: dict[str, list[Trial]] = {"watch": [], "original": []}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_binary(),
                                                   args=CHROMIUM_ARGS)
        try:
            # Unrecorded: the browser's first video pays for starting its media stack.
            await measure(browser, f"{base}/watch/{video_id}", f"/videos/{video_id}/stream",
                          "warm-up")
            for n in range(rounds):
                watch = await measure(browser, f"{base}/watch/{video_id}",
                                      f"/videos/{video_id}/stream", "watch page")
                found["watch"].append(watch)
                line = (f"  f) round {n + 1}/{rounds}: watch page {len(watch.before_frame)} "
                        f"stream request(s) before the first frame, shown "
                        f"{watch.ms_after_first_request(watch.frame_event):.0f} ms after "
                        f"the first")
                if peer is not None:
                    original = await measure(browser, f"{peer}/", "/file", "original upload")
                    found["original"].append(original)
                    line += (f"; original upload {len(original.before_frame)}, shown "
                             f"{original.ms_after_first_request(original.frame_event):.0f} ms "
                             f"after the first")
                log(line)
        finally:
            await browser.close()
    return found


def run(args: argparse.Namespace, base: str, video_id: int, what: str, peer: str | None,
        log: Log) -> Row:
    """`what` describes the ready video; `peer`, the FileResponse peer's base URL, serves its
    upload as it came at /file and a bare page for it at /."""
    found = asyncio.run(_trials(args.media_rounds, base, video_id, peer, log))
    watch = found["watch"]
    counts = [len(t.before_frame) for t in watch]
    count = statistics.median(counts)
    link = f"{LATENCY_MS} ms latency, {THROUGHPUT_BYTES * 8 / 1e6:g} Mbit/s"
    note = f"{what}; Chromium on an emulated {link}; {_summary(watch)}"
    if found["original"]:
        note += (". The upload as it came (moov at the end), by FileResponse to a bare page: "
                 + _summary(found["original"]))
    if any(t.frame_event != "frame" for t in watch):
        note += "; no requestVideoFrameCallback: first frame = loadeddata"
    shown = f"{count:g}" if max(counts) == count else f"{count:g} (max {max(counts)})"
    return Row(
        key="f", what="stream requests before Chromium's first frame", unit="requests",
        tubelet=count, shown=shown, target=f"{TARGET}", passed=max(counts) <= TARGET,
        note=f"{note}; median of {len(watch)}",
        detail={"video": what, "link": {"latency_ms": LATENCY_MS,
                                        "download_bytes_per_s": THROUGHPUT_BYTES},
                "watch": [t.as_json() for t in watch],
                "original": [t.as_json() for t in found["original"]]},
    )


def _summary(trials: list[Trial]) -> str:
    count = statistics.median(len(t.before_frame) for t in trials)
    data = statistics.median(t.ms_after_first_request("loadeddata") for t in trials)
    frame = statistics.median(t.ms_after_first_request(t.frame_event) for t in trials)
    return (f"{count:g} request{'' if count == 1 else 's'}, loadeddata {data:.0f} ms and "
            f"first frame {frame:.0f} ms after the first")
