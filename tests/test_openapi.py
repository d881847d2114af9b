"""The OpenAPI document against the code: every route is in it, it is valid OpenAPI 3.1,
and a tour of the API (sign-up to moderation, with errors) answers only what it says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from aiohttp.web_urldispatcher import DynamicResource, StaticResource
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from playwright.async_api import async_playwright, expect
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from server.app import create_app
from server.core.config import Config
from server.core.keys import CONFIG_KEY
from server.delivery.artifacts import ARTIFACTS
from server.moderation import rules as moderation_rules
from server.ops import openapi
from server.social import handlers as social_handlers
from server.social import rules as social_rules
from server.social.rules import encode_cursor
from server.web.pages import PAGE_ROUTES

from .browser import ARTIFACTS as SCREENSHOTS
from .browser import launch
from .conftest import login, query, register, upload_ready
from .media_clips import h264_mp4  # noqa: F401

# Routes the document leaves out on purpose: HTML pages, static files, the WebSockets.
NOT_JSON = PAGE_ROUTES | {"page_docs", "static", "favicon", "active_viewers",
                           "room_chat"}
# Operations the tour does not call: uploads (tests/test_tus.py, tests/test_videos.py and
# tests/test_profiles.py drive them) and what needs a processed video or a metrics token.
NOT_TOURED = {
    ("post", "/videos/upload"), ("put", "/users/me/avatar"), ("options", "/uploads/{id}"),
    ("head", "/uploads/{id}"), ("patch", "/uploads/{id}"), ("delete", "/uploads/{id}"),
    ("post", "/uploads/{id}"), ("get", "/videos/{id}/storyboard.jpg"),
    ("get", "/videos/{id}/storyboard.vtt"), ("get", "/metrics"),
}
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def router_operations(config: Config) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(method, path) of every route but those in NOT_JSON, and the HEADs aiohttp adds
    beside each GET (answered by the GET's handler)."""
    app = create_app(config)
    routes: set[tuple[str, str]] = set()
    implicit: set[tuple[str, str]] = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        if route.name in NOT_JSON or resource.name in NOT_JSON or \
                isinstance(resource, StaticResource):
            continue
        info = resource.get_info()
        paths = [info.get("path") or info["formatter"]]
        if isinstance(resource, DynamicResource) and "{name}" in paths[0]:
            # One route serves the video's files, each a path in the document.
            paths = [paths[0].replace("{name}", name) for name in ARTIFACTS]
        for path in paths:
            key = (route.method.lower(), path)
            siblings = {(r.method, r.handler) for r in resource}
            if route.method == "HEAD" and ("GET", route.handler) in siblings:
                implicit.add(key)
            else:
                routes.add(key)
    return routes, implicit


def test_every_route_is_documented_and_every_operation_is_a_route(config):
    document = openapi.build_document(config)
    documented = {(method, path) for path, item in document["paths"].items()
                  for method in item if method in METHODS}
    routes, implicit = router_operations(config)
    assert routes - documented == set(), "routes missing from the document"
    assert documented - routes - implicit == set(), "operations no route serves"
    # The stream's HEAD is described: players probe with it.
    assert ("head", "/videos/{id}/stream") in documented


def test_lists_written_out_in_the_document_match_the_code():
    assert openapi.REPORT_REASONS == moderation_rules.REPORT_REASONS
    assert openapi.REPORT_TARGETS == moderation_rules.TARGET_TYPES
    assert openapi.ACTION_REASON_MAX == moderation_rules.ACTION_REASON_MAX
    assert openapi.REPORT_NOTE_MAX == moderation_rules.NOTE_MAX
    assert openapi.REACTIONS == social_rules.REACTIONS
    assert openapi.COMMENT_SORTS == social_rules.SORTS
    assert openapi.SEARCH_MAX == social_rules.SEARCH_MAX_LENGTH
    assert openapi.PAGE_MAX == social_handlers.MAX_LIMIT


# --- checking responses against the document -------------------------------------------

class Contract:
    """Checks each response against the operation the document gives for its request."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.registry: Registry = Registry().with_resource(
            "urn:openapi", Resource.from_contents(document, default_specification=DRAFT202012))
        # Literal paths before templated ones: /users/me is not /users/{id}.
        self.paths = sorted(
            ((re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$"),
              path) for path in document["paths"]),
            key=lambda pair: pair[1].count("{"))
        self.seen: set[tuple[str, str, int]] = set()

    def operations(self) -> set[tuple[str, str]]:
        return {(method, path) for path, item in self.document["paths"].items()
                for method in item if method in METHODS}

    def errors(self, schema_name: str, instance: Any) -> list[Any]:
        schema = {"$ref": f"#/components/schemas/{schema_name}"}
        return list(Draft202012Validator(self.absolute(schema), registry=self.registry)
                    .iter_errors(instance))

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        for pattern, template in self.paths:
            if pattern.match(path) and method in self.document["paths"][template]:
                return template, self.document["paths"][template][method]
        raise AssertionError(f"{method.upper()} {path} is not in the document")

    def absolute(self, schema: Any) -> Any:
        """A schema from the document with its $refs made to point into the document."""
        if isinstance(schema, dict):
            return {key: "urn:openapi" + value if key == "$ref" else self.absolute(value)
                    for key, value in schema.items()}
        if isinstance(schema, list):
            return [self.absolute(item) for item in schema]
        return schema

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = self.registry.resolver("urn:openapi").lookup(
                "urn:openapi" + node["$ref"]).contents
        return node

    async def check(self, resp: ClientResponse) -> ClientResponse:
        method, path = resp.method.lower(), resp.url.path
        template, operation = self.operation(method, path)
        status = str(resp.status)
        assert status in operation["responses"], \
            f"{method.upper()} {path} answered {status}, not documented: {await resp.text()}"
        self.seen.add((method, template, resp.status))
        documented = self.resolve(operation["responses"][status])
        content = documented.get("content")
        body = await resp.read()
        if not content:
            assert body == b"" or method == "head", f"{method} {path}: unexpected body"
            return resp
        media = resp.content_type
        matches = [name for name in content if name == media or (
            name.endswith("/*") and media.startswith(name[:-1]))]
        assert matches, f"{method.upper()} {path} {status}: {media} is not one of {list(content)}"
        schema = content[matches[0]]["schema"]
        if media == "application/json":
            errors = list(Draft202012Validator(self.absolute(schema), registry=self.registry)
                          .iter_errors(await resp.json()))
            assert not errors, f"{method.upper()} {path} {status}: {errors[0]}"
        return resp


class Api:
    """A client whose every answer is checked by the contract."""

    def __init__(self, client: TestClient, contract: Contract) -> None:
        self.client = client
        self.contract = contract

    async def call(self, method: str, path: str, token: str | None = None,
                   **kwargs: Any) -> ClientResponse:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        resp = await self.client.request(method, path, headers=headers, **kwargs)
        return await self.contract.check(resp)

    async def json(self, method: str, path: str, token: str | None = None,
                   status: int = 200, **kwargs: Any) -> Any:
        resp = await self.call(method, path, token, **kwargs)
        assert resp.status == status, await resp.text()
        return await resp.json() if resp.content_type == "application/json" else None


@pytest.fixture
async def api(client: TestClient) -> Api:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    return Api(client, Contract(await resp.json()))


async def test_the_contract_rejects_what_the_document_does_not_say(api: Api):
    contract = api.contract
    error = {"error": {"code": "not_found", "message": "No such video"}}
    assert contract.errors("Error", error) == []
    assert contract.errors("Error", {"error": {"code": "x"}})
    assert contract.errors("Error", {**error, "detail": "more"})
    assert contract.errors("Block", {"blocked": "yes"})
    assert contract.errors("Reaction", {"like_count": 1, "dislike_count": 0,
                                        "my_reaction": "love"})


async def test_the_served_document_is_valid_openapi_3_1(client):
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    document = await resp.json()
    assert document["openapi"].startswith("3.1")
    validate_spec(document)
    # Limits come from this server's configuration.
    comment = document["components"]["schemas"]["NewComment"]["properties"]["body"]
    assert comment["maxLength"] == client.server.app[CONFIG_KEY].comment_max_length


async def test_a_tour_of_the_api_answers_as_documented(api: Api, h264_mp4: Path):  # noqa: F811
    client = api.client
    await api.json("get", "/healthz")
    # Accounts.
    author = await register(client)
    await api.json("post", "/auth/register", json={"email": author["email"],
                                                    "password": "correct horse battery"},
                   status=409)
    await api.json("post", "/auth/register", json={"email": "nope", "password": "x"},
                   status=422)
    await api.json("post", "/auth/register", data="{", status=400,
                   headers={"Content-Type": "application/json"})
    await api.json("post", "/auth/register", data="a=b", status=415)
    pair = await api.json("post", "/auth/login", json={"email": author["email"],
                                                        "password": "correct horse battery"})
    token = pair["access_token"]
    await api.json("post", "/auth/login", json={"email": author["email"],
                                                 "password": "wrong password"}, status=401)
    await api.json("get", "/auth/me", token)
    await api.json("get", "/users/me", status=401)
    await api.json("get", "/users/me", "not.a.token", status=401)
    me = await api.json("patch", "/users/me", token, json={"name": "Ada", "bio": "Hi"})
    await api.json("patch", "/users/me", token, json={}, status=422)
    await api.json("get", f"/users/{me['id']}")
    await api.json("get", "/users/999999", status=404)
    await api.json("get", f"/users/{me['id']}/avatar.jpg", status=404)
    pair = await api.json("post", "/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    token = pair["access_token"]
    await api.json("post", "/auth/refresh", json={"refresh_token": "nope"}, status=401)

    # Videos.
    video = await upload_ready(client, token, h264_mp4.read_bytes(), title="Tour clip")
    vid = video["id"]
    await api.json("get", "/videos")
    await api.json("get", "/videos", token, params={"limit": "1"})
    await api.json("get", "/videos", params={"limit": "0"}, status=422)
    await api.json("get", f"/users/{me['id']}/videos", token)
    await api.json("get", f"/videos/{vid}")
    await api.json("get", "/videos/abc", status=404)
    await api.json("patch", f"/videos/{vid}", token,
                   json={"tags": ["#Cats", "tour"], "description": "A tour"})
    await api.json("patch", f"/videos/{vid}", token, json={"visibility": "secret"}, status=422)
    await api.json("patch", f"/videos/{vid}", json={"title": "x"}, status=401)
    resp = await api.call("get", f"/videos/{vid}/stream")
    assert resp.status == 200
    resp = await api.call("get", f"/videos/{vid}/stream", headers={"Range": "bytes=0-99"})
    assert resp.status == 206
    resp = await api.call("get", f"/videos/{vid}/stream", headers={"Range": "bytes=0-1,5-9"})
    assert resp.status == 206
    await api.json("get", f"/videos/{vid}/stream", status=416,
                   headers={"Range": f"bytes={video['size'] + 10}-"})
    resp = await api.call("head", f"/videos/{vid}/stream")
    assert resp.status == 200
    await api.json("get", "/videos/999999/stream", status=404)
    await api.json("get", f"/videos/{vid}/poster.jpg", status=404)
    await api.json("post", f"/videos/{vid}/views", json={
        "position": 1.5, "playing": True, "session": "tour-1"}, status=204)
    await api.json("post", f"/videos/{vid}/views", json={"position": -1}, status=422)

    # Social: a second user comments, reacts, subscribes, searches.
    viewer = await register(client)
    viewer_token = (await login(client, viewer["email"]))["access_token"]
    comment = await api.json("post", f"/videos/{vid}/comments", viewer_token,
                             json={"body": "Nice"}, status=201)
    assert comment["replies"] == []
    reply = await api.json("post", f"/videos/{vid}/comments", token,
                           json={"body": "Thanks", "parent_id": comment["id"]}, status=201)
    await api.json("post", f"/videos/{vid}/comments", token,
                   json={"body": "x", "parent_id": reply["id"]}, status=422)
    await api.json("get", f"/videos/{vid}/comments")
    await api.json("get", f"/videos/{vid}/comments", params={"sort": "top", "limit": "1"})
    await api.json("get", f"/videos/{vid}/comments", params={"cursor": "@@"}, status=422)
    await api.json("get", f"/comments/{comment['id']}/replies")
    await api.json("patch", f"/comments/{comment['id']}", viewer_token, json={"body": "Nicer"})
    await api.json("patch", f"/comments/{comment['id']}", token, json={"body": "Mine"},
                   status=403)
    await api.json("put", f"/videos/{vid}/reaction", viewer_token, json={"kind": "like"})
    await api.json("put", f"/videos/{vid}/reaction", viewer_token, json={"kind": "love"},
                   status=422)
    await api.json("delete", f"/videos/{vid}/reaction", viewer_token)
    await api.json("put", f"/users/{me['id']}/subscription", viewer_token)
    await api.json("put", f"/users/{viewer['id']}/subscription", viewer_token, status=422)
    await api.json("get", "/users/me/subscriptions", viewer_token)
    await api.json("get", "/feed/following", viewer_token)
    await api.json("delete", f"/users/{me['id']}/subscription", viewer_token)
    await api.json("put", f"/users/{me['id']}/block", viewer_token)
    await api.json("delete", f"/users/{me['id']}/block", viewer_token)
    await api.json("get", "/feed/global")
    await api.json("get", "/feed/trending", viewer_token)
    [(snapshot,)] = query(client.server.app[CONFIG_KEY].database_url,
                          "SELECT max(id) FROM trending_snapshots")
    await api.json("get", "/feed/trending", params={"cursor": encode_cursor(snapshot, 2)})
    await api.json("get", "/search", params={"q": "tour"})
    await api.json("get", "/search", params={"q": "#cats"})
    await api.json("get", "/search", status=422)

    # Rooms: created, listed, joined, ended; LiveKit's webhook refuses what it did not sign.
    room = await api.json("post", "/rooms", token, json={"name": "Tour room"}, status=201)
    await api.json("post", "/rooms", token, json={"name": ""}, status=422)
    await api.json("get", "/rooms", params={"limit": "1"})
    await api.json("get", f"/rooms/{room['id']}")
    await api.json("get", "/rooms/999999", status=404)
    await api.json("post", f"/rooms/{room['id']}/join", status=401)
    await api.json("post", f"/rooms/{room['id']}/join", viewer_token)
    await api.json("get", f"/rooms/{room['id']}/messages", params={"limit": "10"})
    await api.json("get", f"/rooms/{room['id']}/messages", params={"limit": "0"}, status=422)
    await api.json("post", f"/rooms/{room['id']}/end", viewer_token, status=403)
    await api.json("post", f"/rooms/{room['id']}/end", token)
    await api.json("post", f"/rooms/{room['id']}/join", viewer_token, status=409)
    await api.json("post", "/livekit/webhook", data="{}", status=401)

    # Reports and moderation: the viewer reports; an admin acts.
    report = await api.json("post", "/reports", viewer_token, json={
        "target_type": "video", "target_id": vid, "reason": "spam", "note": "?"}, status=201)
    await api.json("post", "/reports", viewer_token, json={
        "target_type": "video", "target_id": vid, "reason": "spam"}, status=409)
    await api.json("post", "/reports", viewer_token, json={
        "target_type": "comment", "target_id": reply["id"], "reason": "hate"}, status=201)
    await api.json("get", "/moderation/reports", viewer_token, status=403)
    admin = await register(client)
    query(client.server.app[CONFIG_KEY].database_url,
          "UPDATE users SET role = 'admin' WHERE id = %s", (admin["id"],))
    admin_token = (await login(client, admin["email"]))["access_token"]
    await api.json("get", "/moderation/reports", admin_token, params={"status": "all"})
    await api.json("get", "/moderation/reports", admin_token, params={"status": "x"},
                   status=422)
    await api.json("post", f"/moderation/reports/{report['id']}/dismiss", admin_token,
                   json={"reason": "fine"})
    await api.json("post", f"/moderation/reports/{report['id']}/dismiss", admin_token,
                   json={"reason": "fine"}, status=409)
    await api.json("post", f"/moderation/videos/{vid}/remove", admin_token,
                   json={"reason": "tour"})
    await api.json("get", f"/videos/{vid}", token)
    await api.json("post", f"/moderation/videos/{vid}/restore", admin_token,
                   json={"reason": "tour"})
    await api.json("post", f"/moderation/comments/{reply['id']}/remove", admin_token,
                   json={"reason": "tour"})
    await api.json("post", f"/moderation/comments/{reply['id']}/restore", admin_token,
                   json={"reason": "tour"})
    await api.json("post", f"/moderation/comments/{reply['id']}/restore", admin_token,
                   json={"reason": "tour"}, status=409)
    await api.json("post", f"/moderation/users/{viewer['id']}/ban", admin_token,
                   json={"reason": "tour", "until": "2999-01-01T00:00:00Z"})
    await api.json("get", "/users/me", viewer_token, status=403)
    await api.json("post", f"/moderation/users/{viewer['id']}/unban", admin_token,
                   json={"reason": "tour"})
    await api.json("put", f"/admin/users/{viewer['id']}/role", admin_token,
                   json={"role": "moderator"})
    await api.json("put", f"/admin/users/{viewer['id']}/role", admin_token,
                   json={"role": "king"}, status=422)
    await api.json("post", "/moderation/users/999999/ban", admin_token, json={"reason": "x"},
                   status=404)
    await api.json("get", "/moderation/log", admin_token, params={"limit": "2"})

    # Clean-up, and the rest of the surface.
    await api.json("delete", f"/comments/{reply['id']}", token, status=204)
    await api.json("delete", f"/videos/{vid}", viewer_token, status=403)
    await api.json("delete", f"/videos/{vid}", token, status=204)
    await api.json("get", f"/videos/{vid}", status=404)
    resp = await api.call("options", "/uploads")
    assert resp.status == 200
    await api.json("post", "/uploads", token, status=412)
    await api.json("post", "/auth/logout", token, status=204)
    await api.json("get", "/openapi.json")
    exercised = {(method, template) for method, template, _ in api.contract.seen}
    assert api.contract.operations() - exercised - NOT_TOURED == set()


async def test_the_docs_page_renders_the_document_with_vendored_assets(client):
    resp = await client.get("/docs")
    assert resp.status == 200
    html = await resp.text()
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "unsafe" not in csp
    assert "/openapi.json" in html
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        asset_resp = await client.get(asset)
        assert asset_resp.status == 200, asset
    assert "swagger-ui-bundle.js" in html


@pytest.mark.browser
async def test_the_docs_page_lists_the_operations_in_chromium_under_the_csp(instance):
    server = await instance()
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        try:
            page = await browser.new_page()
            refused: list[str] = []
            page.on("console", lambda message: refused.append(message.text)
                    if "Content Security Policy" in message.text else None)
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            await page.goto(str(server.make_url("/docs")))
            await expect(page.locator(".opblock-summary-path", has_text="/auth/login")
                         ).to_be_visible()
            await expect(page.locator(".opblock")).to_have_count(
                sum(1 for item in openapi.build_document(server.server.app[CONFIG_KEY])
                    ["paths"].values() for method in item if method in METHODS))
            await page.screenshot(path=str(SCREENSHOTS / "docs.png"), full_page=False)
            assert refused == []
            origin = str(server.make_url("/"))
            assert all(url.startswith(origin) for url in requested), requested
        finally:
            await browser.close()
