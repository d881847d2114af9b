"""The server-rendered pages and HTML error pages, over real HTTP (no browser)."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from aiohttp import web

from server.app import create_app
from server.web.pages import PAGE_SIZE, format_ago, format_count, format_duration

from .conftest import fake_mp4, new_user_token, upload_ready

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


class Page(HTMLParser):
    """Elements with their attributes, and the text inside elements that have an id."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text_by_id: dict[str, str] = {}
        self._open: list[str | None] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        if tag not in {"meta", "link", "input", "br", "img", "source"}:
            self._open.append(attributes.get("id"))
            if attributes.get("id"):
                self.text_by_id[attributes["id"]] = ""

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for element_id in self._open:
            if element_id:
                self.text_by_id[element_id] += data

    def find(self, tag: str, **attrs: str) -> dict[str, str | None] | None:
        for name, attributes in self.elements:
            wanted = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
            if name == tag and all(attributes.get(k) == v for k, v in wanted.items()):
                return attributes
        return None


async def page(client: Any, path: str, status: int = 200) -> tuple[Page, str, Any]:
    resp = await client.get(path, headers=HTML)
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "text/html"
    return Page(text), text, resp


async def uploaded(client: Any, title: str = "A video", description: str = "",
                   token: str | None = None) -> dict[str, Any]:
    """A video uploaded and made ready as it came."""
    token = token or await new_user_token(client)
    return await upload_ready(client, token, fake_mp4(4000), title=title,
                              description=description)


# --- pages -----------------------------------------------------------------

async def test_every_page_is_phone_ready_html(client):
    for path in ("/", "/login", "/register", "/upload"):
        parsed, _, resp = await page(client, path)
        viewport = parsed.find("meta", name="viewport")
        assert viewport is not None and "width=device-width" in (viewport["content"] or "")
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        # No third-party fonts or scripts: every asset comes from this server.
        for tag, attrs in parsed.elements:
            for attr in ("src", "href"):
                value = attrs.get(attr)
                if value and tag in {"script", "link"}:
                    assert value.startswith("/"), value


async def test_home_lists_latest_videos(client):
    token = await new_user_token(client)
    first = await uploaded(client, "First clip", token=token)
    second = await uploaded(client, "Second clip", token=token)
    parsed, text, _ = await page(client, "/")
    assert text.index("Second clip") < text.index("First clip")
    assert parsed.find("a", href=f"/watch/{first['id']}") is not None
    assert parsed.find("a", href=f"/watch/{second['id']}") is not None
    assert second["author_name"] in text
    assert "0 views" in text


async def test_home_paginates(client):
    token = await new_user_token(client)
    ids = [(await uploaded(client, f"Clip number {n}", token=token))["id"]
           for n in range(PAGE_SIZE + 2)]
    parsed, text, _ = await page(client, "/")
    shown = {int(m) for m in re.findall(r'href="/watch/(\d+)"', text)}
    assert shown == set(ids[-PAGE_SIZE:])
    older = parsed.find("a", rel="next")
    assert older is not None
    parsed, text, _ = await page(client, older["href"])
    shown = {int(m) for m in re.findall(r'href="/watch/(\d+)"', text)}
    assert shown == set(ids[:2])
    assert parsed.find("a", rel="next") is None
    assert parsed.find("a", href="/") is not None


async def test_home_when_empty_invites_an_upload(client):
    parsed, _, _ = await page(client, "/")
    assert parsed.find("a", href="/upload") is not None
    assert parsed.find("a", rel="next") is None


async def test_bad_cursor_is_a_friendly_400(client):
    _, text, _ = await page(client, "/?cursor=abc", status=400)
    assert "broken" in text


async def test_watch_page_has_player_and_live_widget(client):
    video = await uploaded(client, "My holiday", "Day one.\nDay two.")
    parsed, text, _ = await page(client, f"/watch/{video['id']}")
    player = parsed.find("video", id="player")
    assert player is not None
    assert player["src"] == f"/videos/{video['id']}/stream"
    assert "controls" in player and player["preload"] == "metadata"
    assert parsed.text_by_id["views"].strip() == "0"
    assert parsed.text_by_id["active-viewers"].strip() == ""  # filled in by the socket
    assert "My holiday" in text and "Day one.\nDay two." in text
    assert parsed.find("script", type="module") is not None


async def test_user_text_is_escaped(client):
    video = await uploaded(client, "<script>alert(1)</script>", "<img src=x onerror=alert(2)>")
    for path in ("/", f"/watch/{video['id']}"):
        _, text, _ = await page(client, path)
        assert "<script>alert(1)</script>" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
        assert "<img src=x" not in text


async def test_forms(client):
    for path, button in (("/login", "Log in"), ("/register", "Register")):
        parsed, text, _ = await page(client, path)
        form = parsed.find("form", id="auth-form")
        # Posted, never GET: a failed script must not put the password in a URL.
        assert form is not None and form["method"] == "post"
        assert parsed.find("input", name="email") is not None
        assert parsed.find("input", name="password", type="password") is not None
        assert parsed.find("button", type="submit") is not None
        assert f">{button}</button>" in text
    parsed, _, _ = await page(client, "/upload")
    form = parsed.find("form", id="upload-form")
    assert form is not None and form["data-max-bytes"] == str(4 * 1024**3)
    assert parsed.find("input", name="title") is not None
    assert parsed.find("textarea", name="description") is not None
    assert parsed.find("input", type="file", name="file") is not None
    assert parsed.find("progress", id="upload-progress") is not None


async def test_static_assets_are_versioned_and_cached(client):
    _, text, _ = await page(client, "/")
    urls = re.findall(r'(?:src|href)="(/static/[^"]+)"', text)
    assert any(u.endswith("/site.css") for u in urls) and any(u.endswith("/nav.js") for u in urls)
    for url in urls:
        resp = await client.get(url)
        assert resp.status == 200, url
        assert "immutable" in resp.headers["Cache-Control"]
    js = await client.get(next(u for u in urls if u.endswith("/nav.js")))
    assert js.content_type in {"text/javascript", "application/javascript"}
    # Pages themselves change with every upload and are never cached.
    resp = await client.get("/")
    assert resp.headers["Cache-Control"] == "no-store"


async def test_pages_may_open_sockets_only_to_their_own_host(client):
    resp = await client.get("/", headers=HTML)
    policy = resp.headers["Content-Security-Policy"]
    host = f"127.0.0.1:{client.port}"
    assert f"connect-src 'self' ws://{host} wss://{host};" in policy
    resp = await client.get("/", headers={**HTML, "Host": "x; script-src *"})
    policy = resp.headers["Content-Security-Policy"]
    assert "script-src" not in policy and "connect-src 'self';" in policy


# --- errors ----------------------------------------------------------------

@pytest.mark.parametrize("path", ["/watch/999999", "/watch/abc", "/watch/0", "/no/such/page"])
async def test_not_found_pages_are_friendly(client, path):
    parsed, text, _ = await page(client, path, status=404)
    assert "couldn" in text and "find" in text
    assert parsed.find("a", href="/") is not None


async def test_page_routes_answer_html_even_without_accept(client):
    resp = await client.get("/watch/999999")
    assert resp.status == 404 and resp.content_type == "text/html"


async def test_the_api_keeps_json_errors(client, api_error):
    await api_error(await client.get("/videos/999999", headers=HTML), 404, "not_found")
    await api_error(await client.get("/auth/me", headers=HTML), 401, "unauthorized")
    await api_error(await client.get("/videos/999999/stream", headers=HTML), 404)
    # An API client that mistypes a path is not sent a web page.
    resp = await client.get("/no/such/path", headers={"Accept": "application/json"})
    await api_error(resp, 404, "not_found")


async def test_posting_a_form_without_script_is_a_friendly_405(client):
    resp = await client.post("/login", data={"email": "a@b.co", "password": "x" * 10},
                             headers=HTML)
    assert resp.status == 405 and resp.content_type == "text/html"
    text = await resp.text()
    assert "x" * 10 not in text


async def test_server_errors_are_friendly_and_say_nothing_of_the_cause(aiohttp_client, config,
                                                                      api_error):
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret detail of the failure")

    app = create_app(config)
    app.router.add_get("/broken-page", broken)
    app.router.add_get("/auth/broken", broken)
    client = await aiohttp_client(app)
    parsed, text, _ = await page(client, "/broken-page", status=500)
    assert "went wrong" in text and "secret detail" not in text
    await api_error(await client.get("/auth/broken", headers=HTML), 500, "internal_error")


# --- formatting ------------------------------------------------------------

@pytest.mark.parametrize("seconds, text", [
    (None, ""), (0, "0:00"), (9.4, "0:09"), (9.6, "0:10"), (61, "1:01"), (3600, "1:00:00"),
    (3725, "1:02:05"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_format_count_and_ago():
    assert format_count(None) == "0"
    assert format_count(1234567) == "1,234,567"
    now = datetime(2024, 5, 1, tzinfo=UTC)
    assert format_ago(now, now) == "just now"
    assert format_ago(now - timedelta(minutes=1), now) == "1 minute ago"
    assert format_ago(now - timedelta(hours=5), now) == "5 hours ago"
    assert format_ago(now - timedelta(days=400), now) == "1 year ago"


async def test_home_shows_who_is_watching_now(client):
    watched = await uploaded(client, "Popular clip")
    await uploaded(client, "Quiet clip")
    # Two browsers: tabs of one browser would be one viewer.
    sockets = [await client.ws_connect(f"/videos/{watched['id']}/active-viewers",
                                       headers={"User-Agent": f"Mozilla/5.0 Firefox/{i}.0"})
               for i in (128, 129)]
    for ws in sockets:
        assert (await ws.receive_json())["active_viewers"] >= 1
    _, text, _ = await page(client, "/")
    cards = {card.split("card-title\">")[1].split("<")[0]: card
             for card in text.split('<li class="card">')[1:]}
    assert re.search(r'class="video-watching">2</span> watching now', cards["Popular clip"])
    assert "watching now" not in cards["Quiet clip"]
    for ws in sockets:
        await ws.close()
    for _ in range(50):
        _, text, _ = await page(client, "/")
        if "watching now" not in text:
            break
        await asyncio.sleep(0.05)
    assert "watching now" not in text


async def test_the_icon_is_served_with_the_static_files(client):
    resp = await client.get("/")
    html = await resp.text()
    [href] = re.findall(r'rel="icon" href="([^"]+)"', html)
    resp = await client.get(href)
    assert resp.status == 200 and resp.content_type == "image/svg+xml"
    assert (await resp.read()).startswith(b"<svg")
    assert "max-age" in resp.headers["Cache-Control"]
