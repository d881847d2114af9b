"""Search: full-text over titles, descriptions and tags (stemmed and exact), prefix
matching of the word being typed, ranking, tags, and garbage queries."""

from __future__ import annotations

import pytest

from server.core.errors import ApiError
from server.social.rules import TagSearch, TextSearch, parse_search

from .conftest import query
from .social_support import ban, member, ready_video, roomy_client


@pytest.fixture
async def client(aiohttp_client, make_config):
    return await roomy_client(aiohttp_client, make_config)


@pytest.mark.parametrize("raw, parsed", [
    ("cat", TextSearch("cat", "", "cat:*")),
    ("  Cats Dogs", TextSearch("Cats Dogs", "Cats ", "dogs:*")),
    ("cats dogs ", TextSearch("cats dogs", "cats dogs", None)),  # a finished word
    ("cat d", TextSearch("cat d", "cat d", None)),  # one letter is no prefix yet
    ("cat -dog", TextSearch("cat -dog", "cat -dog", None)),
    ('"big cat', TextSearch('"big cat', '"big cat', None)),
    ('"big cat" run', TextSearch('"big cat" run', '"big cat" ', "run:*")),
    ("what?", TextSearch("what?", "what?", None)),
    ("snake_case", TextSearch("snake_case", "snake_", "case:*")),
    ("über", TextSearch("über", "", "über:*")),
    ("#Cooking", TagSearch("cooking")),
    ("# Travel ", TagSearch("travel")),
    ("#ＣＯＯＫＩＮＧ", TagSearch("cooking")),
    # What cannot be a tag is searched as text.
    ("#" + "t" * 51, TextSearch("#" + "t" * 51, "#", "t" * 51 + ":*")),
])
def test_parse_search(raw, parsed):
    assert parse_search(raw) == parsed


@pytest.mark.parametrize("raw", [None, "", "   ", "#", "# ", "##", "x" * 201, "a\x00b",
                                 "\ud800"])
def test_parse_search_refuses(raw):
    with pytest.raises(ApiError) as info:
        parse_search(raw)
    assert info.value.status == 422


async def search(client, q, who=None, **params):
    resp = await client.get("/search", params={"q": q, **params},
                            headers=who.auth if who else {})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def titles(client, q, who=None):
    return [item["title"] for item in (await search(client, q, who))["items"]]


@pytest.fixture
async def library(client, database_url):
    alice, bob = await member(client), await member(client)
    await ready_video(client, alice, "Running in the mountains", "A long trail run at dawn",
                      tags=("outdoors", "running"), database_url=database_url)
    await ready_video(client, alice, "Cooking pasta", "Fresh noodles with a mountain view",
                      tags=("cooking",), database_url=database_url)
    await ready_video(client, bob, "Video editing basics", "Cutting clips quickly",
                      tags=("tutorial",), database_url=database_url)
    await ready_video(client, bob, "Secret mountain", "private", visibility="private",
                      tags=("cooking",), database_url=database_url)
    await ready_video(client, bob, "Unlisted mountain", "by link only", visibility="unlisted",
                      tags=("cooking",), database_url=database_url)
    return alice, bob


async def test_finds_by_title_description_and_tag(client, library):
    assert await titles(client, "pasta") == ["Cooking pasta"]
    assert await titles(client, "noodles") == ["Cooking pasta"]
    assert await titles(client, "tutorial") == ["Video editing basics"]
    # Stemming: "runs" finds "Running", "run".
    assert await titles(client, "runs ") == ["Running in the mountains"]
    # A title match outranks a description match; listed videos only.
    assert await titles(client, "mountain ") == ["Running in the mountains", "Cooking pasta"]
    assert await titles(client, "nothing-like-this") == []


async def test_search_as_you_type(client, library):
    assert await titles(client, "vid") == ["Video editing basics"]
    assert await titles(client, "video edi") == ["Video editing basics"]
    assert await titles(client, "cook") == ["Cooking pasta"]
    assert await titles(client, "pasta mou") == ["Cooking pasta"]
    # A finished word (space after it) is matched whole.
    assert await titles(client, "vid ") == []


async def test_websearch_syntax(client, library):
    assert await titles(client, "mountain -pasta") == ["Running in the mountains"]
    assert await titles(client, '"trail run"') == ["Running in the mountains"]
    assert sorted(await titles(client, "pasta or editing")) == [
        "Cooking pasta", "Video editing basics"]


async def test_tags(client, library, database_url):
    alice, bob = library
    later = await ready_video(client, alice, "More cooking", tags=("cooking",),
                              database_url=database_url)
    assert await titles(client, "#cooking") == ["More cooking", "Cooking pasta"]
    assert await titles(client, "#COOKING") == ["More cooking", "Cooking pasta"]
    page = await search(client, "#cooking", limit="1")
    assert [v["id"] for v in page["items"]] == [later["id"]]
    rest = await search(client, "#cooking", cursor=page["next_cursor"])
    assert [v["title"] for v in rest["items"]] == ["Cooking pasta"]
    assert await titles(client, "#nope") == []
    # A banned author's videos vanish from search.
    ban(database_url, alice.id)
    assert await titles(client, "#cooking") == []
    assert await titles(client, "pasta") == []


async def test_ranked_pages_with_cursor(client, database_url):
    owner = await member(client)
    for i in range(7):
        await ready_video(client, owner, "guitar " * (1 + i % 3) + f"lesson {i}",
                          "guitar" if i % 2 else "", database_url=database_url)
    seen, cursor = [], None
    while True:
        page = await search(client, "guitar", limit="2", **({"cursor": cursor} if cursor else {}))
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 7 and len({v["id"] for v in seen}) == 7
    [(rows,)] = query(database_url, "SELECT count(*) FROM listed_videos"
                      " WHERE search @@ to_tsquery('simple', 'guitar')")
    assert rows == 7


GARBAGE = [
    "'", '"', "\\", "&", "|", "!", "!!", "(", ")", ":*", "a:*", "' OR 1=1 --", "'); DROP TABLE"
    " videos; --", "<->", "a & b | !c", "foo:*b", "***", "-", "--", "-\"", "or", "and or not",
    "🙂", "中文 搜索", "a\tb\nc", "\x01\x02", "%", "_", "\\x00", "ü" * 200, "#tag with spaces",
    "#🙂", "#'; DROP TABLE videos; --",
]


async def test_garbage_queries_are_harmless(client, library, database_url):
    for q in GARBAGE:
        resp = await client.get("/search", params={"q": q})
        assert resp.status == 200, (q, await resp.text())
        body = await resp.json()
        assert isinstance(body["items"], list)
    [(videos,)] = query(database_url, "SELECT count(*) FROM videos")
    assert videos == 5


async def test_bad_requests(client, library, api_error):
    for params in ({}, {"q": ""}, {"q": "   "}, {"q": "x" * 201}, {"q": "#"}, {"q": "##"},
                   {"q": "a\x00"}, {"q": "guitar", "cursor": "zzz"},
                   {"q": "guitar", "cursor": "WzFd"}, {"q": "guitar", "limit": "0"},
                   {"q": "#cooking", "cursor": "WzAuNSwxXQ"}):
        await api_error(await client.get("/search", params=params), 422)
    resp = await client.get("/search?q=%ED%A0%80")  # an encoded lone surrogate
    assert resp.status in (200, 422)
