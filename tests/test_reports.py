"""POST /reports: what may be reported, by whom, how often, and the open-report rule."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from server.accounts.standing import STANDING_KEY
from server.core.config import Config, RateSpec
from server.moderation.rules import ReportInput, report_input

from .conftest import query
from .moderation_helpers import (
    comment_on,
    db_url,
    member,
    report,
    report_statuses,
    video_of,
)


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    """Room for the reports these tests file; the limit has its own test."""
    return make_config(rate_limit_report=RateSpec(1000, 3600))


async def test_reporting_a_video_a_comment_and_a_user(client):
    author, reporter = await member(client), await member(client)
    video = await video_of(client, author)
    comment_id = comment_on(client, video["id"], author)
    for target_type, target_id in (("video", video["id"]), ("comment", comment_id),
                                   ("user", author.id)):
        resp = await report(client, reporter, target_type, target_id, "harassment",
                            note="  see 0:42  ")
        assert resp.status == 201, await resp.text()
        body = await resp.json()
        assert body["target_type"] == target_type and body["target_id"] == target_id
        assert body["reason"] == "harassment" and body["note"] == "see 0:42"
        assert body["status"] == "open" and body["reporter_id"] == reporter.id
        assert body["resolved_at"] is None and isinstance(body["id"], int)
    # Every reason of the list is accepted.
    for reason in ("spam", "hate", "violence", "sexual", "copyright", "misinformation",
                   "other"):
        someone = await member(client)
        resp = await report(client, someone, "video", video["id"], reason)
        assert resp.status == 201, reason


async def test_a_second_open_report_on_the_same_target_is_a_conflict(client, api_error):
    author, reporter = await member(client), await member(client)
    video = await video_of(client, author)
    assert (await report(client, reporter, "video", video["id"])).status == 201
    await api_error(await report(client, reporter, "video", video["id"], "hate"), 409,
                    "already_reported")
    # Another reporter, or the same reporter on another target, is fine.
    assert (await report(client, await member(client), "video", video["id"])).status == 201
    assert (await report(client, reporter, "user", author.id)).status == 201
    # Once the report is closed, the same reporter may report again.
    query(db_url(client), "UPDATE reports SET status = 'dismissed' WHERE reporter_id = %s",
          (reporter.id,))
    assert (await report(client, reporter, "video", video["id"])).status == 201


async def test_concurrent_duplicate_reports_make_one_report(client):
    author, reporter = await member(client), await member(client)
    video = await video_of(client, author)
    answers = await asyncio.gather(*(report(client, reporter, "video", video["id"])
                                     for _ in range(8)))
    assert sorted(r.status for r in answers) == [201] + [409] * 7
    assert report_statuses(client, "video", video["id"]) == ["open"]


async def test_targets_the_reporter_cannot_see_are_not_found(client, api_error):
    author, reporter = await member(client), await member(client)
    video = await video_of(client, author)
    url = db_url(client)

    private = await video_of(client, author, "Private", seed=2)
    query(url, "UPDATE videos SET visibility = 'private' WHERE id = %s", (private["id"],))
    await api_error(await report(client, reporter, "video", private["id"]), 404)

    unlisted = await video_of(client, author, "Unlisted", seed=3)
    query(url, "UPDATE videos SET visibility = 'unlisted' WHERE id = %s", (unlisted["id"],))
    assert (await report(client, reporter, "video", unlisted["id"])).status == 201

    removed = await video_of(client, author, "Removed", seed=4)
    query(url, "UPDATE videos SET removed_at = now() WHERE id = %s", (removed["id"],))
    await api_error(await report(client, reporter, "video", removed["id"]), 404)
    removed_comment = comment_on(client, video["id"], author)
    query(url, "UPDATE comments SET removed_at = now() WHERE id = %s", (removed_comment,))
    await api_error(await report(client, reporter, "comment", removed_comment), 404)
    deleted_comment = comment_on(client, video["id"], author)
    query(url, "UPDATE comments SET deleted_at = now(), body = '' WHERE id = %s",
          (deleted_comment,))
    await api_error(await report(client, reporter, "comment", deleted_comment), 404)
    on_private = comment_on(client, private["id"], author)
    await api_error(await report(client, reporter, "comment", on_private), 404)

    banned = await member(client)
    banned_video = await video_of(client, banned, seed=5)
    banned_comment = comment_on(client, video["id"], banned)
    query(url, "UPDATE users SET banned_until = 'infinity' WHERE id = %s", (banned.id,))
    for target_type, target_id in (("user", banned.id), ("video", banned_video["id"]),
                                   ("comment", banned_comment)):
        await api_error(await report(client, reporter, target_type, target_id), 404)

    for target_type in ("video", "comment", "user"):
        await api_error(await report(client, reporter, target_type, 987654321), 404)
    assert query(url, "SELECT count(*) FROM reports WHERE reporter_id = %s",
                 (reporter.id,)) == [(1,)]


@pytest.mark.parametrize("body", [
    {},
    {"target_type": "video", "target_id": 1},
    {"target_type": "video", "target_id": 1, "reason": "boring"},
    {"target_type": "video", "target_id": 1, "reason": "SPAM"},
    {"target_type": "video", "target_id": 1, "reason": ["spam"]},
    {"target_type": "channel", "target_id": 1, "reason": "spam"},
    {"target_type": None, "target_id": 1, "reason": "spam"},
    {"target_type": 1, "target_id": 1, "reason": "spam"},
    {"target_type": "video", "reason": "spam"},
    {"target_type": "video", "target_id": "1", "reason": "spam"},
    {"target_type": "video", "target_id": 1.0, "reason": "spam"},
    {"target_type": "video", "target_id": True, "reason": "spam"},
    {"target_type": "video", "target_id": 0, "reason": "spam"},
    {"target_type": "video", "target_id": -3, "reason": "spam"},
    {"target_type": "video", "target_id": 2**63, "reason": "spam"},
    {"target_type": "video", "target_id": 10**400, "reason": "spam"},
    {"target_type": "video", "target_id": 1, "reason": "spam", "note": "x" * 1001},
    {"target_type": "video", "target_id": 1, "reason": "spam", "note": 5},
    {"target_type": "video", "target_id": 1, "reason": "spam", "note": "a\x00b"},
    {"target_type": "video", "target_id": 1, "reason": "spam", "note": "\ud800"},
])
async def test_garbage_is_refused(client, body):
    reporter = await member(client)
    resp = await client.post("/reports", headers=reporter.auth, json=body)
    assert resp.status in (400, 422), (body, await resp.text())
    assert "error" in await resp.json()


async def test_the_longest_note_is_accepted(client):
    author, reporter = await member(client), await member(client)
    resp = await report(client, reporter, "user", author.id, note="n" * 1000)
    assert resp.status == 201, await resp.text()


async def test_body_shapes_and_sign_in(client, api_error):
    reporter = await member(client)
    await api_error(await client.post("/reports", json={"target_type": "user",
                                                        "target_id": reporter.id,
                                                        "reason": "spam"}), 401)
    await api_error(await client.post("/reports", headers={
        **reporter.auth, "Content-Type": "text/plain"}, data="{}"), 415)
    await api_error(await client.post("/reports", headers={
        **reporter.auth, "Content-Type": "application/json"}, data="{nope"), 400)
    await api_error(await client.post("/reports", headers=reporter.auth, json=[1, 2]), 422)
    await api_error(await client.post("/reports", headers={
        "Authorization": "Bearer not-a-token"}, json={}), 401)


async def test_a_banned_user_cannot_report(client, api_error):
    author, reporter = await member(client), await member(client)
    query(db_url(client), "UPDATE users SET banned_until = 'infinity' WHERE id = %s",
          (reporter.id,))
    # Stand-in for a moderator's ban: this process learns of it on its next reload.
    await client.server.app[STANDING_KEY].reload()
    await api_error(await report(client, reporter, "user", author.id), 403, "banned")


@pytest.mark.parametrize("body, expected", [
    ({"target_type": "video", "target_id": 7, "reason": "spam"},
     ReportInput("video", 7, "spam", "")),
    ({"target_type": "user", "target_id": 2**63 - 1, "reason": "other", "note": " n "},
     ReportInput("user", 2**63 - 1, "other", "n")),
    ({"target_type": "comment", "target_id": 1, "reason": "hate", "note": None},
     ReportInput("comment", 1, "hate", "")),
])
def test_report_input(body, expected):
    assert report_input(body) == expected


async def test_reports_are_rate_limited_per_account_across_instances(instance, api_error):
    limit = RateSpec(3, 3600)
    a = await instance(rate_limit_report=limit)
    b = await instance(rate_limit_report=limit)
    author, reporter = await member(a), await member(a)
    videos = [await video_of(a, author, seed=i) for i in range(4)]
    assert (await report(a, reporter, "video", videos[0]["id"])).status == 201
    assert (await report(b, reporter, "video", videos[1]["id"])).status == 201
    assert (await report(a, reporter, "video", videos[2]["id"])).status == 201
    resp = await report(b, reporter, "video", videos[3]["id"])
    await api_error(resp, 429)
    assert int(resp.headers["Retry-After"]) >= 1
    # Another account has its own budget.
    assert (await report(b, await member(a), "video", videos[3]["id"])).status == 201
