"""Moderators' and administrators' endpoints, the audit log and the admin command line,
against real PostgreSQL, Redis and HTTP."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.core.config import Config, RateSpec
from server.core.errors import ApiError
from server.moderation.rules import ban_until, parse_queue_cursor, queue_cursor

from .conftest import REDIS_URL, query, until
from .moderation_helpers import (
    Member,
    comment_on,
    db_url,
    member,
    report,
    report_statuses,
    video_of,
)

ROOT = Path(__file__).resolve().parents[1]
REASON = {"reason": "Breaks the rules"}

# Every moderation endpoint, with a body it accepts.
ACTIONS = [
    ("POST", "/moderation/videos/{id}/remove", REASON),
    ("POST", "/moderation/videos/{id}/restore", REASON),
    ("POST", "/moderation/comments/{id}/remove", REASON),
    ("POST", "/moderation/comments/{id}/restore", REASON),
    ("POST", "/moderation/reports/{id}/dismiss", REASON),
    ("POST", "/moderation/users/{id}/ban", REASON),
    ("POST", "/moderation/users/{id}/unban", REASON),
    ("PUT", "/admin/users/{id}/role", {"role": "moderator"}),
]
READS = ["/moderation/reports", "/moderation/reports?status=all", "/moderation/log"]


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    """Room for the reports these tests file; the limit has its own test."""
    return make_config(rate_limit_report=RateSpec(1000, 3600))


async def act(client: TestClient, who: Member | None, method: str, path: str,
              body: Any = None, **kwargs: Any) -> Any:
    headers = who.auth if who else {}
    return await client.request(method, path, headers=headers,
                                json=REASON if body is None else body, **kwargs)


def log_rows(client: TestClient) -> list[tuple[Any, ...]]:
    return query(db_url(client), "SELECT actor_id, action, target_type, target_id, reason,"
                 " details FROM moderation_log ORDER BY id")


# --- who may call what ---------------------------------------------------------

@pytest.mark.parametrize("method, path, body", ACTIONS)
async def test_actions_need_a_token_and_the_role(client, api_error, method, path, body):
    author, user, moderator = (await member(client), await member(client),
                               await member(client, "moderator"))
    video = await video_of(client, author)
    url = path.format(id=video["id"])
    await api_error(await act(client, None, method, url, body), 401)
    await api_error(await act(client, user, method, url, body), 403, "forbidden")
    await api_error(await act(client, author, method, url, body), 403)
    if path.startswith("/admin"):
        await api_error(await act(client, moderator, method, url, body), 403)
    assert log_rows(client) == []


@pytest.mark.parametrize("path", READS)
async def test_reads_need_a_token_and_the_role(client, api_error, path):
    user = await member(client)
    await api_error(await client.get(path), 401)
    await api_error(await client.get(path, headers=user.auth), 403)
    for role in ("moderator", "admin"):
        resp = await client.get(path, headers=(await member(client, role)).auth)
        assert resp.status == 200, await resp.text()


GARBAGE_BODIES = [
    {},
    {"reason": ""},
    {"reason": "   "},
    {"reason": "x" * 501},
    {"reason": 5},
    {"reason": ["spam"]},
    {"reason": None},
    {"reason": "a\x00b"},
]


@pytest.mark.parametrize("method, path, body", ACTIONS[:-1])
async def test_action_bodies_are_checked(client, api_error, method, path, body):
    moderator = await member(client, "moderator")
    url = path.format(id=1)
    for garbage in GARBAGE_BODIES:
        await api_error(await act(client, moderator, method, url, garbage), 422)
    await api_error(await act(client, moderator, method, url, [REASON]), 422)
    await api_error(await client.request(method, url, data="reason=x", headers={
        **moderator.auth, "Content-Type": "application/x-www-form-urlencoded"}), 415)
    await api_error(await client.request(method, url, data="{", headers={
        **moderator.auth, "Content-Type": "application/json"}), 400)


@pytest.mark.parametrize("method, path, body", ACTIONS)
async def test_unknown_targets_are_not_found(client, api_error, method, path, body):
    admin = await member(client, "admin")
    for raw in ("987654321", "abc", "0", "01", "-1", "1e3", "9" * 30):
        await api_error(await act(client, admin, method, path.format(id=raw), body), 404)
    assert log_rows(client) == []


# --- videos --------------------------------------------------------------------

async def stream_status(client: TestClient, video_id: int) -> int:
    resp = await client.get(f"/videos/{video_id}/stream", headers={"Range": "bytes=0-9"})
    await resp.read()
    return resp.status


async def test_removing_a_video_stops_it_everywhere_and_closes_its_reports(
        instance, api_error):
    a = await instance()
    b = await instance()
    author, moderator = await member(a), await member(a, "moderator")
    r1, r2 = await member(a), await member(a)
    video = await video_of(a, author)
    other = await video_of(a, author, "Another", seed=2)
    video_id = video["id"]
    assert (await report(a, r1, "video", video_id, "spam")).status == 201
    assert (await report(a, r2, "video", video_id, "hate")).status == 201
    assert (await report(a, r1, "video", other["id"])).status == 201
    assert (await report(a, r1, "user", author.id)).status == 201
    # Both instances have the stream open (and cached).
    assert await stream_status(a, video_id) == 206
    assert await stream_status(b, video_id) == 206

    resp = await act(a, moderator, "POST", f"/moderation/videos/{video_id}/remove",
                     {"reason": "  Spam links in the video  "})
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    assert result == {"action": "video.remove", "target_type": "video", "target_id": video_id,
                      "reason": "Spam links in the video", "reports_closed": 2,
                      "removed": True}
    assert await stream_status(a, video_id) == 404

    async def gone_from_b() -> bool:
        return await stream_status(b, video_id) == 404

    await until(gone_from_b, 2.0, "the other instance refusing the removed video's stream")
    assert report_statuses(a, "video", video_id) == ["actioned", "actioned"]
    assert report_statuses(a, "video", other["id"]) == ["open"]
    assert report_statuses(a, "user", author.id) == ["open"]
    [(resolved_by,)] = query(db_url(a), "SELECT DISTINCT resolved_by FROM reports"
                             " WHERE target_id = %s AND target_type = 'video'", (video_id,))
    assert resolved_by == moderator.id
    assert log_rows(a) == [(moderator.id, "video.remove", "video", video_id,
                            "Spam links in the video",
                            {"author_id": author.id, "reports_closed": 2})]

    # The author still sees the video, and why it was removed.
    resp = await a.get(f"/videos/{video_id}", headers=author.auth)
    assert resp.status == 200, await resp.text()
    mine = await resp.json()
    assert mine["removed"] is True
    assert mine["removed_reason"] == "Spam links in the video"
    resp = await a.get(f"/videos/{video_id}", headers=r1.auth)
    assert resp.status == 404 or (await resp.json()).get("removed_reason") is None

    await api_error(await act(a, moderator, "POST", f"/moderation/videos/{video_id}/remove"),
                    409, "already_removed")
    resp = await act(b, moderator, "POST", f"/moderation/videos/{video_id}/restore",
                     {"reason": "Appeal upheld"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["removed"] is False
    assert await stream_status(b, video_id) == 206

    async def back_on_a() -> bool:
        return await stream_status(a, video_id) == 206

    await until(back_on_a, 2.0, "the other instance streaming the restored video again")
    await api_error(await act(a, moderator, "POST", f"/moderation/videos/{video_id}/restore"),
                    409, "not_removed")
    assert [row[1] for row in log_rows(a)] == ["video.remove", "video.restore"]


async def test_who_may_act_on_whose_video(client, api_error):
    admin, admin2 = await member(client, "admin"), await member(client, "admin")
    moderator, moderator2 = await member(client, "moderator"), await member(client, "moderator")
    user = await member(client)
    videos = {who: (await video_of(client, m, seed=i))["id"]
              for i, (who, m) in enumerate([("admin", admin), ("moderator", moderator),
                                            ("moderator2", moderator2), ("user", user)])}

    async def remove(actor: Member, owner: str) -> Any:
        return await act(client, actor, "POST", f"/moderation/videos/{videos[owner]}/remove")

    await api_error(await remove(moderator, "admin"), 403)
    await api_error(await remove(moderator, "moderator2"), 403)
    await api_error(await remove(moderator, "moderator"), 403)  # their own
    await api_error(await remove(admin, "admin"), 403)  # their own
    await api_error(await remove(admin2, "admin"), 403)  # another admin's
    assert (await remove(moderator, "user")).status == 200
    assert (await remove(admin, "moderator2")).status == 200
    assert query(db_url(client), "SELECT id FROM videos WHERE removed_at IS NOT NULL"
                 " ORDER BY id") == sorted([(videos["user"],), (videos["moderator2"],)])
    assert len(log_rows(client)) == 2


async def test_concurrent_removals_remove_once(client):
    author = await member(client)
    moderators = [await member(client, "moderator") for _ in range(4)]
    video = await video_of(client, author)
    answers = await asyncio.gather(*(
        act(client, m, "POST", f"/moderation/videos/{video['id']}/remove") for m in moderators))
    assert sorted(r.status for r in answers) == [200, 409, 409, 409]
    assert len(log_rows(client)) == 1


# --- comments --------------------------------------------------------------------

async def test_removing_and_restoring_a_comment(client, api_error):
    author, moderator, reporter = (await member(client), await member(client, "moderator"),
                                   await member(client))
    video = await video_of(client, author)
    commenter = await member(client)
    comment_id = comment_on(client, video["id"], commenter, "Buy followers at example.com")
    assert (await report(client, reporter, "comment", comment_id)).status == 201
    assert (await report(client, author, "comment", comment_id)).status == 201

    resp = await act(client, moderator, "POST", f"/moderation/comments/{comment_id}/remove",
                     {"reason": "Spam"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["reports_closed"] == 2
    assert query(db_url(client), "SELECT removed_at IS NOT NULL, removed_reason, body"
                 " FROM comments WHERE id = %s", (comment_id,)) == [
        (True, "Spam", "Buy followers at example.com")]
    assert report_statuses(client, "comment", comment_id) == ["actioned", "actioned"]
    await api_error(await act(client, moderator, "POST",
                              f"/moderation/comments/{comment_id}/remove"), 409)
    # A removed comment can no longer be reported.
    await api_error(await report(client, await member(client), "comment", comment_id), 404)

    resp = await act(client, moderator, "POST", f"/moderation/comments/{comment_id}/restore")
    assert resp.status == 200, await resp.text()
    assert query(db_url(client), "SELECT removed_at, removed_reason FROM comments"
                 " WHERE id = %s", (comment_id,)) == [(None, None)]
    await api_error(await act(client, moderator, "POST",
                              f"/moderation/comments/{comment_id}/restore"), 409)
    own = comment_on(client, video["id"], moderator)
    await api_error(await act(client, moderator, "POST", f"/moderation/comments/{own}/remove"),
                    403)
    actions = [(row[0], row[1], row[3], row[5]) for row in log_rows(client)]
    assert actions == [
        (moderator.id, "comment.remove", comment_id,
         {"author_id": commenter.id, "video_id": video["id"], "reports_closed": 2}),
        (moderator.id, "comment.restore", comment_id,
         {"author_id": commenter.id, "video_id": video["id"], "reports_closed": 0}),
    ]


# --- reports ----------------------------------------------------------------------

async def test_dismissing_closes_every_open_report_on_the_target(client, api_error):
    author, moderator = await member(client), await member(client, "moderator")
    r1, r2 = await member(client), await member(client)
    video = await video_of(client, author)
    first = await (await report(client, r1, "video", video["id"])).json()
    await report(client, r2, "video", video["id"])
    await report(client, r2, "user", author.id)

    resp = await act(client, moderator, "POST", f"/moderation/reports/{first['id']}/dismiss",
                     {"reason": "Not spam"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["reports_closed"] == 2
    assert report_statuses(client, "video", video["id"]) == ["dismissed", "dismissed"]
    assert report_statuses(client, "user", author.id) == ["open"]
    await api_error(await act(client, moderator, "POST",
                              f"/moderation/reports/{first['id']}/dismiss"), 409,
                    "report_closed")
    assert log_rows(client) == [(moderator.id, "report.dismiss", "report", first["id"],
                                 "Not spam", {"target_type": "video",
                                              "target_id": video["id"], "reports_closed": 2})]
    # The video was left alone, and the reporters may report it again.
    assert query(db_url(client), "SELECT removed_at FROM videos WHERE id = %s",
                 (video["id"],)) == [(None,)]
    assert (await report(client, r1, "video", video["id"])).status == 201


async def test_nobody_dismisses_reports_about_themself_or_an_admin(client, api_error):
    moderator, other_moderator = await member(client, "moderator"), await member(client,
                                                                                  "moderator")
    admin, reporter = await member(client, "admin"), await member(client)
    about_self = await (await report(client, reporter, "user", moderator.id)).json()
    own_video = await video_of(client, moderator)
    about_video = await (await report(client, reporter, "video", own_video["id"])).json()
    about_admin = await (await report(client, reporter, "user", admin.id)).json()
    for target in (about_self, about_video, about_admin):
        await api_error(await act(client, moderator, "POST",
                                  f"/moderation/reports/{target['id']}/dismiss",
                                  {"reason": "Nothing here"}), 403)
    assert report_statuses(client, "user", moderator.id) == ["open"]
    # Another moderator may not either; an admin may dismiss the ones about a moderator.
    await api_error(await act(client, other_moderator, "POST",
                              f"/moderation/reports/{about_self['id']}/dismiss",
                              {"reason": "Nothing here"}), 403)
    resp = await act(client, admin, "POST", f"/moderation/reports/{about_self['id']}/dismiss",
                     {"reason": "Nothing here"})
    assert resp.status == 200, await resp.text()


async def test_the_queue_lists_open_reports_first_with_their_targets(client, api_error):
    author, moderator = await member(client), await member(client, "moderator")
    reporters = [await member(client) for _ in range(3)]
    video = await video_of(client, author, "Suspicious title")
    long_body = "word " * 100
    comment_id = comment_on(client, video["id"], author, long_body)
    for reporter in reporters:
        await report(client, reporter, "video", video["id"])
    await report(client, reporters[0], "comment", comment_id, "harassment", note="rude")
    user_report = await (await report(client, reporters[1], "user", author.id)).json()
    # Closing the user report makes it a resolved one.
    await act(client, moderator, "POST", f"/moderation/reports/{user_report['id']}/dismiss")

    resp = await client.get("/moderation/reports", headers=moderator.auth)
    assert resp.status == 200, await resp.text()
    page = await resp.json()
    assert page["next_cursor"] is None
    items = page["items"]
    assert [i["target_type"] for i in items] == ["comment", "video", "video", "video"]
    assert all(i["status"] == "open" for i in items)
    comment_item = items[0]
    assert comment_item["note"] == "rude" and comment_item["reason"] == "harassment"
    assert comment_item["reporter_name"]
    assert comment_item["target"]["label"] == long_body[:200]
    assert comment_item["target"]["video_id"] == video["id"]
    assert comment_item["target"]["open_reports"] == 1
    video_item = items[1]
    assert video_item["target"] == {
        "type": "video", "id": video["id"], "exists": True, "label": "Suspicious title",
        "owner_id": author.id, "hidden": False, "video_id": None, "open_reports": 3}

    # All: the open ones first, then the resolved, paged two at a time.
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        url = "/moderation/reports?status=all&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(url, headers=moderator.auth)).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [i["status"] for i in seen] == ["open"] * 4 + ["dismissed"]
    assert [i["id"] for i in seen[:4]] == [i["id"] for i in items]
    assert seen[4]["target"]["label"] == query(
        db_url(client), "SELECT name FROM users WHERE id = %s", (author.id,))[0][0]

    for bad in ("status=closed", "status=", "cursor=x1", "cursor=o", "cursor=o01",
                "limit=0", "limit=101", "limit=ten", "cursor=" + "o9" * 20):
        resp = await client.get(f"/moderation/reports?{bad}", headers=moderator.auth)
        if bad == "status=":
            assert resp.status == 200
            continue
        await api_error(resp, 422)


# --- users ----------------------------------------------------------------------

async def test_banning_and_unbanning(client, api_error):
    moderator, target, reporter = (await member(client, "moderator"), await member(client),
                                   await member(client))
    video = await video_of(client, target)
    await report(client, reporter, "user", target.id, "harassment")
    url = f"/moderation/users/{target.id}"

    for bad_until in ("tomorrow", "2001-01-01T00:00:00Z", 1893456000, "", "x" * 100,
                      ["2999-01-01"]):
        await api_error(await act(client, moderator, "POST", url + "/ban",
                                  {"reason": "Abuse", "until": bad_until}), 422)
    await api_error(await act(client, moderator, "POST", url + "/unban"), 409, "not_banned")

    resp = await act(client, moderator, "POST", url + "/ban",
                     {"reason": "Abuse", "until": "2999-01-01T12:00:00+02:00"})
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    assert result["banned"] is True and result["banned_until"] == "2999-01-01T10:00:00+00:00"
    assert result["reports_closed"] == 1
    assert report_statuses(client, "user", target.id) == ["actioned"]
    # The ban holds at once: the token, the stream, reporting them.
    await api_error(await client.get("/auth/me", headers=target.auth), 403, "banned")
    assert await stream_status(client, video["id"]) == 404
    await api_error(await report(client, reporter, "user", target.id), 404)

    # Banning again changes the end (here: without end).
    resp = await act(client, moderator, "POST", url + "/ban", {"reason": "Again"})
    assert resp.status == 200 and (await resp.json())["banned_until"] is None

    resp = await act(client, moderator, "POST", url + "/unban", {"reason": "Served"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["banned"] is False
    assert (await client.get("/auth/me", headers=target.auth)).status == 200
    assert await stream_status(client, video["id"]) == 206
    rows = log_rows(client)
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [
        (moderator.id, "user.ban", target.id, "Abuse"),
        (moderator.id, "user.ban", target.id, "Again"),
        (moderator.id, "user.unban", target.id, "Served"),
    ]
    assert rows[0][5]["until"].startswith("2999-01-01T10:00:00")
    assert rows[1][5]["until"] is None and rows[1][5]["previous_until"]


async def test_who_may_ban_whom(client, api_error):
    admin, admin2 = await member(client, "admin"), await member(client, "admin")
    moderator, moderator2 = await member(client, "moderator"), await member(client, "moderator")

    async def ban(actor: Member, target: Member) -> Any:
        return await act(client, actor, "POST", f"/moderation/users/{target.id}/ban")

    await api_error(await ban(moderator, moderator2), 403)
    await api_error(await ban(moderator, admin), 403)
    await api_error(await ban(moderator, moderator), 403)
    await api_error(await ban(admin, admin), 403)
    await api_error(await ban(admin, admin2), 403)
    assert (await ban(admin, moderator2)).status == 200
    assert [r[3] for r in log_rows(client)] == [moderator2.id]


# --- roles ------------------------------------------------------------------------

async def test_admins_set_roles(client, api_error):
    admin, user = await member(client, "admin"), await member(client)
    url = f"/admin/users/{user.id}/role"
    await api_error(await client.get("/moderation/reports", headers=user.auth), 403)
    for bad in ({}, {"role": "root"}, {"role": "Admin"}, {"role": 1}, {"role": None},
                {"role": "moderator", "reason": 5}, {"role": "moderator", "reason": "x" * 501}):
        await api_error(await act(client, admin, "PUT", url, bad), 422)

    resp = await act(client, admin, "PUT", url, {"role": "moderator", "reason": "Trusted"})
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"id": user.id, "role": "moderator", "changed": True}
    # The new role holds on the next request.
    assert (await client.get("/moderation/reports", headers=user.auth)).status == 200
    resp = await act(client, admin, "PUT", url, {"role": "moderator"})
    assert (await resp.json())["changed"] is False
    # A moderator cannot set roles, not even their own; an admin not their own.
    await api_error(await act(client, user, "PUT", url, {"role": "admin"}), 403)
    await api_error(await act(client, admin, "PUT", f"/admin/users/{admin.id}/role",
                              {"role": "user"}), 403)
    resp = await act(client, admin, "PUT", url, {"role": "user"})
    assert resp.status == 200
    assert (await client.get("/moderation/reports", headers=user.auth)).status == 403
    assert log_rows(client) == [
        (admin.id, "role.set", "user", user.id, "Trusted", {"from": "user", "to": "moderator"}),
        (admin.id, "role.set", "user", user.id, "", {"from": "moderator", "to": "user"}),
    ]


# --- the audit log -----------------------------------------------------------------

async def test_the_log_shows_who_did_what_when_and_why(client, api_error):
    moderator, author = await member(client, "moderator"), await member(client)
    name = query(db_url(client), "SELECT name FROM users WHERE id = %s", (moderator.id,))[0][0]
    video = await video_of(client, author, "Logged video")
    for i in range(3):
        path = "remove" if i % 2 == 0 else "restore"
        resp = await act(client, moderator, "POST", f"/moderation/videos/{video['id']}/{path}",
                         {"reason": f"step {i}"})
        assert resp.status == 200
    page = await (await client.get("/moderation/log?limit=2", headers=moderator.auth)).json()
    assert [e["reason"] for e in page["items"]] == ["step 2", "step 1"]
    entry = page["items"][0]
    assert entry["actor_id"] == moderator.id and entry["actor_name"] == name
    assert entry["action"] == "video.remove" and entry["target_type"] == "video"
    assert entry["target_id"] == video["id"] and entry["target_label"] == "Logged video"
    assert entry["at"] and entry["details"]["author_id"] == author.id
    rest = await (await client.get(f"/moderation/log?limit=2&cursor={page['next_cursor']}",
                                    headers=moderator.auth)).json()
    assert [e["reason"] for e in rest["items"]] == ["step 0"]
    assert rest["next_cursor"] is None
    for bad in ("cursor=abc", "cursor=0", "limit=-1", "limit=1000"):
        await api_error(await client.get(f"/moderation/log?{bad}", headers=moderator.auth),
                        422)


# --- pure rules ------------------------------------------------------------------

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("body, expected", [
    ({}, None),
    ({"until": None}, None),
    ({"until": "2030-06-02T00:00:00Z"}, datetime(2030, 6, 2, tzinfo=UTC)),
    ({"until": "2030-06-02T02:00:00+02:00"}, datetime(2030, 6, 2, tzinfo=UTC)),
    ({"until": "2030-06-02"}, datetime(2030, 6, 2, tzinfo=UTC)),
    ({"until": " 2030-06-01T12:00:01 "}, datetime(2030, 6, 1, 12, 0, 1, tzinfo=UTC)),
])
def test_ban_until(body, expected):
    assert ban_until(body, NOW) == expected


@pytest.mark.parametrize("raw", ["2030-06-01T12:00:00Z", "2030-06-01T13:00:00+02:00",
                                 "2001-01-01", "soon", "", 5, True, ["2031-01-01"],
                                 "9999-12-31T23:00:00-05:00", "2031-13-01", "x" * 65])
def test_ban_until_refuses(raw):
    with pytest.raises(ApiError) as info:
        ban_until({"until": raw}, NOW)
    assert info.value.status == 422


@pytest.mark.parametrize("rank, report_id", [(0, 1), (1, 1), (0, 10**18 - 1), (1, 42)])
def test_queue_cursors_round_trip(rank, report_id):
    assert parse_queue_cursor(queue_cursor(rank, report_id)) == (rank, report_id)


@pytest.mark.parametrize("raw", ["1", "o", "r", "x1", "o0", "o01", "o-1", "o1.5", "o١",
                                 "o" + "9" * 19, "O1"])
def test_queue_cursor_garbage(raw):
    with pytest.raises(ApiError):
        parse_queue_cursor(raw)


# --- the command line ---------------------------------------------------------------

def admin_cli(database_url: str, redis_prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    from .test_cli import clean_env

    env = clean_env(DATABASE_URL=database_url, REDIS_URL=REDIS_URL, REDIS_PREFIX=redis_prefix,
                    JWT_SECRET="cli-test-secret-" + "0123456789abcdef" * 3)
    return subprocess.run([sys.executable, "-m", "server", "admin", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


async def test_the_command_line_grants_and_revokes_roles(client, database_url, redis_prefix):
    user = await member(client)
    email = user.email.upper()  # emails match whatever their case
    done = admin_cli(database_url, redis_prefix, "grant", email, "admin")
    assert done.returncode == 0, done.stderr
    assert "admin" in one_line(done.stdout) and user.email in done.stdout
    assert "Traceback" not in done.stderr
    assert (await client.get("/moderation/log", headers=user.auth)).status == 200
    done = admin_cli(database_url, redis_prefix, "grant", user.email, "admin")
    assert done.returncode == 0 and "already" in one_line(done.stdout)

    done = admin_cli(database_url, redis_prefix, "revoke", user.email)
    assert done.returncode == 0, done.stderr
    assert (await client.get("/moderation/log", headers=user.auth)).status == 403
    assert log_rows(client) == [
        (None, "role.set", "user", user.id, "", {"via": "cli", "from": "user", "to": "admin"}),
        (None, "role.set", "user", user.id, "", {"via": "cli", "from": "admin", "to": "user"}),
    ]

    for args, code, needle in (
            (("grant", "nobody@example.com", "admin"), 1, "no account"),
            (("grant", user.email, "root"), 1, "unknown role"),
            (("grant", user.email), 2, "usage:"),
            (("revoke",), 2, "usage:"),
            (("promote", user.email, "admin"), 2, "usage:"),
            (("grant", user.email, "admin", "extra"), 2, "usage:")):
        done = admin_cli(database_url, redis_prefix, *args)
        assert done.returncode == code, (args, done.stderr)
        assert needle in one_line(done.stderr), done.stderr
        assert "Traceback" not in done.stderr
    assert len(log_rows(client)) == 2


def test_help_lists_the_admin_command():
    done = subprocess.run([sys.executable, "-m", "server", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "admin grant EMAIL ROLE" in done.stdout
    assert any(line.split()[:1] == ["admin"] for line in done.stdout.splitlines())

