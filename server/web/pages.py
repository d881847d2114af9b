"""The HTML front end: server-rendered pages over the JSON API, plain JS and CSS.

Pages only read; everything that changes state (auth, upload, progress reports,
comments, reactions, subscriptions, reports, moderation) is done by the browser
through the JSON API and the viewer WebSocket. A page is rendered alike for
everybody: what only the signed-in user may see is added by the page's script,
since only the tab knows who is signed in.

Page paths never overlap API paths: a channel is `/@{id}` (the API is
`/users/{id}`), search results are `/results?q=` (the API is `/search`). The one
exception is the live rooms' `/rooms` and `/rooms/{id}`, shared with the API and told
apart by what the client accepts (server/web/rooms.py).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from redis.exceptions import RedisError

from server.accounts.profiles import PROFILES_KEY, profile_json
from server.accounts.standing import STANDING_KEY
from server.catalog.handlers import CATALOG_KEY, with_current_views
from server.catalog.records import VideoNotFound, video_json
from server.core.errors import ApiError, NotFound
from server.core.ids import parse_video_id
from server.core.keys import CONFIG_KEY, HTML_ERRORS_KEY, LIVE_COUNTS_KEY
from server.moderation.rules import REPORT_REASONS

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = ROOT / "templates"
STATIC_DIR = ROOT / "static"
PAGE_SIZE = 12
# Paths whose errors stay JSON whatever the client accepts.
API_PREFIXES = ("/auth/", "/videos/", "/users/", "/comments/", "/feed/", "/search",
                "/reports", "/moderation/", "/admin/", "/livekit/")
# What a report button offers, in this order, with the words shown for each.
REASON_LABELS = {
    "spam": "Spam or misleading",
    "harassment": "Harassment or bullying",
    "hate": "Hateful or abusive",
    "violence": "Violent or dangerous",
    "sexual": "Sexual content",
    "copyright": "Infringes my rights",
    "misinformation": "Misinformation",
    "other": "Something else",
}
# Static URLs carry a hash of the files, so they can be cached for good.
STATIC_CACHE = "public, max-age=31536000, immutable"
PLAIN_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(:\d{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:\d{1,5})?")

ERROR_TITLES = {
    400: "That request didn't make sense",
    404: "We couldn't find that page",
    405: "That doesn't work here",
    500: "Something went wrong on our side",
    503: "We're briefly unavailable",
}


def _security_headers(request: web.Request, connect: Sequence[str] = ()) -> dict[str, str]:
    # 'self' covers ws: in current browsers but not in all; naming the host does.
    # The Host header is the client's to choose, so only a plain one is echoed.
    host = request.host
    sockets = f" ws://{host} wss://{host}" if PLAIN_HOST.fullmatch(host) else ""
    # Further origins a page needs (a room's LiveKit server), named by the server.
    others = "".join(f" {origin}" for origin in connect)
    return {
        "Content-Security-Policy": (
            "default-src 'self'; img-src 'self' data:; media-src 'self'; "
            f"connect-src 'self'{sockets}{others}; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'; form-action 'self'"
        ),
        # X-Content-Type-Options comes with every response (server.core.http).
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


def render(request: web.Request, template: str, context: dict[str, Any],
           status: int = 200, connect: Sequence[str] = ()) -> web.Response:
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    response.headers.update(_security_headers(request, connect))
    return response


# --- formatting filters ----------------------------------------------------

def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    total = int(seconds + 0.5)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_count(value: int | None) -> str:
    return f"{value or 0:,}"


def format_ago(moment: datetime, now: datetime | None = None) -> str:
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    for unit, size in (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400),
                       ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now"


# --- pages -----------------------------------------------------------------

@routes.get("/", name="page_home")
async def home(request: web.Request) -> web.Response:
    raw_cursor = request.query.get("cursor")
    before = None
    if raw_cursor:
        before = parse_video_id(raw_cursor)
        if before is None:
            raise ApiError(400, "bad_request", "That page link is broken.")
    # One extra row tells whether an older page exists.
    rows = await request.app[CATALOG_KEY].page(before, PAGE_SIZE + 1)
    # The page is the same for everybody: ready videos only (the author's others
    # are added by the page's script).
    videos = [presented(row) for row in await with_current_views(request.app,
                                                                  rows[:PAGE_SIZE])]
    watching = await watching_now(request.app, [video["id"] for video in videos])
    return render(request, "home.html", {
        "videos": videos,
        "watching": watching,
        "next_cursor": videos[-1]["id"] if len(rows) > PAGE_SIZE else None,
        "paged": before is not None,
    })


@routes.get("/watch/{id}", name="page_watch")
async def watch(request: web.Request) -> web.Response:
    try:
        video = await request.app[CATALOG_KEY].get(request.match_info["id"])
    except VideoNotFound:
        # Rendered as the HTML 404 page by the error middleware, like every page error.
        raise NotFound("This video does not exist, or it was deleted.") from None
    hidden = restriction(video, request.app[STANDING_KEY].is_banned(video["author_id"]))
    if hidden is not None:
        # Nothing of the video itself: its author's script asks for it (and for why
        # it was removed) with their token.
        return render(request, "watch_restricted.html",
                      {"video_id": video["id"], "restriction": hidden},
                      status=410 if hidden == "removed" else 404)
    [video] = await with_current_views(request.app, [video])
    return render(request, "watch.html", {
        "video": presented(video),
        "comment_max_length": request.app[CONFIG_KEY].comment_max_length,
        "reasons": report_reasons(),
    })


def restriction(row: dict[str, Any], author_banned: bool) -> str | None:
    """Why a video's page shows nobody the video: removed, private or unavailable."""
    if row["removed_at"] is not None:
        return "removed"
    if author_banned:
        return "unavailable"
    if row["visibility"] == "private":
        return "private"
    return None


def report_reasons() -> list[tuple[str, str]]:
    """The reasons a report may give, as (value, label) for a select."""
    return [(reason, REASON_LABELS.get(reason, reason.capitalize()))
            for reason in REPORT_REASONS]


@routes.get("/@{id}", name="page_channel")
async def channel_page(request: web.Request) -> web.Response:
    """A user's channel: who they are, their subscribers; the videos come from the script."""
    try:
        row = await request.app[PROFILES_KEY].public(request.match_info["id"])
    except NotFound:
        # A banned user's channel is gone while the ban lasts, like their profile.
        raise NotFound("There is no such channel.") from None
    return render(request, "channel.html", {
        "channel": {**profile_json(row), "created_at": row["created_at"]},
        "reasons": report_reasons(),
    })


@routes.get("/results", name="page_results")
async def results_page(request: web.Request) -> web.Response:
    """The results page; the results come from GET /search, asked by the script."""
    query = request.query.get("q", "").strip()[:200]
    return render(request, "search.html", {"search_query": query})


@routes.get("/me/videos", name="page_my_videos")
async def my_videos_page(request: web.Request) -> web.Response:
    return render(request, "my_videos.html", {})


@routes.get("/settings", name="page_settings")
async def settings_page(request: web.Request) -> web.Response:
    return render(request, "settings.html", {})


@routes.get("/moderation", name="page_moderation")
async def moderation_page(request: web.Request) -> web.Response:
    return render(request, "moderation.html", {"reasons": report_reasons()})


@routes.get("/login", name="page_login")
async def login_page(request: web.Request) -> web.Response:
    return render(request, "auth_form.html", {"mode": "login"})


@routes.get("/register", name="page_register")
async def register_page(request: web.Request) -> web.Response:
    return render(request, "auth_form.html", {"mode": "register"})


@routes.get("/upload", name="page_upload")
async def upload_page(request: web.Request) -> web.Response:
    return render(request, "upload.html",
                  {"max_upload_bytes": request.app[CONFIG_KEY].max_upload_bytes})


@routes.get("/docs", name="page_docs")
async def docs_page(request: web.Request) -> web.Response:
    """The API reference: Swagger UI (static/vendor) renders /openapi.json in the browser."""
    return render(request, "docs.html", {})


PAGE_ROUTES = frozenset({"page_home", "page_watch", "page_login", "page_register",
                         "page_upload", "page_channel", "page_my_videos", "page_settings",
                         "page_moderation", "page_results", "page_docs"})


def presented(row: dict[str, Any]) -> dict[str, Any]:
    """A video row with what the API derives from it (status, poster and storyboard URLs).

    Read as by nobody in particular: a page is rendered alike for everyone, so
    it never carries why a video failed; the author's script asks for that.
    """
    return {**video_json(row), "created_at": row["created_at"]}


async def watching_now(app: web.Application, video_ids: list[int]) -> dict[int, int]:
    """Live viewer counts for the listed videos, from the presence hub."""
    try:
        return await app[LIVE_COUNTS_KEY].counts(video_ids)
    except RedisError as exc:
        # The list is still worth showing without its live counts.
        log.warning("watching-now counts unavailable: %s", exc)
        return {}


# --- errors ----------------------------------------------------------------

def wants_html(request: web.Request) -> bool:
    """Page routes always get HTML errors; the API never; anything else if it asks."""
    if request.match_info.route.name in PAGE_ROUTES:
        return True
    path = request.path
    if path == "/videos" or path.startswith(API_PREFIXES):
        return False
    return "text/html" in request.headers.get("Accept", "")


async def html_error(request: web.Request, status: int,
                     message: str) -> web.StreamResponse | None:
    if not wants_html(request):
        return None
    title = ERROR_TITLES.get(status, "That didn't work")
    # A 500 says nothing of its cause; a bare reason phrase would only repeat the title.
    detail = None if status >= 500 or message == _phrase(status) else message
    try:
        return render(request, "error.html",
                      {"status": status, "title": title, "detail": detail}, status=status)
    except Exception:
        log.exception("rendering the %d page failed", status)
        return None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


# --- setup -----------------------------------------------------------------

def static_version(directory: Path) -> str:
    """A short hash over every static file's name and content."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _jinja_env(app: web.Application) -> jinja2.Environment:
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        # Templates are compiled once below; no stat() per render on the event loop.
        auto_reload=False,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(duration=format_duration, count=format_count, ago=format_ago)
    for name in env.list_templates(extensions=["html"]):
        env.get_template(name)
    return env


async def _cache_static(request: web.Request, response: web.StreamResponse) -> None:
    prefix = request.app[aiohttp_jinja2.static_root_key]
    if request.path.startswith(prefix + "/") and response.status < 400:
        response.headers["Cache-Control"] = STATIC_CACHE


def _in_memory(body: bytes, content_type: str) -> Callable[
        [web.Request], Awaitable[web.StreamResponse]]:
    async def serve(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type=content_type)

    return serve


def setup(app: web.Application) -> None:
    _jinja_env(app)
    prefix = f"/static/{static_version(STATIC_DIR)}"
    app[aiohttp_jinja2.static_root_key] = prefix
    app[HTML_ERRORS_KEY] = html_error
    app.on_response_prepare.append(_cache_static)
    app.add_routes(routes)
    # Imported here: the room pages are built on this module's render().
    from server.web import rooms
    rooms.setup(app)
    # The icon is served from memory: a browser asks for it last, often still asking as a
    # server stops, and aiohttp's file response leaks its open file when cancelled then.
    app.router.add_get(f"{prefix}/favicon.svg",
                       _in_memory((STATIC_DIR / "favicon.svg").read_bytes(), "image/svg+xml"),
                       name="favicon")
    app.router.add_static(prefix, STATIC_DIR, name="static")
