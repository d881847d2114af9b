"""The social pages as the server renders them (no browser): status codes, what they
carry, escaping of what users wrote, and the content security policy."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from server.web.pages import restriction

from .conftest import fake_mp4, login, query, register, upload_ready
from .test_pages import HTML, Page, page

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
JSON = {"Accept": "application/json"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def user(client: Any) -> tuple[int, str]:
    """A new user's id and access token."""
    account = await register(client)
    return account["id"], (await login(client, account["email"]))["access_token"]


async def moderator(client: Any, database_url: str) -> str:
    user_id, token = await user(client)
    query(database_url, "UPDATE users SET role = 'moderator' WHERE id = %s", (user_id,))
    return token


async def video_of(client: Any, token: str, title: str = "A video") -> dict[str, Any]:
    return await upload_ready(client, token, fake_mp4(4000), title=title)


def assert_strict_policy(resp: Any) -> None:
    policy = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "unsafe" not in policy
    assert "script-src" not in policy  # scripts fall back to 'self': no inline, no eval


async def test_every_social_page_is_html_under_the_policy(client):
    user_id, _ = await user(client)
    for path in ("/me/videos", "/settings", "/moderation", "/results?q=cats", "/results",
                 f"/@{user_id}"):
        parsed, text, resp = await page(client, path)
        assert_strict_policy(resp)
        assert resp.headers["Cache-Control"] == "no-store"
        # Every script is a file from this server: nothing inline to allow.
        for tag, attrs in parsed.elements:
            if tag == "script":
                assert (attrs.get("src") or "").startswith("/static/"), path
        assert " style=" not in text and "onclick" not in text
        # The header's search box and the moderation link (hidden until the role is known).
        assert parsed.find("form", id="search-box", action="/results") is not None
        link = parsed.find("a", id="nav-moderation")
        assert link is not None and "hidden" in link


async def test_user_and_search_paths_are_only_the_api(client):
    user_id, _ = await user(client)
    # Whatever the client accepts, a browser's navigation included.
    for headers in (JSON, HTML, {}):
        resp = await client.get(f"/users/{user_id}", headers=headers)
        assert resp.status == 200 and resp.content_type == "application/json"
        assert (await resp.json())["id"] == user_id
        resp = await client.get("/search?q=cats", headers=headers)
        assert resp.status == 200 and resp.content_type == "application/json"
        assert set(await resp.json()) >= {"items", "next_cursor"}
        # The API's own errors stay JSON.
        resp = await client.get("/users/999999", headers=headers)
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    # The pages live at their own paths.
    parsed, _, _ = await page(client, f"/@{user_id}")
    channel = parsed.find("section", id="channel")
    assert channel is not None and channel["data-user-id"] == str(user_id)
    parsed, _, _ = await page(client, "/results?q=cats")
    results = parsed.find("section", id="search-page")
    assert results is not None and results["data-query"] == "cats"


async def test_channel_page_escapes_what_the_user_wrote(client):
    user_id, token = await user(client)
    resp = await client.patch("/users/me", headers=bearer(token),
                              json={"name": HOSTILE, "bio": "<img src=x onerror=alert(2)>"})
    assert resp.status == 200, await resp.text()
    await video_of(client, token, HOSTILE)
    parsed, text, _ = await page(client, f"/@{user_id}")
    assert HOSTILE not in text and "<img src=x" not in text
    # Shown as text, exactly as written.
    assert ESCAPED in text and parsed.text_by_id["channel-name"] == HOSTILE
    assert "&lt;img src=x" in text
    assert parsed.text_by_id["subscriber-count"].strip() == "0"
    channel = parsed.find("section", id="channel")
    assert channel is not None and channel["data-user-id"] == str(user_id)
    # The name on the watch page and the query on the results page are escaped too.
    _, text, _ = await page(client, f"/results?q={HOSTILE}")
    assert HOSTILE not in text and ESCAPED in text


async def test_channel_shows_subscribers_and_videos_count(client):
    owner_id, owner = await user(client)
    await video_of(client, owner, "Listed one")
    for _ in range(2):
        _, fan = await user(client)
        resp = await client.put(f"/users/{owner_id}/subscription", headers=bearer(fan))
        assert resp.status == 200, await resp.text()
    parsed, text, _ = await page(client, f"/@{owner_id}")
    assert parsed.text_by_id["subscriber-count"].strip() == "2"
    words = " ".join(text.split())
    assert "</span> subscribers" in words and "1 video " in words


async def test_unknown_channels_are_friendly_404_pages(client):
    for path in ("/@999999", "/@abc", "/@0"):
        _, text, _ = await page(client, path, status=404)
        assert "couldn" in text


async def test_watch_page_has_reactions_comments_and_reports(client):
    _, token = await user(client)
    video = await video_of(client, token, "Cats")
    resp = await client.put(f"/videos/{video['id']}/reaction", json={"kind": "like"},
                            headers=bearer(token))
    assert resp.status == 200, await resp.text()
    resp = await client.post(f"/videos/{video['id']}/comments", json={"body": HOSTILE},
                             headers=bearer(token))
    assert resp.status == 201, await resp.text()
    parsed, text, resp = await page(client, f"/watch/{video['id']}")
    assert_strict_policy(resp)
    assert parsed.text_by_id["like-count"].strip() == "1"
    assert parsed.text_by_id["dislike-count"].strip() == "0"
    assert parsed.text_by_id["comment-count"].strip() == "1 comment"
    # Comments are rendered by the script, as text: never in the page's HTML.
    assert HOSTILE not in text and ESCAPED not in text
    assert parsed.find("button", id="like") is not None
    assert parsed.find("select", id="comment-sort") is not None
    assert parsed.find("button", data_report="video", data_target_id=str(video["id"])) is not None
    assert parsed.find("option", value="spam") is not None
    assert parsed.find("a", href=f"/@{video['author_id']}") is not None
    resp = await client.patch(f"/videos/{video['id']}", json={"tags": ["music"]},
                              headers=bearer(token))
    assert resp.status == 200, await resp.text()
    # A tag links to the results page for it.
    parsed, _, _ = await page(client, f"/watch/{video['id']}")
    assert parsed.find("a", href="/results?q=%23music") is not None


async def test_private_video_page_shows_nothing_of_it(client):
    _, token = await user(client)
    video = await video_of(client, token, "My secret diary")
    resp = await client.patch(f"/videos/{video['id']}", json={"visibility": "private"},
                              headers=bearer(token))
    assert resp.status == 200, await resp.text()
    parsed, text, _ = await page(client, f"/watch/{video['id']}", status=404)
    assert "My secret diary" not in text and "/stream" not in text
    article = parsed.find("article", data_video_id=str(video["id"]))
    assert article is not None and article["data-restriction"] == "private"
    _, text, _ = await page(client, "/")
    assert "My secret diary" not in text
    # Unlisted plays for anyone with the link.
    resp = await client.patch(f"/videos/{video['id']}", json={"visibility": "unlisted"},
                              headers=bearer(token))
    assert resp.status == 200
    _, text, _ = await page(client, f"/watch/{video['id']}")
    assert "My secret diary" in text


async def test_removed_video_and_banned_author_pages(client, database_url):
    author_id, token = await user(client)
    video = await video_of(client, token, "Spam spam spam")
    mod = await moderator(client, database_url)
    resp = await client.post(f"/moderation/videos/{video['id']}/remove",
                             json={"reason": "Selling pills <b>"}, headers=bearer(mod))
    assert resp.status == 200, await resp.text()
    parsed, text, _ = await page(client, f"/watch/{video['id']}", status=410)
    assert "Spam spam spam" not in text and "Selling pills" not in text
    assert "removed by a moderator" in parsed.text_by_id["restricted-title"]

    other = await video_of(client, token, "Still here")
    _, text, _ = await page(client, f"/watch/{other['id']}")
    assert "Still here" in text
    resp = await client.post(f"/moderation/users/{author_id}/ban",
                             json={"reason": "spammer"}, headers=bearer(mod))
    assert resp.status == 200, await resp.text()
    _, text, _ = await page(client, f"/watch/{other['id']}", status=404)
    assert "Still here" not in text
    await page(client, f"/@{author_id}", status=404)


async def test_home_page_has_the_feed_tabs(client):
    parsed, _, _ = await page(client, "/")
    tabs = parsed.find("div", id="feed-tabs")
    assert tabs is not None and "hidden" in tabs  # until the script runs
    for feed in ("trending", "following"):
        panel = parsed.find("section", id=f"panel-{feed}")
        assert panel is not None and panel["data-feed"] == f"/feed/{feed}"


async def test_reasons_offered_are_the_ones_reports_take(client):
    from server.moderation.rules import REPORT_REASONS

    parsed, _, _ = await page(client, "/moderation")
    assert isinstance(parsed, Page)
    _, token = await user(client)
    video = await video_of(client, token)
    parsed, _, _ = await page(client, f"/watch/{video['id']}")
    offered = [attrs["value"] for tag, attrs in parsed.elements if tag == "option"
               and attrs.get("value") not in ("newest", "top")]
    assert offered == list(REPORT_REASONS)


NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("removed_at", "banned", "visibility", "expected"), [
    (None, False, "public", None),
    (None, False, "unlisted", None),
    (None, False, "private", "private"),
    (None, True, "public", "unavailable"),
    (None, True, "private", "unavailable"),
    (NOW, False, "public", "removed"),
    (NOW, True, "private", "removed"),
])
def test_what_a_watch_page_withholds(removed_at, banned, visibility, expected):
    row = {"removed_at": removed_at, "visibility": visibility}
    assert restriction(row, banned) == expected
