"""The live rooms' pages in a real headless Chromium against a real server: the list,
a room joined with the token the API issued (handed to livekit-client, which is
pointed at a port where no LiveKit listens: there is no LiveKit server here), and
the chat beside it, between a signed-in user and a guest."""

from __future__ import annotations

import re
import socket
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from playwright.async_api import BrowserContext, ConsoleMessage, Page, expect

from server.core.keys import CONFIG_KEY
from server.live import tokens
from server.web.rooms import livekit_origins, page_request, parse_room_id

from .browser import PASSWORD
from .test_browser import CSP_WATCH, browser, serve  # noqa: F401 (fixtures)
from .test_browser_social import Account, account, base_url

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
HOSTILE = "<img src=x onerror=alert(1)>"


def closed_port() -> int:
    """A local port nothing listens on: connections to it are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Watched:
    """A page with its script errors, console errors and CSP violations, and the
    WebSockets it opened."""

    def __init__(self, context: BrowserContext, page: Page) -> None:
        self.context, self.page = context, page
        self.errors: list[str] = []
        self.console: list[str] = []
        self.sockets: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", self._console)
        page.on("websocket", lambda ws: self.sockets.append(ws.url))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" or "Content Security Policy" in message.text:
            self.console.append(f"{message.text} @ {message.location.get('url', '')}")

    async def clean(self, *, unreachable: str | None = None) -> None:
        """No script error and no CSP violation; console errors only about `unreachable`
        (the LiveKit address, which refuses connections)."""
        assert await self.page.evaluate("window.__cspViolations") == []
        assert self.errors == []
        others = [text for text in self.console
                  if unreachable is None or not refused_by(text, unreachable)]
        assert others == [], others


def refused_by(text: str, address: str) -> bool:
    """A console error that only says `address` refused a connection (Chromium's own
    report of the signalling socket, or of livekit-client's request asking why)."""
    return "net::ERR_CONNECTION_REFUSED" in text and f"//{urlsplit(address).netloc}/" in text


async def open_page(context: BrowserContext, url: str) -> Watched:
    page = await context.new_page()
    await page.add_init_script(f"({CSP_WATCH})()")
    watched = Watched(context, page)
    await page.goto(url)
    return watched


async def signed_in(browser: Any, server: TestServer, who: Account, path: str) -> Watched:
    context = await browser.new_context()
    watched = await open_page(context, f"{base_url(server)}/login?next={path}")
    page = watched.page
    await page.fill("input[name=email]", who.email)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base_url(server)}{path}")
    return watched


async def messages_of(server: TestServer, room_id: int) -> list[dict[str, Any]]:
    async with ClientSession() as session, session.get(
            server.make_url(f"/rooms/{room_id}/messages")) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["messages"]


async def join(page: Page, room_id: int) -> dict[str, Any]:
    """Clicks Join; the API's answer (the token and where LiveKit is)."""
    async with page.expect_response(lambda r: r.url.endswith(f"/rooms/{room_id}/join")
                                    and r.request.method == "POST") as answer:
        await page.click("#join")
    response = await answer.value
    assert response.status == 200, await response.text()
    grant: dict[str, Any] = await response.json()
    return grant


async def say_in_chat(page: Page, text: str) -> None:
    await page.fill("#chat-body", text)
    await page.press("#chat-body", "Enter")


def chat_line(page: Page, text: str) -> Any:
    return page.locator("#chat-list .chat-text", has_text=text)


# --- the browser ------------------------------------------------------------

@pytest.mark.browser
async def test_room_page_hands_livekit_the_issued_token_and_chats(serve, browser):
    livekit_url = f"ws://127.0.0.1:{closed_port()}"
    server = await serve(livekit_url=livekit_url, rooms_guests=True)
    config = server.app[CONFIG_KEY]
    owner = await account(server, "Olga")
    room = await owner.call("POST", "/rooms", json={"name": "Standup <b>& friends</b>"})
    room_id = room["id"]

    # The list shows the room, its name as text, linking to its page.
    host = await signed_in(browser, server, owner, "/rooms")
    page = host.page
    link = page.locator(f"#room-list a[href='/rooms/{room_id}']")
    await expect(link).to_have_text("Standup <b>& friends</b>")
    assert await page.locator("#room-list b").count() == 0
    await link.click()
    await page.wait_for_url(f"{base_url(server)}/rooms/{room_id}")
    await expect(page.locator("#room-name")).to_have_text("Standup <b>& friends</b>")
    await expect(page.locator("#end-room")).to_be_visible()

    # Join: livekit-client is asked to connect with exactly the token the API issued.
    grant = await join(page, room_id)
    assert grant["livekit_url"] == livekit_url
    holder = tokens.verify(config.livekit_api_key, config.livekit_secret, grant["token"])
    assert holder.identity == f"user-{owner.id}" and holder.room == room["livekit_room"]
    await expect(page.locator("#media-message")).to_contain_text("could not connect",
                                                                 timeout=20000)
    signalling = [url for url in host.sockets if url.startswith(f"{livekit_url}/rtc")]
    assert signalling, host.sockets
    for url in signalling:
        assert parse_qs(urlsplit(url).query)["access_token"] == [grant["token"]]

    # The chat works though the media did not.
    await expect(page.locator("#chat-form")).to_be_visible()
    await say_in_chat(page, "hello, is this thing on?")
    await expect(chat_line(page, "hello, is this thing on?")).to_have_count(1)
    await say_in_chat(page, HOSTILE)
    await expect(chat_line(page, HOSTILE)).to_have_count(1)
    assert await page.locator("#chat-list img").count() == 0
    stored = await messages_of(server, room_id)
    assert [m["body"] for m in stored] == [HOSTILE, "hello, is this thing on?"]
    assert {m["identity"] for m in stored} == {f"user-{owner.id}"}

    # A guest sees the history, joins with a name and talks with the owner live.
    guest = await open_page(await browser.new_context(), f"{base_url(server)}/rooms/{room_id}")
    await expect(chat_line(guest.page, "hello, is this thing on?")).to_have_count(1)
    await guest.page.fill("#guest-name", "Gus")
    await join(guest.page, room_id)
    await expect(guest.page.locator("#chat-form")).to_be_visible()
    await say_in_chat(guest.page, "hi from a guest")
    await expect(chat_line(page, "hi from a guest")).to_have_count(1)
    await expect(page.locator("#chat-list .chat-item").last.locator(".chat-author")) \
        .to_have_text("Gus")
    await say_in_chat(page, "welcome, Gus")
    await expect(chat_line(guest.page, "welcome, Gus")).to_have_count(1)

    # Ending the room closes its chat on the guest's page too.
    await page.click("#end-room")
    await expect(page.locator("#room-status")).to_have_attribute("data-status", "ended")
    await expect(guest.page.locator("#chat-form")).to_be_hidden()
    await expect(guest.page.locator("#chat-hint")).to_contain_text("ended")

    await host.clean(unreachable=livekit_url)
    await guest.clean(unreachable=livekit_url)
    for watched in (host, guest):
        await watched.context.close()


@pytest.mark.browser
async def test_without_livekit_the_room_is_a_chat(serve, browser):
    server = await serve()
    owner = await account(server, "Nils")
    # A room started from the list's form opens at once.
    host = await signed_in(browser, server, owner, "/rooms")
    page = host.page
    await page.fill("#room-form input[name=name]", "Text only")
    await page.click("#room-form button[type=submit]")
    await page.wait_for_url(re.compile(r".*/rooms/\d+$"))
    room_id = int(page.url.rsplit("/", 1)[1])
    await expect(page.locator("#room-name")).to_have_text("Text only")
    await expect(page.locator("#media-off")).to_be_visible()
    assert await page.locator("script[src*='livekit-client']").count() == 0
    grant = await join(page, room_id)
    assert grant["livekit_url"] is None
    await expect(page.locator("#chat-form")).to_be_visible()
    await say_in_chat(page, "just text")
    await expect(chat_line(page, "just text")).to_have_count(1)
    own = urlsplit(base_url(server)).netloc
    assert host.sockets and all(urlsplit(url).netloc == own for url in host.sockets)
    await host.clean()
    await host.context.close()


# --- the pages over HTTP ------------------------------------------------------

async def test_room_paths_answer_pages_to_browsers_and_json_to_the_api(serve):
    livekit_url = "wss://media.example.org:7443"
    server = await serve(livekit_url=livekit_url)
    owner = await account(server, "Pia")
    room = await owner.call("POST", "/rooms", json={"name": "Both ways"})
    async with ClientSession() as session:
        async with session.get(server.make_url(f"/rooms/{room['id']}"), headers=HTML) as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            assert "Accept" in resp.headers["Vary"]
            policy = resp.headers["Content-Security-Policy"]
            assert re.search(r"connect-src 'self' ws://\S+ wss://\S+ "
                             r"wss://media\.example\.org:7443 https://media\.example\.org:7443;",
                             policy), policy
            assert "script-src" not in policy and "media-src 'self';" in policy
        async with session.get(server.make_url("/rooms"), headers=HTML) as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            # Only a room's page may reach LiveKit.
            assert "media.example.org" not in resp.headers["Content-Security-Policy"]
        for path in (f"/rooms/{room['id']}", "/rooms"):
            for accept in ("application/json", "*/*", None):
                headers = {"Accept": accept} if accept else {}
                async with session.get(server.make_url(path), headers=headers) as resp:
                    assert resp.status == 200 and resp.content_type == "application/json"
                    assert "Accept" in resp.headers["Vary"]
        for bad in ("abc", "0", "99999999999999999999", "1%3Cscript%3E"):
            async with session.get(server.make_url(f"/rooms/{bad}"), headers=HTML) as resp:
                assert resp.status == 404 and resp.content_type == "text/html"
                assert "<script>" not in await resp.text()


@pytest.mark.parametrize(("url", "origins"), [
    (None, ()),
    ("ws://127.0.0.1:7880", ("ws://127.0.0.1:7880", "http://127.0.0.1:7880")),
    ("https://Media.Example.org", ("wss://media.example.org", "https://media.example.org")),
    ("wss://[::1]:7880/base", ("wss://[::1]:7880", "https://[::1]:7880")),
    ("wss://user:pw@lk.example.org", ("wss://lk.example.org", "https://lk.example.org")),
    ("wss://lk.example.org:99999", ()),
    ("wss://lk.example.org;script-src", ()),
    ("wss://", ()),
])
def test_livekit_origins(url, origins):
    assert livekit_origins(url) == origins


@pytest.mark.parametrize(("method", "path", "accept", "wanted"), [
    ("GET", "/rooms", HTML["Accept"], (None,)),
    ("GET", "/rooms/12", HTML["Accept"], ("12",)),
    ("GET", "/rooms/12", "application/json", None),
    ("GET", "/rooms/12", "text/html, application/json", None),
    ("GET", "/rooms/12", "", None),
    ("POST", "/rooms", HTML["Accept"], None),
    ("GET", "/rooms/12/messages", HTML["Accept"], None),
    ("GET", "/rooms/", HTML["Accept"], None),
])
def test_page_request(method, path, accept, wanted):
    found = page_request(method, path, accept)
    assert (found if found is None else (found.room_id,)) == wanted


@pytest.mark.parametrize(("raw", "value"), [
    ("1", 1), ("9223372036854775807", 2**63 - 1), ("9223372036854775808", None),
    ("0", None), ("01", None), ("-1", None), ("1e3", None), ("", None),
])
def test_parse_room_id(raw, value):
    assert parse_room_id(raw) == value
