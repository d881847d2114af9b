"""Comments and replies over real HTTP and PostgreSQL: threads, sorting, placeholders,
hidden authors, bad input, counts under concurrency and the shared rate limit."""

from __future__ import annotations

import asyncio

import pytest

from server.core.config import RateSpec
from server.core.errors import ApiError
from server.social.rules import clean_comment, decode_cursor, encode_cursor, parse_sort

from .conftest import query
from .social_support import ban, member, ready_video, roomy_client


@pytest.fixture
async def client(aiohttp_client, make_config):
    return await roomy_client(aiohttp_client, make_config)


async def post(client, who, video_id, body, parent_id=None):
    payload = {"body": body} if parent_id is None else {"body": body, "parent_id": parent_id}
    resp = await client.post(f"/videos/{video_id}/comments", json=payload, headers=who.auth)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def listing(client, video_id, who=None, **params):
    resp = await client.get(f"/videos/{video_id}/comments", params=params,
                            headers=who.auth if who else {})
    assert resp.status == 200, await resp.text()
    return await resp.json()


def counts(database_url, video_id):
    [(comment_count,)] = query(database_url, "SELECT comment_count FROM videos WHERE id = %s",
                               (video_id,))
    [(rows,)] = query(database_url, "SELECT count(*) FROM comments WHERE video_id = %s"
                      " AND deleted_at IS NULL", (video_id,))
    return comment_count, rows


# --- pure rules -----------------------------------------------------------------

@pytest.mark.parametrize("raw, cleaned", [
    ("hello", "hello"),
    ("  padded\n ", "padded"),
    ("line one\r\nline two\rthree", "line one\nline two\nthree"),
    ("tab\there", "tab\there"),
    ("bell\x07 and escape\x1b[31m red", "bell and escape[31m red"),
    ("del\x7f and c1\x85 gone", "del and c1 gone"),
    ("<script>alert(1)</script>", "<script>alert(1)</script>"),  # escaped when rendered
    ("ünïcödé ✓ 😀", "ünïcödé ✓ 😀"),
])
def test_clean_comment(raw, cleaned):
    assert clean_comment(raw, 100) == cleaned


@pytest.mark.parametrize("raw", ["", "   ", "\n\t\n", "\x01\x02", "x" * 11, " " + "y" * 11])
def test_clean_comment_refuses(raw):
    with pytest.raises(ApiError) as info:
        clean_comment(raw, 10)
    assert info.value.status == 422


def test_cursor_round_trip_and_garbage():
    assert decode_cursor(encode_cursor(5, 7), int, int) == (5, 7)
    assert decode_cursor(encode_cursor(0.25, 3), float, int) == (0.25, 3)
    assert decode_cursor(None, int) is None and decode_cursor("", int) is None
    for bad in ["!!!", "e30", encode_cursor(1), encode_cursor("x", 1), encode_cursor(-1, 1),
                encode_cursor(True, 1), encode_cursor(2**70, 1), "é" * 5, "A" * 300,
                encode_cursor(1.5, 2)]:
        with pytest.raises(ApiError) as info:
            decode_cursor(bad, int, int)
        assert info.value.status == 422 and info.value.code == "invalid_cursor"


def test_cursor_dates_are_utc_and_bounded():
    """A cursor's date reaches PostgreSQL in UTC: offsets Python takes and PostgreSQL
    does not (past 15:59), or a date that leaves the calendar in UTC, are 422."""
    from datetime import UTC, datetime
    [moment] = decode_cursor(encode_cursor("2026-01-01T10:00:00+23:59"), datetime)
    assert moment == datetime(2025, 12, 31, 10, 1, tzinfo=UTC) and moment.utcoffset().seconds == 0
    with pytest.raises(ApiError) as info:
        decode_cursor(encode_cursor("0001-01-01T00:00:00+23:59"), datetime)
    assert info.value.code == "invalid_cursor"


async def test_subscriptions_cursor_with_a_far_offset_is_not_a_500(client):
    alice = await member(client, "alice")
    cursor = encode_cursor("0001-01-01T00:00:00+23:59", 1)
    resp = await client.get("/users/me/subscriptions", params={"cursor": cursor},
                            headers=alice.auth)
    assert resp.status == 422
    cursor = encode_cursor("2001-01-01T00:00:00+23:59", 1)
    resp = await client.get("/users/me/subscriptions", params={"cursor": cursor},
                            headers=alice.auth)
    assert resp.status == 200


def test_parse_sort():
    assert parse_sort(None) == "newest" and parse_sort("top") == "top"
    with pytest.raises(ApiError):
        parse_sort("oldest")


# --- threads --------------------------------------------------------------------

async def test_comment_reply_and_listing(client, database_url):
    alice, bob = await member(client, "alice"), await member(client, "bob")
    video = await ready_video(client, alice)
    first = await post(client, alice, video["id"], "  First!  ")
    assert first["body"] == "First!" and first["author_name"] == "alice"
    assert first["parent_id"] is None and first["replies"] == [] and first["reply_count"] == 0
    assert first["deleted"] is False and first["removed"] is False and first["edited_at"] is None
    replies = [await post(client, bob, video["id"], f"reply {i}", first["id"]) for i in range(4)]
    assert replies[0]["parent_id"] == first["id"]
    second = await post(client, bob, video["id"], "second")

    page = await listing(client, video["id"])
    assert [c["id"] for c in page["items"]] == [second["id"], first["id"]]
    top = page["items"][1]
    assert top["reply_count"] == 4
    # The first three replies, oldest first.
    assert [r["body"] for r in top["replies"]] == ["reply 0", "reply 1", "reply 2"]
    assert page["next_cursor"] is None

    resp = await client.get(f"/comments/{first['id']}/replies", params={"limit": "3"})
    body = await resp.json()
    assert [r["body"] for r in body["items"]] == ["reply 0", "reply 1", "reply 2"]
    resp = await client.get(f"/comments/{first['id']}/replies",
                            params={"cursor": body["next_cursor"]})
    assert [r["body"] for r in (await resp.json())["items"]] == ["reply 3"]

    resp = await client.get(f"/videos/{video['id']}")
    assert (await resp.json())["comment_count"] == 6
    assert counts(database_url, video["id"]) == (6, 6)


async def test_top_sort_pages_with_keyset_cursor(client):
    alice = await member(client)
    video = await ready_video(client, alice)
    made = [await post(client, alice, video["id"], f"c{i}") for i in range(5)]
    # c1 gets 2 replies, c3 gets 1: top order c1, c3, then newest first c4, c2, c0.
    for parent, n in ((made[1], 2), (made[3], 1)):
        for _ in range(n):
            await post(client, alice, video["id"], "r", parent["id"])
    seen, cursor = [], None
    while True:
        params = {"sort": "top", "limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = await listing(client, video["id"], **params)
        seen += [c["body"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["c1", "c3", "c4", "c2", "c0"]
    newest = await listing(client, video["id"], limit="2")
    rest = await listing(client, video["id"], limit="10", cursor=newest["next_cursor"])
    assert [c["body"] for c in newest["items"] + rest["items"]] == ["c4", "c3", "c2", "c1", "c0"]


async def test_one_level_of_replies_only(client, api_error):
    alice = await member(client)
    video, other = await ready_video(client, alice), await ready_video(client, alice)
    top = await post(client, alice, video["id"], "top")
    reply = await post(client, alice, video["id"], "reply", top["id"])
    url = f"/videos/{video['id']}/comments"
    resp = await client.post(url, json={"body": "deeper", "parent_id": reply["id"]},
                             headers=alice.auth)
    await api_error(resp, 422, "nested_reply")
    # A parent on another video, or none at all.
    on_other = await post(client, alice, other["id"], "elsewhere")
    for parent in (on_other["id"], 999_999):
        resp = await client.post(url, json={"body": "x", "parent_id": parent}, headers=alice.auth)
        await api_error(resp, 422, "invalid_parent")


async def test_garbage_input(client, api_error):
    alice = await member(client)
    video = await ready_video(client, alice)
    url = f"/videos/{video['id']}/comments"
    for payload in [{}, {"body": None}, {"body": 5}, {"body": ["x"]}, {"body": {"a": 1}},
                    {"body": ""}, {"body": " \n\t "}, {"body": "\x01\x02\x03"},
                    {"body": "x" * 5001}, {"body": "a\x00b"},
                    {"body": "ok", "parent_id": "1"}, {"body": "ok", "parent_id": -1},
                    {"body": "ok", "parent_id": 0}, {"body": "ok", "parent_id": 1.5},
                    {"body": "ok", "parent_id": True}, {"body": "ok", "parent_id": 2**70}]:
        await api_error(await client.post(url, json=payload, headers=alice.auth), 422)
    # A lone surrogate, as a JSON escape.
    resp = await client.post(url, data=b'{"body": "\\ud800"}', headers={
        **alice.auth, "Content-Type": "application/json"})
    await api_error(resp, 422)
    await api_error(await client.post(url, data=b"{nope", headers={
        **alice.auth, "Content-Type": "application/json"}), 400, "invalid_json")
    await api_error(await client.post(url, json=["body"], headers=alice.auth), 422)
    await api_error(await client.post(url, data="body=x", headers={
        **alice.auth, "Content-Type": "application/x-www-form-urlencoded"}), 415)
    await api_error(await client.post(url, json={"body": "hi"}), 401)
    for bad in ("abc", "0", "-1", "007", "99999999", "1" * 30):
        await api_error(await client.post(f"/videos/{bad}/comments", json={"body": "hi"},
                                          headers=alice.auth), 404)
        await api_error(await client.get(f"/videos/{bad}/comments"), 404)
        await api_error(await client.get(f"/comments/{bad}/replies"), 404)
        await api_error(await client.patch(f"/comments/{bad}", json={"body": "x"},
                                           headers=alice.auth), 404)
        await api_error(await client.delete(f"/comments/{bad}", headers=alice.auth), 404)
    for params in ({"sort": "best"}, {"limit": "0"}, {"limit": "101"}, {"limit": "x"},
                   {"cursor": "garbage"}, {"cursor": "é"}, {"sort": "top", "cursor": "WzFd"}):
        await api_error(await client.get(url, params=params), 422)
    # The exact maximum length is accepted.
    assert (await post(client, alice, video["id"], "y" * 5000))["body"] == "y" * 5000


async def test_only_playable_videos_take_comments(client, database_url, api_error):
    alice, bob = await member(client), await member(client)
    private = await ready_video(client, alice, visibility="private", database_url=database_url)
    unlisted = await ready_video(client, alice, visibility="unlisted", database_url=database_url)
    removed = await ready_video(client, alice)
    query(database_url, "UPDATE videos SET removed_at = now() WHERE id = %s", (removed["id"],))
    for video in (private, removed):
        resp = await client.post(f"/videos/{video['id']}/comments", json={"body": "hi"},
                                 headers=bob.auth)
        await api_error(resp, 404)
        await api_error(await client.get(f"/videos/{video['id']}/comments",
                                         headers=bob.auth), 404)
    assert (await post(client, bob, unlisted["id"], "by link"))["body"] == "by link"
    # The author comments on their own private video and reads it back.
    await post(client, alice, private["id"], "note to self")
    assert len((await listing(client, private["id"], alice))["items"]) == 1


async def test_edit_and_delete_by_the_author_only(client, database_url, api_error):
    alice, bob = await member(client), await member(client)
    video = await ready_video(client, alice)
    mine = await post(client, alice, video["id"], "original")
    url = f"/comments/{mine['id']}"
    await api_error(await client.patch(url, json={"body": "hijack"}, headers=bob.auth), 403)
    await api_error(await client.delete(url, headers=bob.auth), 403)
    await api_error(await client.patch(url, json={"body": "x"}), 401)
    await api_error(await client.patch(url, json={"body": ""}, headers=alice.auth), 422)
    await api_error(await client.patch(url, json={"text": "x"}, headers=alice.auth), 422)
    resp = await client.patch(url, json={"body": "edited\x07 "}, headers=alice.auth)
    assert resp.status == 200
    edited = await resp.json()
    assert edited["body"] == "edited" and edited["edited_at"] is not None
    resp = await client.delete(url, headers=alice.auth)
    assert resp.status == 204
    await api_error(await client.delete(url, headers=alice.auth), 404)
    await api_error(await client.patch(url, json={"body": "again"}, headers=alice.auth), 404)
    assert (await listing(client, video["id"]))["items"] == []
    assert counts(database_url, video["id"]) == (0, 0)


async def test_deleted_comment_with_replies_leaves_a_placeholder(client, database_url):
    alice, bob = await member(client), await member(client)
    video = await ready_video(client, alice)
    top = await post(client, alice, video["id"], "secret words")
    reply = await post(client, bob, video["id"], "an answer", top["id"])
    assert (await client.delete(f"/comments/{top['id']}", headers=alice.auth)).status == 204
    [item] = (await listing(client, video["id"], bob))["items"]
    assert item["deleted"] is True and item["body"] == "" and item["author_id"] is None
    assert item["reply_count"] == 1 and item["replies"][0]["body"] == "an answer"
    assert counts(database_url, video["id"]) == (1, 1)
    # A placeholder takes no new replies; its last reply gone, it goes too.
    resp = await client.post(f"/videos/{video['id']}/comments",
                             json={"body": "late", "parent_id": top["id"]}, headers=bob.auth)
    assert resp.status == 422
    assert (await client.delete(f"/comments/{reply['id']}", headers=bob.auth)).status == 204
    assert (await listing(client, video["id"]))["items"] == []
    assert query(database_url, "SELECT count(*) FROM comments")[0][0] == 0
    assert counts(database_url, video["id"]) == (0, 0)


async def test_removed_comment_shows_as_placeholder(client, database_url):
    alice, bob = await member(client), await member(client)
    video = await ready_video(client, alice)
    bad = await post(client, bob, video["id"], "something nasty")
    query(database_url, "UPDATE comments SET removed_at = now(), removed_reason = 'spam'"
          " WHERE id = %s", (bad["id"],))
    for viewer in (None, alice):
        [item] = (await listing(client, video["id"], viewer))["items"]
        assert item["removed"] is True and item["body"] == ""
    [own] = (await listing(client, video["id"], bob))["items"]
    assert own["removed"] is True and own["body"] == "something nasty"
    resp = await client.patch(f"/comments/{bad['id']}", json={"body": "nice"}, headers=bob.auth)
    assert resp.status == 403
    resp = await client.post(f"/videos/{video['id']}/comments",
                             json={"body": "re", "parent_id": bad["id"]}, headers=alice.auth)
    assert resp.status == 422


async def test_banned_and_blocked_authors_are_hidden(client, database_url, api_error):
    alice, bob, carol = await member(client), await member(client), await member(client)
    video = await ready_video(client, alice)
    top = await post(client, alice, video["id"], "hello")
    by_bob = await post(client, bob, video["id"], "bob here")
    await post(client, bob, video["id"], "bob replies", top["id"])
    await post(client, carol, video["id"], "carol replies", top["id"])

    # Carol blocks Bob: she no longer sees him; Alice still does.
    resp = await client.put(f"/users/{bob.id}/block", headers=carol.auth)
    assert resp.status == 200 and (await resp.json()) == {"blocked": True}
    seen = (await listing(client, video["id"], carol))["items"]
    assert [c["id"] for c in seen] == [top["id"]]
    assert [r["body"] for r in seen[0]["replies"]] == ["carol replies"]
    replies = await (await client.get(f"/comments/{top['id']}/replies",
                                      headers=carol.auth)).json()
    assert [r["body"] for r in replies["items"]] == ["carol replies"]
    await api_error(await client.get(f"/comments/{by_bob['id']}/replies",
                                     headers=carol.auth), 404)
    assert len((await listing(client, video["id"], alice))["items"]) == 2
    resp = await client.delete(f"/users/{bob.id}/block", headers=carol.auth)
    assert (await resp.json()) == {"blocked": False}
    assert len((await listing(client, video["id"], carol))["items"]) == 2

    # Bob is banned: his comments disappear for everyone, and he cannot comment.
    ban(database_url, bob.id)
    for viewer in (None, alice, carol):
        items = (await listing(client, video["id"], viewer))["items"]
        assert [c["id"] for c in items] == [top["id"]]
        assert [r["body"] for r in items[0]["replies"]] == ["carol replies"]
    resp = await client.post(f"/videos/{video['id']}/comments", json={"body": "let me"},
                             headers=bob.auth)
    await api_error(resp, 403, "banned")
    ban(database_url, bob.id, banned=False)
    assert len((await listing(client, video["id"]))["items"]) == 2


async def test_counts_stay_exact_under_concurrent_writes(client, database_url):
    users = [await member(client) for _ in range(4)]
    video = await ready_video(client, users[0])
    top = await post(client, users[0], video["id"], "thread")

    async def churn(who, n):
        for i in range(n):
            payload = {"body": f"r{i}"} | ({"parent_id": top["id"]} if i % 2 else {})
            resp = await client.post(f"/videos/{video['id']}/comments", json=payload,
                                     headers=who.auth)
            # Replies race the thread's deletion: after it, they are refused.
            assert resp.status == 201 or (resp.status == 422 and i % 2), await resp.text()
            made = await resp.json()
            if resp.status == 201 and i % 3 == 0:
                resp = await client.delete(f"/comments/{made['id']}", headers=who.auth)
                assert resp.status == 204

    async def delete_thread():
        await asyncio.sleep(0.05)
        resp = await client.delete(f"/comments/{top['id']}", headers=users[0].auth)
        assert resp.status == 204

    results = await asyncio.gather(*(churn(who, 9) for who in users), delete_thread(),
                                   return_exceptions=True)
    assert [r for r in results if r is not None] == []
    comment_count, rows = counts(database_url, video["id"])
    assert comment_count == rows
    mismatched = query(database_url, """
        SELECT p.id FROM comments p
        WHERE p.reply_count <> (SELECT count(*) FROM comments r WHERE r.parent_id = p.id)""")
    assert mismatched == []


async def test_comment_limit_is_shared_by_two_instances(aiohttp_client, make_config, instance,
                                                        api_error):
    limit = {"rate_limit_comment": RateSpec(3, 60)}
    first = await roomy_client(aiohttp_client, make_config, **limit)
    second = await instance(**limit)
    alice = await member(first)
    video = await ready_video(first, alice)
    url = f"/videos/{video['id']}/comments"
    for app in (first, second, first):
        assert (await app.post(url, json={"body": "hi"}, headers=alice.auth)).status == 201
    for app in (second, first):
        resp = await app.post(url, json={"body": "one more"}, headers=alice.auth)
        await api_error(resp, 429, "rate_limited")
        assert int(resp.headers["Retry-After"]) >= 1


async def test_comment_edits_are_rate_limited(aiohttp_client, make_config, api_error):
    client = await roomy_client(aiohttp_client, make_config,
                                rate_limit_comment=RateSpec(2, 60))
    alice = await member(client)
    video = await ready_video(client, alice)
    resp = await client.post(f"/videos/{video['id']}/comments", json={"body": "first"},
                             headers=alice.auth)
    comment = await resp.json()
    for text in ("second", "third"):
        resp = await client.patch(f"/comments/{comment['id']}", json={"body": text},
                                  headers=alice.auth)
        assert resp.status == 200, await resp.text()
    resp = await client.patch(f"/comments/{comment['id']}", json={"body": "fourth"},
                              headers=alice.auth)
    await api_error(resp, 429, "rate_limited")
