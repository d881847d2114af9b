"""Visibility, tags and who sees what: PATCH /videos/{id}, GET /videos, /videos/{id},
/users/{id}/videos, over real HTTP with real PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from server.catalog.edits import TAGS_MAX, VideoEdit, normalise_tag, normalise_tags, parse_edit
from server.core.errors import Invalid
from server.core.keys import CHANGES_KEY, DB_KEY

from .conftest import fake_mp4, login, new_user_token, query, register, until, upload, upload_ready


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def new_user(client: Any) -> tuple[int, str]:
    user = await register(client)
    token = (await login(client, user["email"]))["access_token"]
    return user["id"], token


async def edit(client: Any, video_id: int | str, token: str, body: Any) -> Any:
    return await client.patch(f"/videos/{video_id}", data=json.dumps(body), headers={
        **bearer(token), "Content-Type": "application/json"})


async def change_video(app: Any, video_id: int, sql: str, params: tuple[Any, ...]) -> None:
    """Run `sql` on the video and record the change, as moderation and bans do."""
    db, changes = app[DB_KEY], app[CHANGES_KEY]
    async with db.transaction() as cur:
        await cur.execute(sql, params)
        seq = await changes.record(cur, video_id, "changed")
    changes.applied(video_id, seq)


async def listed_ids(client: Any, path: str = "/videos", token: str | None = None) -> list[int]:
    resp = await client.get(path, headers=bearer(token) if token else {})
    assert resp.status == 200, await resp.text()
    return [v["id"] for v in (await resp.json())["items"]]


# --- tags and edits, pure ------------------------------------------------------------

@pytest.mark.parametrize(("raw", "tag"), [
    ("cats", "cats"), ("  Cats ", "cats"), ("#Cats", "cats"), ("##cats", "cats"),
    ("# cats", "cats"), ("CATS", "cats"), ("how-to", "how-to"), ("snake_case", "snake_case"),
    ("2024", "2024"), ("Ｃａｔｓ", "cats"),            # full-width folds to plain letters
    ("Кошки", "кошки"), ("猫", "猫"), ("हिंदी", "हिंदी"),  # any script, with its marks
    ("x" * 30, "x" * 30),
    ("", None), ("#", None), ("   ", None), ("x" * 31, None), ("two words", None),
    ("a.b", None), ("<b>", None), ("tag!", None), ("emoji😀", None), ("\u0301a", None),
    ("a\x00b", None), ("ca#ts", None),
])
def test_normalise_tag(raw, tag):
    assert normalise_tag(raw) == tag


def test_tags_are_deduplicated_in_first_order():
    assert normalise_tags(["B", "a", "#b", " A ", "c"]) == ["b", "a", "c"]
    assert normalise_tags([]) == []
    assert normalise_tags(["x"] * 15) == ["x"]


@pytest.mark.parametrize("value", [
    "cats", None, 3, {"a": 1}, [1], [None], [["a"]], ["ok", "no way"],
    [f"t{i}" for i in range(TAGS_MAX + 1)], ["x" * 1000],
])
def test_bad_tags_are_refused(value):
    with pytest.raises(Invalid):
        normalise_tags(value)


@pytest.mark.parametrize(("body", "expected"), [
    ({"title": "  New  "}, VideoEdit(title="New")),
    ({"description": ""}, VideoEdit(description="")),
    ({"visibility": "unlisted", "tags": ["#A"]}, VideoEdit(visibility="unlisted", tags=["a"])),
    ({"tags": []}, VideoEdit(tags=[])),
    ({"title": "t", "other": 1}, VideoEdit(title="t")),  # unknown fields are ignored
])
def test_parse_edit(body, expected):
    assert parse_edit(body) == expected


@pytest.mark.parametrize("body", [
    {}, {"other": 1}, {"title": None}, {"title": ""}, {"title": "   "}, {"title": 5},
    {"title": "x" * 201}, {"title": "a\x00b"}, {"title": "\ud800"}, {"description": None},
    {"description": "x" * 5001}, {"description": ["x"]}, {"visibility": "secret"},
    {"visibility": None}, {"visibility": "PUBLIC"}, {"visibility": ["public"]},
    {"tags": None}, {"tags": "a,b"}, {"tags": ["a b"]},
])
def test_parse_edit_refuses(body):
    with pytest.raises(Invalid):
        parse_edit(body)


# --- PATCH /videos/{id} ----------------------------------------------------------------

async def test_author_edits_fields_and_tags_are_normalised(client):
    token = await new_user_token(client)
    video = await upload_ready(client, token, fake_mp4(4000), title="Old")
    assert video["visibility"] == "public" and video["tags"] == []
    resp = await edit(client, video["id"], token, {
        "title": " New title ", "description": "About cats", "visibility": "unlisted",
        "tags": ["#Cats", "cats", " Kittens", "ПРИВЕТ"]})
    assert resp.status == 200, await resp.text()
    edited = await resp.json()
    assert edited["title"] == "New title" and edited["description"] == "About cats"
    assert edited["visibility"] == "unlisted"
    assert edited["tags"] == ["cats", "kittens", "привет"]
    assert edited["stream_url"] == f"/videos/{video['id']}/stream"
    again = await (await client.get(f"/videos/{video['id']}")).json()
    assert {k: again[k] for k in ("title", "description", "visibility", "tags")} == \
        {k: edited[k] for k in ("title", "description", "visibility", "tags")}
    # A partial edit leaves the rest alone.
    resp = await edit(client, video["id"], token, {"tags": []})
    partial = await resp.json()
    assert partial["tags"] == [] and partial["title"] == "New title"
    assert partial["visibility"] == "unlisted"


@pytest.mark.parametrize("body", [
    {}, [], "title", 5, None, {"title": ""}, {"title": 7}, {"title": "x" * 201},
    {"description": "x" * 5001}, {"visibility": "hidden"}, {"visibility": 1},
    {"tags": "cats"}, {"tags": ["ok"] * 3 + ["not ok"]}, {"tags": [f"t{i}" for i in range(16)]},
    {"tags": [{"tag": "x"}]}, {"title": "a\x00b"},
])
async def test_patch_garbage_is_422(client, api_error, body):
    token = await new_user_token(client)
    video = await upload_ready(client, token, fake_mp4(4000))
    resp = await edit(client, video["id"], token, body)
    await api_error(resp, 422, "validation_error")
    after = await (await client.get(f"/videos/{video['id']}")).json()
    assert after["title"] == video["title"] and after["tags"] == []


async def test_patch_bad_bodies(client, api_error):
    token = await new_user_token(client)
    video = await upload_ready(client, token, fake_mp4(4000))
    url = f"/videos/{video['id']}"
    resp = await client.patch(url, data=b"{not json", headers={
        **bearer(token), "Content-Type": "application/json"})
    await api_error(resp, 400, "invalid_json")
    resp = await client.patch(url, data=b"title=x", headers={
        **bearer(token), "Content-Type": "application/x-www-form-urlencoded"})
    await api_error(resp, 415)
    resp = await client.patch(url, json={"title": "x"})
    await api_error(resp, 401)
    resp = await client.patch(url, json={"title": "x"}, headers=bearer("garbage"))
    await api_error(resp, 401)


async def test_only_the_author_edits(client, api_error):
    author = await new_user_token(client)
    other = await new_user_token(client)
    video = await upload_ready(client, author, fake_mp4(4000), title="Mine")
    resp = await edit(client, video["id"], other, {"title": "Stolen"})
    await api_error(resp, 403, "forbidden")
    resp = await client.delete(f"/videos/{video['id']}", headers=bearer(other))
    await api_error(resp, 403, "forbidden")
    for raw in ("999999", "0", "abc", "-1", "1.5"):
        resp = await edit(client, raw, author, {"title": "x"})
        await api_error(resp, 404, "not_found")
    # Someone else's private video is not found at all, not forbidden.
    await edit(client, video["id"], author, {"visibility": "private"})
    resp = await edit(client, video["id"], other, {"visibility": "public"})
    await api_error(resp, 404, "not_found")
    resp = await client.delete(f"/videos/{video['id']}", headers=bearer(other))
    await api_error(resp, 404, "not_found")
    mine = await (await client.get(f"/videos/{video['id']}", headers=bearer(author))).json()
    assert mine["title"] == "Mine" and mine["visibility"] == "private"


async def test_processing_video_can_be_edited(client):
    token = await new_user_token(client)
    resp = await upload(client, token, fake_mp4(4000))
    video = await resp.json()
    resp = await edit(client, video["id"], token, {"visibility": "private", "tags": ["a"]})
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "processing" and body["visibility"] == "private"


# --- who sees what ---------------------------------------------------------------------

async def test_private_video_is_the_authors_alone(client, api_error):
    author_id, author = await new_user(client)
    _, other = await new_user(client)
    video = await upload_ready(client, author, fake_mp4(4000))
    public = await upload_ready(client, author, fake_mp4(4000, seed=2))
    await edit(client, video["id"], author, {"visibility": "private"})
    url = f"/videos/{video['id']}"
    await api_error(await client.get(url), 404, "not_found")
    await api_error(await client.get(url, headers=bearer(other)), 404, "not_found")
    await api_error(await client.get(url, headers=bearer("garbage")), 404, "not_found")
    own = await (await client.get(url, headers=bearer(author))).json()
    assert own["visibility"] == "private"
    assert own["stream_url"].startswith(f"/videos/{video['id']}/stream?expires=")

    assert await listed_ids(client) == [public["id"]]
    assert await listed_ids(client, token=other) == [public["id"]]
    assert await listed_ids(client, token=author) == [public["id"], video["id"]]
    mine = f"/users/{author_id}/videos"
    assert await listed_ids(client, mine) == [public["id"]]
    assert await listed_ids(client, mine, other) == [public["id"]]
    assert await listed_ids(client, mine, author) == [public["id"], video["id"]]
    # The plain stream URL does not play it.
    resp = await client.get(f"/videos/{video['id']}/stream")
    await api_error(resp, 403)


async def test_moderators_see_hidden_videos(client, api_error, database_url):
    _, author = await new_user(client)
    moderator_id, moderator = await new_user(client)
    video = await upload_ready(client, author, fake_mp4(4000))
    await edit(client, video["id"], author, {"visibility": "private"})
    url = f"/videos/{video['id']}"
    await api_error(await client.get(url, headers=bearer(moderator)), 404)
    query(database_url, "UPDATE users SET role = 'moderator' WHERE id = %s", (moderator_id,))
    seen = await (await client.get(url, headers=bearer(moderator))).json()
    assert seen["visibility"] == "private"
    # The JSON, not the media: the stream URL stays unsigned for anyone but the author.
    assert seen["stream_url"] == f"/videos/{video['id']}/stream"
    assert seen["removed_reason"] is None and seen["failure_reason"] is None


async def test_unlisted_is_playable_by_link_but_not_listed(client, api_error):
    author_id, author = await new_user(client)
    data = fake_mp4(4000)
    video = await upload_ready(client, author, data)
    resp = await edit(client, video["id"], author, {"visibility": "unlisted"})
    assert resp.status == 200
    got = await (await client.get(f"/videos/{video['id']}")).json()
    assert got["visibility"] == "unlisted"
    assert got["stream_url"] == f"/videos/{video['id']}/stream"
    stream = await client.get(got["stream_url"], headers={"Range": "bytes=0-9"})
    assert stream.status == 206 and await stream.read() == data[:10]
    assert stream.headers["Cache-Control"].startswith("public")
    assert await listed_ids(client) == []
    assert await listed_ids(client, f"/users/{author_id}/videos") == []
    assert await listed_ids(client, f"/users/{author_id}/videos", author) == [video["id"]]


async def test_removed_video_is_shown_to_its_author_with_the_reason(client, api_error):
    author_id, author = await new_user(client)
    _, other = await new_user(client)
    video = await upload_ready(client, author, fake_mp4(4000))
    assert video["removed"] is False and video["removed_reason"] is None
    await change_video(client.app, video["id"],
                       "UPDATE videos SET removed_at = now(), removed_reason = %s WHERE id = %s",
                       ("Spam", video["id"]))
    url = f"/videos/{video['id']}"
    await api_error(await client.get(url), 404)
    await api_error(await client.get(url, headers=bearer(other)), 404)
    await api_error(await client.get(f"{url}/stream"), 404)
    own = await (await client.get(url, headers=bearer(author))).json()
    assert own["removed"] is True and own["removed_reason"] == "Spam"
    assert await listed_ids(client) == []
    assert await listed_ids(client, f"/users/{author_id}/videos") == []
    listed = await (await client.get(f"/users/{author_id}/videos", headers=bearer(author))).json()
    assert [(v["removed"], v["removed_reason"]) for v in listed["items"]] == [(True, "Spam")]


async def test_banned_authors_videos_disappear(client, api_error):
    author_id, author = await new_user(client)
    video = await upload_ready(client, author, fake_mp4(4000))
    await change_video(client.app, video["id"],
                       "UPDATE users SET banned_until = 'infinity' WHERE id = %s", (author_id,))
    await api_error(await client.get(f"/videos/{video['id']}"), 404)
    await api_error(await client.get(f"/videos/{video['id']}/stream"), 404)
    assert await listed_ids(client) == []
    assert await listed_ids(client, f"/users/{author_id}/videos") == []


async def test_video_json_has_the_social_fields(client, database_url):
    user_id, token = await new_user(client)
    video = await upload_ready(client, token, fake_mp4(4000))
    for name in ("like_count", "dislike_count", "comment_count"):
        assert video[name] == 0
    assert video["my_reaction"] is None and video["tags"] == []
    query(database_url, "INSERT INTO reactions (user_id, video_id, kind) VALUES (%s, %s, 'like')",
          (user_id, video["id"]))
    query(database_url, "UPDATE videos SET like_count = 1 WHERE id = %s", (video["id"],))
    url = f"/videos/{video['id']}"
    mine = await (await client.get(url, headers=bearer(token))).json()
    assert mine["my_reaction"] == "like" and mine["like_count"] == 1
    anyone = await (await client.get(url)).json()
    assert anyone["my_reaction"] is None and anyone["like_count"] == 1
    listed = await (await client.get("/videos", headers=bearer(token))).json()
    assert listed["items"][0]["my_reaction"] == "like"
    listed = await (await client.get(f"/users/{user_id}/videos")).json()
    assert listed["items"][0]["my_reaction"] is None


async def test_user_videos_pages_and_unknown_users(client, api_error):
    user_id, token = await new_user(client)
    ids = [(await upload_ready(client, token, fake_mp4(4000, seed=i)))["id"] for i in range(3)]
    resp = await client.get(f"/users/{user_id}/videos?limit=2")
    page = await resp.json()
    assert [v["id"] for v in page["items"]] == ids[:0:-1] and page["next_cursor"]
    resp = await client.get(f"/users/{user_id}/videos?limit=2&cursor={page['next_cursor']}")
    rest = await resp.json()
    assert [v["id"] for v in rest["items"]] == ids[:1] and rest["next_cursor"] is None
    for raw in ("999999", "0", "abc", "-1"):
        await api_error(await client.get(f"/users/{raw}/videos"), 404, "not_found")
    for params in ("limit=0", "limit=abc", "limit=101", "cursor=x", "cursor=-5"):
        await api_error(await client.get(f"/users/{user_id}/videos?{params}"), 422)


async def test_new_uploads_take_the_search_language(make_config, aiohttp_client, database_url):
    from server.app import create_app

    client = await aiohttp_client(create_app(make_config(search_language="simple")))
    token = await new_user_token(client)
    resp = await upload(client, token, fake_mp4(4000))
    video = await resp.json()
    [(language,)] = query(database_url, "SELECT language::text FROM videos WHERE id = %s",
                          (video["id"],))
    assert language == "simple"


async def test_a_change_in_one_instance_reaches_the_stream_of_another(instance, api_error):
    """The stream cache of every process forgets a video made private elsewhere."""
    writer, reader = await instance(), await instance()
    token = await new_user_token(writer)
    data = fake_mp4(4000)
    video = await upload_ready(writer, token, data)
    stream = f"/videos/{video['id']}/stream"
    resp = await reader.get(stream, headers={"Range": "bytes=0-9"})
    assert resp.status == 206 and await resp.read() == data[:10]  # cached by the reader now
    resp = await edit(writer, video["id"], token, {"visibility": "private"})
    assert resp.status == 200

    async def refused() -> bool:
        resp = await reader.get(stream, headers={"Range": "bytes=0-9"})
        await resp.read()
        return resp.status == 403

    await until(refused, 5, "the reader refusing the unsigned stream")
    signed = (await resp.json())["stream_url"]
    resp = await reader.get(signed, headers={"Range": "bytes=0-9"})
    assert resp.status == 206 and await resp.read() == data[:10]
    assert resp.headers["Cache-Control"].startswith("private")

    await edit(writer, video["id"], token, {"visibility": "public"})

    async def plays() -> bool:
        resp = await reader.get(stream, headers={"Range": "bytes=0-9"})
        await resp.read()
        return resp.status == 206

    await until(plays, 5, "the reader playing the public stream again")


async def test_hidden_videos_have_no_public_socket_and_earn_no_views(client):
    """The viewer socket and progress reports follow the video's visibility: a private
    video has none for others, and a socket open when a video is hidden is closed."""
    author, token = await new_user(client)
    video = await upload_ready(client, token, fake_mp4(4000))
    path = f"/videos/{video['id']}/active-viewers"
    ws = await client.ws_connect(path)
    await ws.receive_json()
    resp = await client.post(f"/videos/{video['id']}/views",
                             json={"position": 1, "playing": True, "session": "s" * 16})
    assert resp.status == 204, await resp.text()

    assert (await edit(client, video["id"], token, {"visibility": "private"})).status == 200
    message = await ws.receive()
    assert message.type is aiohttp.WSMsgType.CLOSE and message.data == 4404
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(path)
    assert info.value.status == 404
    resp = await client.post(f"/videos/{video['id']}/views",
                             json={"position": 2, "playing": True, "session": "s" * 16})
    assert resp.status == 404
    # Its author, with a token on the upgrade, still has one.
    own = await client.ws_connect(path, headers=bearer(token))
    assert (await own.receive_json())["video_id"] == video["id"]
    await own.close()
