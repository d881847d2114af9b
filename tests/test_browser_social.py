"""The social pages in a real headless Chromium against a real server: comments and
replies, reactions, subscribing and the following feed, search, reporting and
moderation, "My videos" and the profile settings."""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, BrowserContext, Page, expect

from .browser import PASSWORD
from .conftest import fake_mp4, make_ready, query, require_tool
from .test_browser import (  # noqa: F401 (fixtures)
    CSP_WATCH,
    Serve,
    browser,
    serve,
    sign_in,
    upload_with,
)

pytestmark = pytest.mark.browser

class Account:
    """A user made through the API, with a token for setting the scene."""

    def __init__(self, server: TestServer, user_id: int, email: str, token: str) -> None:
        self.server, self.id, self.email, self.token = server, user_id, email, token

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        async with ClientSession() as session, session.request(
                method, self.server.make_url(path),
                headers={"Authorization": f"Bearer {self.token}"}, **kwargs) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json() if resp.status != 204 else None

    async def upload(self, title: str) -> int:
        """A video uploaded and made ready as it came (it cannot really play)."""
        async with ClientSession() as session:
            video_id = await upload_with(session, self.server, self.token, fake_mp4(4000), title)
        await make_ready(self.server.app, video_id)
        return video_id


async def account(server: TestServer, name: str) -> Account:
    email = f"{name.lower()}-{secrets.token_hex(3)}@example.com"
    creds = {"email": email, "password": PASSWORD}
    async with ClientSession() as session:
        async with session.post(server.make_url("/auth/register"),
                                json={**creds, "name": name}) as resp:
            assert resp.status == 201, await resp.text()
            user_id = (await resp.json())["id"]
        async with session.post(server.make_url("/auth/login"), json=creds) as resp:
            token = (await resp.json())["access_token"]
    return Account(server, user_id, email, token)


def base_url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


class Tab:
    """A signed-in browser context and its page, watched for script errors and CSP
    violations."""

    def __init__(self, context: BrowserContext, page: Page) -> None:
        self.context, self.page = context, page
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", lambda m: self.errors.append(m.text)
                if "Content Security Policy" in m.text else None)

    async def clean(self) -> None:
        assert await self.page.evaluate("window.__cspViolations") == []
        assert self.errors == []
        await self.context.close()


async def tab(browser: Browser, server: TestServer, who: Account, path: str) -> Tab:
    context = await browser.new_context()
    page = await context.new_page()
    await page.add_init_script(f"({CSP_WATCH})()")
    opened = Tab(context, page)
    try:
        await sign_in(page, base_url(server), who.email, path)
    except Exception:
        print("DEBUG", page.url, await page.content(), opened.errors)
        raise
    return opened


async def test_comment_reply_edit_and_delete(serve, browser):
    server = await serve()
    author = await account(server, "Ann")
    video_id = await author.upload("Cats on a piano")
    bob = await account(server, "Bob")
    viewer = await tab(browser, server, bob, f"/watch/{video_id}")
    page = viewer.page

    hostile = "<b>bold</b> & <img src=x onerror=alert(1)>"
    await page.fill("#comment-form textarea", hostile)
    await page.click("#comment-form button[type=submit]")
    comment = page.locator("#comment-list > .comment").first
    await expect(comment.locator(".comment-body")).to_have_text(hostile)
    assert await page.locator("#comment-list b, #comment-list img").count() == 0
    await expect(page.locator("#comment-count")).to_have_text("1 comment")

    # Someone else replies, through the page of their own.
    ann = await tab(browser, server, author, f"/watch/{video_id}")
    theirs = ann.page.locator("#comment-list > .comment").first
    await theirs.get_by_role("button", name="Reply").click()
    await theirs.locator(".reply-form textarea").fill("Thanks Bob!")
    await theirs.locator(".reply-form button[type=submit]").click()
    await expect(theirs.locator(".replies .comment-body")).to_have_text("Thanks Bob!")
    # Not theirs to edit; theirs to report.
    actions = theirs.locator(":scope > .comment-actions")
    await expect(actions.locator("button", has_text="Edit")).to_have_count(0)
    await expect(actions.locator(".report-button")).to_have_count(1)
    await ann.clean()

    # The reply is there after a reload, under the comment, in either order.
    await page.reload()
    await expect(comment.locator(".replies .comment-body")).to_have_text("Thanks Bob!")
    await page.select_option("#comment-sort", "top")
    await expect(comment.locator(".replies .comment-body")).to_have_text("Thanks Bob!")

    # Edit, then delete: a comment with replies leaves a placeholder.
    await comment.locator(":scope > .comment-actions button", has_text="Edit").click()
    await comment.locator(".edit-form textarea").fill("Edited: lovely")
    await comment.locator(".edit-form button[type=submit]").click()
    await expect(comment.locator(":scope > .comment-body")).to_have_text("Edited: lovely")
    await expect(comment.locator(".edited")).to_be_visible()
    delete = comment.locator(":scope > .comment-actions button", has_text="Delete")
    await delete.click()
    await delete.click()  # "Delete for good?"
    placeholder = page.locator("#comment-list > .comment").first
    await expect(placeholder.locator(":scope > .comment-body")).to_have_text(
        "This comment was deleted.")
    await expect(placeholder.locator(".replies .comment-body")).to_have_text("Thanks Bob!")
    await viewer.clean()


async def test_like_and_dislike_reflect_my_reaction(serve, browser):
    server = await serve()
    author = await account(server, "Ann")
    video_id = await author.upload("Cats on a piano")
    viewer = await tab(browser, server, await account(server, "Bob"), f"/watch/{video_id}")
    page = viewer.page
    like, dislike = page.locator("#like"), page.locator("#dislike")

    await like.click()
    await expect(like).to_have_attribute("aria-pressed", "true")
    await expect(page.locator("#like-count")).to_have_text("1")
    await page.reload()
    await expect(like).to_have_attribute("aria-pressed", "true")  # my_reaction from the API
    await dislike.click()
    await expect(page.locator("#like-count")).to_have_text("0")
    await expect(page.locator("#dislike-count")).to_have_text("1")
    await expect(like).to_have_attribute("aria-pressed", "false")
    await dislike.click()  # pressed again: taken back
    await expect(page.locator("#dislike-count")).to_have_text("0")
    await expect(dislike).to_have_attribute("aria-pressed", "false")
    await viewer.clean()


async def test_subscribe_then_following_feed_and_search(serve, browser):
    server = await serve()
    author = await account(server, "Ann")
    video_id = await author.upload("Cats on a piano")
    await author.call("PATCH", f"/videos/{video_id}", json={"tags": ["music"]})
    viewer = await tab(browser, server, await account(server, "Bob"), f"/@{author.id}")
    page = viewer.page
    base = base_url(server)

    await expect(page.locator("#channel-name")).to_have_text("Ann")
    await expect(page.locator(f"#channel-videos a[href='/watch/{video_id}']").first).to_be_visible()
    subscribe = page.locator("#subscribe")
    await subscribe.click()
    await expect(subscribe).to_have_text("Subscribed")
    await expect(page.locator("#subscriber-count")).to_have_text("1")
    await page.reload()
    await expect(subscribe).to_have_text("Subscribed")

    await page.goto(f"{base}/")
    await page.click("#tab-following")
    following = page.locator("#panel-following")
    await expect(following.locator(".card-title")).to_have_text(["Cats on a piano"])

    # The header's search box; then a tag.
    await page.fill("#search-input", "pian")
    await page.press("#search-input", "Enter")
    await page.wait_for_url(re.compile(re.escape(base) + r"/results\?q=pian$"))
    await expect(page.locator("#search-results .card-title")).to_have_text(["Cats on a piano"])
    await page.goto(f"{base}/results?q=%23music")
    await expect(page.locator("#search-results .card-title")).to_have_text(["Cats on a piano"])
    await page.goto(f"{base}/results?q=zebras")
    await expect(page.locator("#no-results")).to_be_visible()
    await viewer.clean()


async def test_moderator_removes_a_reported_video_and_the_uploader_sees_why(
        serve, browser, database_url):
    server = await serve()
    uploader = await account(server, "Ursula")
    video_id = await uploader.upload("Cheap pills here")
    reporter = await tab(browser, server, await account(server, "Rita"), f"/watch/{video_id}")
    await reporter.page.click("button[data-report=video]")
    await reporter.page.select_option(".report-form select[name=reason]", "spam")
    await reporter.page.fill(".report-form input[name=note]", "Selling pills")
    await reporter.page.click(".report-form button[type=submit]")
    await expect(reporter.page.locator(".report-done")).to_contain_text("Reported")
    await reporter.clean()

    mod = await account(server, "Mo")
    query(database_url, "UPDATE users SET role = 'moderator' WHERE id = %s", (mod.id,))
    moderator = await tab(browser, server, mod, "/")
    page = moderator.page
    await page.click("#nav-moderation")
    report = page.locator("#report-queue > .report-item").first
    await expect(report.locator(".report-target a")).to_have_text("Cheap pills here")
    await expect(report).to_contain_text("Spam or misleading")
    await expect(report.locator(".report-note")).to_have_text("Selling pills")
    await report.locator("input[name=reason]").fill("Advertising pills is spam")
    await report.get_by_role("button", name="Remove video").click()
    await expect(page.locator("#no-reports")).to_be_visible()  # acted on: out of the open queue
    await expect(page.locator("#audit-log .log-entry").first).to_contain_text("removed video")
    await expect(page.locator("#audit-log .log-reason").first).to_have_text(
        "Advertising pills is spam")
    await moderator.clean()

    # Nobody else sees the nav link, or is told why.
    owner = await tab(browser, server, uploader, f"/watch/{video_id}")
    await expect(owner.page.locator("#restricted-title")).to_contain_text("removed by a moderator")
    await expect(owner.page.locator("#restricted-detail")).to_have_text(
        "Why: Advertising pills is spam")
    await expect(owner.page.locator("#watch-title")).to_have_text("Cheap pills here")
    await expect(owner.page.locator("#nav-moderation")).to_be_hidden()
    await owner.clean()


def avatar_png(directory: Path) -> bytes:
    out = directory / "avatar.png"
    subprocess.run([require_tool("ffmpeg"), "-v", "error", "-y", "-f", "lavfi", "-i",
                    "color=c=0x3366cc:s=64x64", "-frames:v", "1", str(out)], check=True)
    return out.read_bytes()


async def test_my_videos_private_playback_and_settings(serve, browser, tmp_path):
    server = await serve()
    author = await account(server, "Ann")
    video_id = await author.upload("Holiday")
    me = await tab(browser, server, author, "/me/videos")
    page = me.page
    row = page.locator(f".video-row[data-video-id='{video_id}']")
    await row.locator("input[name=title]").fill("Holiday, just for me")
    await row.locator("select[name=visibility]").select_option("private")
    await row.locator("input[name=tags]").fill("#Beach, sea")
    await row.locator("button[type=submit]").click()
    await expect(row.locator(".message")).to_have_text("Saved.")
    await expect(row.locator(".card-title")).to_have_text("Holiday, just for me")

    # A private video plays for its author, from the signed URL of their GET /videos/{id}.
    streams: list[tuple[str, int]] = []
    page.on("response", lambda r: streams.append((r.url, r.status)) if "/stream" in r.url else None)
    await row.locator("a[href^='/watch/']").click()
    await expect(page.locator("#watch-title")).to_have_text("Holiday, just for me")
    await expect(page.locator("#player")).to_be_visible()
    src = await page.get_attribute("#player", "src")
    assert src and src != f"/videos/{video_id}/stream", src
    for _ in range(100):
        if streams:
            break
        await asyncio.sleep(0.05)
    assert streams and all(status in (200, 206) for _, status in streams), streams

    # Settings: name, bio and a picture.
    await page.goto(f"{base_url(server)}/settings")
    await expect(page.locator("input[name=name]")).to_have_value("Ann")
    await page.fill("input[name=name]", "Ann B.")
    await page.fill("textarea[name=bio]", "I film the sea.")
    await page.click("#profile-form button[type=submit]")
    await expect(page.locator("#profile-message")).to_have_text("Saved.")
    await expect(page.locator("#nav-user")).to_have_text("Ann B.")
    await page.set_input_files("input[name=avatar]", files=[{
        "name": "me.png", "mimeType": "image/png", "buffer": avatar_png(tmp_path)}])
    await page.click("#avatar-form button[type=submit]")
    await expect(page.locator("#avatar-message")).to_have_text("Your new picture is saved.")
    await expect(page.locator("#avatar-preview img")).to_have_attribute(
        "src", re.compile(rf"/users/{author.id}/avatar\.jpg"))
    await page.click("#my-channel-link")
    await expect(page.locator("#channel-name")).to_have_text("Ann B.")
    await expect(page.locator("#channel-bio")).to_have_text("I film the sea.")
    await expect(page.locator("#channel-avatar img")).to_be_visible()
    await me.clean()

