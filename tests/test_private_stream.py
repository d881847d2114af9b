"""A private video's media through signed URLs: refused without a valid signature,
served like any other stream with one, and never kept by a shared cache."""

from __future__ import annotations

import io
import os
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from server.catalog.signing import (
    SIG_LENGTH,
    MediaSigner,
    Verdict,
    derive_key,
    expiry,
    signature,
    verify,
)
from server.core.keys import CHANGES_KEY, CONFIG_KEY, DB_KEY
from server.core.storage import new_storage_key, storage_path

from .conftest import fake_mp4, new_user_token, read_until_cut_off, upload_ready
from .test_streaming import parse_multipart

SIZE = 10_000
DATA = fake_mp4(SIZE)
KEY = derive_key("secret-" + "x" * 40)
NOW = 1_700_000_000


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- signing, pure -------------------------------------------------------------------

def _sig(video_id: int = 7, expires: int = NOW + 60) -> str:
    return signature(KEY, video_id, expires)


def _flip(sig: str) -> str:
    return ("A" if sig[0] != "A" else "B") + sig[1:]


@pytest.mark.parametrize(("video_id", "expires", "sig", "verdict"), [
    (7, str(NOW + 60), _sig(), Verdict.VALID),
    (7, str(NOW + 1), _sig(expires=NOW + 1), Verdict.VALID),
    (7, str(NOW), _sig(expires=NOW), Verdict.EXPIRED),
    (7, str(NOW - 3600), _sig(expires=NOW - 3600), Verdict.EXPIRED),
    (8, str(NOW + 60), _sig(), Verdict.BAD_SIGNATURE),            # another video's URL
    (7, str(NOW + 61), _sig(), Verdict.BAD_SIGNATURE),            # expiry pushed back
    (7, str(NOW + 60), _flip(_sig()), Verdict.BAD_SIGNATURE),     # tampered
    (7, str(NOW + 60), signature(derive_key("other-" + "y" * 40), 7, NOW + 60),
     Verdict.BAD_SIGNATURE),                                      # another server's key
    (7, None, _sig(), Verdict.MISSING), (7, str(NOW + 60), None, Verdict.MISSING),
    (7, "", "", Verdict.MISSING),
    (7, "abc", _sig(), Verdict.MALFORMED), (7, "-5", _sig(), Verdict.MALFORMED),
    (7, "1e12", _sig(), Verdict.MALFORMED), (7, "9" * 13, _sig(), Verdict.MALFORMED),
    (7, "١٢٣", _sig(), Verdict.MALFORMED), (7, str(NOW + 60), _sig()[:-1], Verdict.MALFORMED),
    (7, str(NOW + 60), _sig() + "A", Verdict.MALFORMED),
    (7, str(NOW + 60), "é" * SIG_LENGTH, Verdict.MALFORMED),
    (7, f"0{NOW + 60}", _sig(), Verdict.MALFORMED),               # one spelling only
])
def test_verify(video_id, expires, sig, verdict):
    assert verify(KEY, video_id, expires, sig, NOW) is verdict


def test_key_is_derived_not_the_secret():
    secret = "s" * 40
    assert derive_key(secret) != secret.encode() and len(derive_key(secret)) == 32
    assert derive_key(secret) == derive_key(secret) != derive_key(secret + "!")


@pytest.mark.parametrize("ttl", [1, 60, 3600, 6 * 3600])
def test_expiry_is_at_least_ttl_and_stable_within_a_step(ttl):
    step = max(1, min(300, ttl // 10))
    for now in (NOW, NOW + 1, NOW + 17.9):
        assert now + ttl <= expiry(now, ttl) <= now + ttl + step
    # URLs signed within one step name at most two expiries.
    assert len({expiry(NOW + i / 2, ttl) for i in range(2 * step)}) <= 2


def test_signer_query_round_trips():
    signer = MediaSigner(KEY, 600)
    params = parse_qs(signer.query(42, NOW))
    [expires], [sig] = params["expires"], params["sig"]
    assert signer.verify(42, expires, sig, NOW) is Verdict.VALID
    assert signer.verify(42, expires, sig, int(expires)) is Verdict.EXPIRED
    assert signer.verify(43, expires, sig, NOW) is Verdict.BAD_SIGNATURE


# --- over HTTP ---------------------------------------------------------------------------

async def make_private(client: Any, token: str, data: bytes = DATA) -> dict[str, Any]:
    video = await upload_ready(client, token, data)
    resp = await client.patch(f"/videos/{video['id']}", json={"visibility": "private"},
                              headers=bearer(token))
    assert resp.status == 200, await resp.text()
    return await resp.json()


@pytest.fixture
async def private(client) -> dict[str, Any]:
    token = await new_user_token(client)
    video = await make_private(client, token)
    return {**video, "token": token}


def signed_parts(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}


async def test_the_authors_json_carries_a_signed_url(client, private):
    path, params = signed_parts(private["stream_url"])
    assert path == f"/videos/{private['id']}/stream"
    assert set(params) == {"expires", "sig"}
    ttl = client.app[CONFIG_KEY].stream_url_ttl
    assert time.time() + ttl - 5 <= int(params["expires"]) <= time.time() + ttl + 300
    again = await (await client.get(f"/videos/{private['id']}",
                                    headers=bearer(private["token"]))).json()
    assert again["stream_url"] == private["stream_url"]  # stable, so the browser cache works


async def test_valid_signature_plays_like_a_public_stream(client, private):
    url = private["stream_url"]
    resp = await client.get(url)
    assert resp.status == 200 and await resp.read() == DATA
    etag, modified = resp.headers["ETag"], resp.headers["Last-Modified"]
    cache = resp.headers["Cache-Control"]
    assert cache.startswith("private, max-age=") and "public" not in cache
    # One plain range: the direct path.
    resp = await client.get(url, headers={"Range": "bytes=100-1123"})
    assert resp.status == 206 and await resp.read() == DATA[100:1124]
    assert resp.headers["Content-Range"] == f"bytes 100-1123/{SIZE}"
    assert resp.headers["Cache-Control"] == cache
    resp = await client.get(url, headers={"Range": "bytes=-10"})
    assert resp.status == 206 and await resp.read() == DATA[-10:]
    # Several ranges: multipart.
    resp = await client.get(url, headers={"Range": "bytes=0-9,5000-5009"})
    assert resp.status == 206
    parts = parse_multipart(resp.headers["Content-Type"], await resp.read())
    assert [p for _, p in parts] == [DATA[:10], DATA[5000:5010]]
    assert resp.headers["Cache-Control"] == cache
    # Conditionals as on any stream.
    for if_range, status in ((etag, 206), (modified, 206), ('"stale"', 200)):
        resp = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": if_range})
        assert resp.status == status
        assert await resp.read() == (DATA[:10] if status == 206 else DATA)
    resp = await client.get(url, headers={"If-None-Match": etag})
    assert resp.status == 304 and resp.headers["Cache-Control"] == cache
    resp = await client.head(url)
    assert resp.status == 200 and resp.headers["Content-Length"] == str(SIZE)
    resp = await client.get(url, headers={"Range": f"bytes={SIZE}-"})
    assert resp.status == 416 and "Cache-Control" not in resp.headers


async def test_signed_stream_needs_no_database_round_trip(client, private, api_error):
    """Checking a signature looks nothing up: with PostgreSQL gone, ranges still play."""
    url = private["stream_url"]
    resp = await client.get(url, headers={"Range": "bytes=0-1"})
    assert resp.status == 206
    pool = client.app[DB_KEY].pool
    pool.close()
    await pool.wait_closed()
    for start in range(0, 1000, 250):
        resp = await client.get(url, headers={"Range": f"bytes={start}-"})
        assert resp.status == 206 and await resp.read() == DATA[start:]
    path, _ = signed_parts(url)
    await api_error(await client.get(path), 403, "signature_required")


async def _refused(api_error: Any, resp: Any, code: str) -> None:
    await api_error(resp, 403, code)
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Content-Type"].startswith("application/json")


async def test_missing_signature_is_403(client, private, api_error):
    path, _ = signed_parts(private["stream_url"])
    await _refused(api_error, await client.get(path), "signature_required")
    await _refused(api_error, await client.get(path, headers={"Range": "bytes=0-9"}),
                   "signature_required")
    resp = await client.head(path)
    assert resp.status == 403
    # A Bearer token is no signature.
    await _refused(api_error, await client.get(path, headers=bearer(private["token"])),
                   "signature_required")


async def test_tampered_signature_is_403(client, private, api_error):
    path, params = signed_parts(private["stream_url"])
    sig = params["sig"]
    for query in (f"expires={params['expires']}&sig={_flip(sig)}",
                  f"expires={int(params['expires']) + 1}&sig={sig}",
                  f"expires={params['expires']}&sig={sig[:-1]}",
                  f"expires=abc&sig={sig}",
                  f"expires={params['expires']}"):
        resp = await client.get(f"{path}?{query}", headers={"Range": "bytes=0-9"})
        assert resp.status == 403, query
        await _refused(api_error, resp, (await resp.json())["error"]["code"])


async def test_expired_signature_is_403(client, private, api_error):
    path, _ = signed_parts(private["stream_url"])
    key = derive_key(client.app[CONFIG_KEY].jwt_secret)
    past = int(time.time()) - 1
    resp = await client.get(f"{path}?expires={past}&sig={signature(key, private['id'], past)}")
    await _refused(api_error, resp, "signature_expired")
    # The same key signs a valid one: only the time was wrong.
    later = int(time.time()) + 60
    resp = await client.get(f"{path}?expires={later}&sig={signature(key, private['id'], later)}")
    assert resp.status == 200 and await resp.read() == DATA


async def test_another_videos_signature_is_403(client, private, api_error):
    other = await make_private(client, private["token"], fake_mp4(SIZE, seed=2))
    _, params = signed_parts(other["stream_url"])
    path, _ = signed_parts(private["stream_url"])
    resp = await client.get(f"{path}?expires={params['expires']}&sig={params['sig']}")
    await _refused(api_error, resp, "invalid_signature")


async def test_unknown_video_is_404_whatever_the_signature(client, private, api_error):
    _, params = signed_parts(private["stream_url"])
    query = f"expires={params['expires']}&sig={params['sig']}"
    for raw in ("999999", "abc", "0"):
        await api_error(await client.get(f"/videos/{raw}/stream?{query}"), 404, "not_found")


async def test_public_streams_keep_their_url_and_cache(client):
    token = await new_user_token(client)
    video = await upload_ready(client, token, DATA)
    assert video["stream_url"] == f"/videos/{video['id']}/stream"
    resp = await client.get(video["stream_url"], headers={"Range": "bytes=0-9"})
    assert resp.status == 206 and resp.headers["Cache-Control"].startswith("public, max-age=")
    # A stray signature changes nothing.
    resp = await client.get(f"{video['stream_url']}?expires=1&sig=x",
                            headers={"Range": "bytes=0-9"})
    assert resp.status == 206 and await resp.read() == DATA[:10]


async def test_private_made_public_plays_without_signature(client, private):
    path, _ = signed_parts(private["stream_url"])
    resp = await client.patch(f"/videos/{private['id']}", json={"visibility": "public"},
                              headers=bearer(private["token"]))
    public = await resp.json()
    assert public["stream_url"] == path
    resp = await client.get(path, headers={"Range": "bytes=0-9"})
    assert resp.status == 206 and resp.headers["Cache-Control"].startswith("public")
    resp = await client.get(private["stream_url"], headers={"Range": "bytes=0-9"})
    assert resp.status == 206  # an old signed URL still plays


async def _with_artifacts(app: Any, video_id: int) -> dict[str, bytes]:
    """Store a poster and storyboard for the video, as processing would."""
    storage_dir = app[CONFIG_KEY].storage_dir
    vtt = (f"WEBVTT\n\n00:00:00.000 --> 00:00:05.000\n"
           f"/videos/{video_id}/storyboard.jpg#xywh=0,0,160,90\n\n"
           f"00:00:05.000 --> 00:00:10.000\n"
           f"/videos/{video_id}/storyboard.jpg#xywh=160,0,160,90\n").encode()
    files = {"poster_key": b"\xff\xd8poster", "storyboard_key": b"\xff\xd8sprite",
             "storyboard_vtt_key": vtt}
    keys = {column: new_storage_key("vtt" if column.endswith("vtt_key") else "jpg")
            for column in files}
    for column, data in files.items():
        storage_path(storage_dir, keys[column]).write_bytes(data)
    db, changes = app[DB_KEY], app[CHANGES_KEY]
    async with db.transaction() as cur:
        await cur.execute("UPDATE videos SET poster_key = %s, storyboard_key = %s,"
                          " storyboard_vtt_key = %s, processed_at = now() WHERE id = %s",
                          (keys["poster_key"], keys["storyboard_key"],
                           keys["storyboard_vtt_key"], video_id))
        seq = await changes.record(cur, video_id, "processed")
    changes.applied(video_id, seq)
    return files


async def test_private_poster_and_storyboard_need_the_signature(client, private, api_error):
    files = await _with_artifacts(client.app, private["id"])
    own = await (await client.get(f"/videos/{private['id']}",
                                  headers=bearer(private["token"]))).json()
    _, signed = signed_parts(own["stream_url"])
    for url, name in ((own["poster_url"], "poster.jpg"), (own["storyboard_url"],
                                                          "storyboard.vtt")):
        path, params = signed_parts(url)
        assert path == f"/videos/{private['id']}/{name}" and params == signed
        await _refused(api_error, await client.get(path), "signature_required")
        resp = await client.get(f"{path}?expires={params['expires']}&sig={_flip(params['sig'])}")
        await _refused(api_error, resp, "invalid_signature")
    poster = await client.get(own["poster_url"])
    assert poster.status == 200 and await poster.read() == files["poster_key"]
    assert poster.headers["Cache-Control"].startswith("private, max-age=")
    # The storyboard names its sprite with the same signature, which the player follows.
    board = await client.get(own["storyboard_url"])
    text = await board.text()
    assert board.headers["Cache-Control"].startswith("private, max-age=")
    query = f"expires={signed['expires']}&sig={signed['sig']}"
    sprite = f"/videos/{private['id']}/storyboard.jpg?{query}"
    assert f"{sprite}#xywh=0,0,160,90" in text and f"{sprite}#xywh=160,0,160,90" in text
    resp = await client.get(sprite)
    assert resp.status == 200 and await resp.read() == files["storyboard_key"]
    path, _ = signed_parts(sprite)
    await _refused(api_error, await client.get(path), "signature_required")
    # Others see no JSON to take URLs from.
    await api_error(await client.get(f"/videos/{private['id']}"), 404)


async def test_public_artifacts_unchanged(client):
    token = await new_user_token(client)
    video = await upload_ready(client, token, DATA)
    files = await _with_artifacts(client.app, video["id"])
    got = await (await client.get(f"/videos/{video['id']}")).json()
    assert got["poster_url"] == f"/videos/{video['id']}/poster.jpg"
    board = await client.get(got["storyboard_url"])
    assert await board.read() == files["storyboard_vtt_key"]
    assert board.headers["Cache-Control"].startswith("public, max-age=")


async def test_making_a_video_private_cuts_off_unsigned_responses_everywhere(instance):
    """A viewer reading one long unsigned response stops soon after the video turns private."""
    writer, reader = await instance(), await instance()
    token = await new_user_token(writer)
    data = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + os.urandom(24 * 2**20)
    video = await upload_ready(writer, token, io.BytesIO(data))  # type: ignore[arg-type]
    resp = await reader.get(video["stream_url"], headers={"Range": "bytes=0-"})
    assert resp.status == 206
    received = len(await resp.content.readexactly(65536))
    edited = await writer.patch(f"/videos/{video['id']}", json={"visibility": "private"},
                                headers=bearer(token))
    assert edited.status == 200
    received = await read_until_cut_off(resp, received)
    assert received < len(data) // 2
