"""Auth over real HTTP against real PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import jwt
import pytest

from .conftest import login, register


async def test_register_login_me(client, api_error):
    user = await register(client, "Alice@Example.com")
    assert set(user) >= {"id", "email", "created_at"}
    assert user["email"] == "Alice@Example.com"
    assert "password" not in json.dumps(user) and "hash" not in json.dumps(user)

    tokens = await login(client, "alice@example.com")
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] > 0
    resp = await client.get("/auth/me",
                            headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert resp.status == 200
    me = await resp.json()
    assert me["id"] == user["id"] and me["email"] == "Alice@Example.com"


async def test_email_unique_case_insensitively(client, api_error):
    await register(client, "bob@example.com")
    resp = await client.post("/auth/register",
                             json={"email": "BOB@example.COM", "password": "another password"})
    await api_error(resp, 409, "email_taken")


@pytest.mark.parametrize("body, status", [
    ({"email": "not-an-email", "password": "long enough"}, 422),
    ({"email": "a@b.co", "password": "short"}, 422),
    ({"email": "a@b.co", "password": "x" * 73}, 422),
    ({"email": "a@b.co", "password": "é" * 37}, 422),  # 74 bytes
    ({"email": "a@b.co"}, 422),
    ({"password": "long enough"}, 422),
    ({"email": 5, "password": "long enough"}, 422),
    ({"email": "a@b.co", "password": ["long enough"]}, 422),
    ({"email": None, "password": None}, 422),
    ({"email": "\ud800@b.co", "password": "long enough"}, 422),  # a lone surrogate
    ({"email": "a@b.co", "password": "long enough", "name": "\ud800"}, 422),
    ({"email": "a@b.co", "password": "long enough", "name": "a\u0000b"}, 422),
    ({"email": "a@b.co", "password": "long enough\u0000"}, 422),
    ({"email": "a@b.co", "password": "long enough\udc80"}, 422),
])
async def test_register_rejects_bad_input(client, api_error, body, status):
    resp = await client.post("/auth/register", json=body)
    await api_error(resp, status)


@pytest.mark.parametrize("raw", [b"{", b"not json", b"\xff\xfe", b"[1,2]", b"", b"null", b'"x"',
                                 b'{"email": "a@b.co", "n": ' + b"1" * 5000 + b"}"])
async def test_malformed_json_is_4xx(client, api_error, raw):
    for path in ("/auth/register", "/auth/login", "/auth/refresh"):
        resp = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
        assert 400 <= resp.status < 500
        await api_error(resp, resp.status)


async def test_huge_body_is_413(client, api_error):
    body = io.BytesIO(b"{" + b" " * (2 * 1024 * 1024) + b"}")
    resp = await client.post("/auth/register", data=body,
                             headers={"Content-Type": "application/json"})
    await api_error(resp, 413)


async def test_72_byte_password_accepted(client):
    user = await register(client, "max@example.com", password="p" * 72)
    await login(client, user["email"], password="p" * 72)


async def test_bad_credentials(client, api_error):
    await register(client, "carol@example.com")
    resp = await client.post("/auth/login",
                             json={"email": "carol@example.com", "password": "wrong password"})
    await api_error(resp, 401, "invalid_credentials")
    resp = await client.post("/auth/login",
                             json={"email": "nobody@example.com", "password": "wrong password"})
    await api_error(resp, 401, "invalid_credentials")


async def test_login_timing_same_for_unknown_email(client):
    """An unknown email still costs a bcrypt check (no early return)."""
    await register(client, "dave@example.com")

    async def attempt(email: str) -> float:
        start = time.perf_counter()
        resp = await client.post("/auth/login", json={"email": email, "password": "nope nope"})
        assert resp.status == 401
        return time.perf_counter() - start

    known = min([await attempt("dave@example.com") for _ in range(5)])
    unknown = min([await attempt("ghost@example.com") for _ in range(5)])
    # Not a speed assertion: both paths must include the hash check, so the
    # unknown path is not an order of magnitude cheaper.
    assert unknown > known / 4


async def test_refresh_rotates_and_reuse_revokes_family(client, api_error):
    user = await register(client)
    first = await login(client, user["email"])
    resp = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert resp.status == 200
    second = await resp.json()
    assert second["refresh_token"] != first["refresh_token"]

    # Replaying the rotated token is treated as theft: it fails and kills the family.
    resp = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    await api_error(resp, 401, "refresh_token_reused")
    resp = await client.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})
    await api_error(resp, 401)

    # Another login is another family and still works.
    third = await login(client, user["email"])
    resp = await client.post("/auth/refresh", json={"refresh_token": third["refresh_token"]})
    assert resp.status == 200


async def test_refresh_tokens_stored_hashed(client, database_url):
    import psycopg2

    user = await register(client)
    tokens = await login(client, user["email"])
    conn = psycopg2.connect(database_url)
    with conn.cursor() as cur:
        cur.execute("SELECT token_hash FROM refresh_tokens")
        stored = [bytes(r[0]) for r in cur.fetchall()]
    conn.close()
    assert stored and all(tokens["refresh_token"].encode() not in s for s in stored)
    assert all(len(s) == 32 for s in stored)


async def test_refresh_garbage(client, api_error):
    for body in ({"refresh_token": "nope"}, {"refresh_token": ""}, {"refresh_token": 3}, {}):
        resp = await client.post("/auth/refresh", json=body)
        assert resp.status in (401, 422)
        await api_error(resp, resp.status)


async def test_logout_revokes_refresh_tokens(client, api_error):
    user = await register(client)
    tokens = await login(client, user["email"])
    resp = await client.post("/auth/logout",
                             headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert resp.status == 204
    resp = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    await api_error(resp, 401)
    resp = await client.post("/auth/logout")
    await api_error(resp, 401)


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_bad_tokens_are_401(client, config, api_error):
    user = await register(client)
    good = (await login(client, user["email"]))["access_token"]
    now = int(time.time())
    claims = {"sub": str(user["id"]), "iat": now, "exp": now + 600, "typ": "access"}
    header, payload, signature = good.split(".")
    tampered_payload = _b64({**claims, "sub": str(user["id"] + 1)})
    cases = [
        None,
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer not.a.jwt",
        f"Bearer {header}.{tampered_payload}.{signature}",
        "Bearer " + _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(claims) + ".",
        "Bearer " + jwt.encode(claims, config.jwt_secret, algorithm="HS512"),
        "Bearer " + jwt.encode(claims, "another-secret-" * 4, algorithm="HS256"),
        "Bearer " + jwt.encode({**claims, "exp": now - 10}, config.jwt_secret,
                               algorithm="HS256"),
        "Bearer " + jwt.encode({**claims, "typ": "refresh"}, config.jwt_secret,
                               algorithm="HS256"),
        "Bearer " + jwt.encode({k: v for k, v in claims.items() if k != "exp"},
                               config.jwt_secret, algorithm="HS256"),
    ]
    for auth in cases:
        headers = {"Authorization": auth} if auth else {}
        resp = await client.get("/auth/me", headers=headers)
        await api_error(resp, 401)
    resp = await client.get("/auth/me", headers={"Authorization": f"Bearer {good}"})
    assert resp.status == 200


async def test_token_that_is_not_utf8_is_401(client):
    """Header bytes that are not UTF-8 are not a token; they must not reach PyJWT."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(b"GET /auth/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xe9\xff\r\n"
                     b"Connection: close\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
    assert b'"invalid_token"' in reply or b'"unauthorized"' in reply
    resp = await client.get("/auth/me", headers={"Authorization": "Bearer \u00e9t\u00e9"})
    assert resp.status == 401


def _spellings(user_id: int) -> list[str]:
    """Ways to write a user id that are not its one ASCII spelling."""
    digits = str(user_id)
    arabic_indic = "".join(chr(0x660 + int(d)) for d in digits)  # int() reads these
    fullwidth = "".join(chr(0xFF10 + int(d)) for d in digits)
    return [arabic_indic, fullwidth, "\u00b2", digits + "\u00b2", "0" + digits, "+" + digits,
            "-" + digits, " " + digits, digits + " ", digits + "\n", "1" * 19, "0", ""]


async def test_token_subject_is_ascii_digits_only(client, config, api_error):
    user = await register(client)
    now = int(time.time())
    claims = {"iat": now, "exp": now + 600, "typ": "access"}
    good = jwt.encode({**claims, "sub": str(user["id"])}, config.jwt_secret, algorithm="HS256")
    resp = await client.get("/auth/me", headers={"Authorization": f"Bearer {good}"})
    assert resp.status == 200 and (await resp.json())["id"] == user["id"]
    for sub in _spellings(user["id"]):
        token = jwt.encode({**claims, "sub": sub}, config.jwt_secret, algorithm="HS256")
        resp = await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        body = await api_error(resp, 401, "invalid_token")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer"), (sub, body)


@pytest.mark.parametrize("content_type", [
    "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/jsonp", None,
])
async def test_auth_bodies_must_be_json(client, api_error, database_url, content_type):
    """A cross-site form or a fetch without a preflight cannot send JSON: refuse the rest."""
    body = json.dumps({"email": "csrf@example.com", "password": "correct horse battery"})
    headers = {"Content-Type": content_type} if content_type else {}
    for path in ("/auth/register", "/auth/login"):
        resp = await client.post(path, data=body.encode(), headers=headers,
                                 skip_auto_headers=["Content-Type"])
        await api_error(resp, 415, "unsupported_media_type")

    import psycopg2

    conn = psycopg2.connect(database_url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM users")
        assert cur.fetchone()[0] == 0
    conn.close()


async def test_json_with_charset_is_json(client):
    body = json.dumps({"email": "charset@example.com", "password": "correct horse battery"})
    resp = await client.post("/auth/register", data=body.encode(),
                             headers={"Content-Type": "Application/JSON; charset=UTF-8"})
    assert resp.status == 201, await resp.text()
    await login(client, "charset@example.com")
