"""GET /openapi.json: the JSON API described as an OpenAPI 3.1 document.

The document is built here in Python rather than kept as a JSON or YAML file:
the limits it states (title and tag lengths, visibilities, roles, the upload and
comment limits of this server's configuration) come from the code and the
configuration that enforce them, and the hundred or so operations share a few
helpers (the error responses, paged lists, the id parameter) instead of
repeating them. What lives in features that ops may not import (report
reasons, sorts, reactions) is written out here; tests/test_openapi.py checks
those lists against the code, every route against the document, and real
responses against its schemas.

It is built once per application, from its configuration, and served as bytes.
Pages (HTML), static files, the viewer WebSocket (`GET /videos/{id}/active-viewers`),
a room's chat WebSocket (`GET /rooms/{id}/chat`) and /docs (a page rendering this
document) are not part of it.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from server.accounts.policy import Role
from server.accounts.profiles import BIO_MAX, NAME_MAX
from server.catalog.edits import DESCRIPTION_MAX, TAG_MAX, TAGS_MAX, TITLE_MAX, VISIBILITIES
from server.core.config import Config
from server.core.keys import CONFIG_KEY

Schema = dict[str, Any]

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
ID_MAX = 10**18 - 1  # ids in paths have at most 18 digits (server.core.ids)

# Written out here, checked against the features' own lists by the tests.
REACTIONS = ("like", "dislike")
COMMENT_SORTS = ("newest", "top")
REPORT_TARGETS = ("video", "comment", "user")
REPORT_REASONS = ("spam", "harassment", "hate", "violence", "sexual", "copyright",
                  "misinformation", "other")
REPORT_STATUSES = ("open", "dismissed", "actioned")
VIDEO_STATUSES = ("processing", "ready", "failed")
ACTION_REASON_MAX = 500
REPORT_NOTE_MAX = 1000
SEARCH_MAX = 200
PAGE_MAX = 100
# Live rooms (server.live, which ops may not import; tests/test_rooms.py compares).
ROOM_NAME_MAX = 100
ROOM_MAX_PARTICIPANTS = 1000
GUEST_NAME_MAX = 50
ROOM_STATUSES = ("active", "ended")
CHAT_BODY_MAX = 1000
CHAT_PAGE_DEFAULT = 50
WEBHOOK_MAX_BODY = 64 * 1024

STATUS_TEXT = {
    304: "Not modified: the cached copy is current",
    400: "The request is malformed (bad JSON, a malformed body or header)",
    401: "No valid Bearer access token (or bad credentials)",
    403: "Not allowed: a banned account, a role without the right, another's content, "
         "or a private video's media without a valid signature",
    404: "Not found, or not visible to the caller",
    405: "Method not allowed",
    408: "The body arrived too slowly",
    409: "Conflicts with the current state",
    410: "Gone: an expired cursor or upload",
    412: "A precondition did not hold",
    413: "The body is too large",
    415: "Unsupported body type or file format",
    416: "No requested range can be satisfied",
    422: "A field, parameter or body failed validation",
    423: "Another request is writing this upload",
    429: "Rate limited; retry after Retry-After seconds",
    460: "The body did not match its Upload-Checksum",
    503: "A dependency (PostgreSQL, Redis, the bucket) is briefly unavailable, or the server "
         "sheds load; "
         "retry after Retry-After seconds",
}
# What a JSON body's reading can answer (server.core.validation.read_json_object).
BODY_ERRORS = (400, 413, 415, 422)


# --- schema helpers ------------------------------------------------------------

def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def closed(properties: dict[str, Schema], optional: tuple[str, ...] = ()) -> Schema:
    """An object we write: every property listed, all but `optional` always present."""
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "required": [name for name in properties if name not in optional]}


def body_object(properties: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    """A request body: unknown fields are ignored by the server, so they are allowed."""
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def nullable(schema: Schema) -> Schema:
    kind = schema["type"]
    out = {**schema, "type": [kind, "null"]}
    if "enum" in schema:
        out["enum"] = [*schema["enum"], None]
    return out


INT: Schema = {"type": "integer"}
ID: Schema = {"type": "integer", "minimum": 1}
COUNT: Schema = {"type": "integer", "minimum": 0}
TEXT: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
WHEN: Schema = {"type": "string", "format": "date-time"}
URL: Schema = {"type": "string", "description": "A path on this server"}


def page_of(item: str) -> Schema:
    return closed({
        "items": {"type": "array", "items": ref(item)},
        "next_cursor": {"type": ["string", "null"],
                        "description": "Pass as `cursor` for the next page; null on the last"},
    })


def schemas(config: Config) -> dict[str, Schema]:
    comment: dict[str, Schema] = {
        "id": ID,
        "video_id": ID,
        "author_id": nullable(ID) | {"description": "null once deleted"},
        "author_name": nullable(TEXT),
        "parent_id": nullable(ID) | {"description": "The comment a reply answers"},
        "body": {"type": "string", "description": "Empty once deleted, or removed (but to "
                                                   "its author)"},
        "created_at": WHEN,
        "edited_at": nullable(WHEN),
        "deleted": BOOL,
        "removed": BOOL,
        "reply_count": COUNT,
    }
    report: dict[str, Schema] = {
        "id": ID,
        "reporter_id": ID,
        "target_type": {"type": "string", "enum": list(REPORT_TARGETS)},
        "target_id": ID,
        "reason": {"type": "string", "enum": list(REPORT_REASONS)},
        "note": TEXT,
        "status": {"type": "string", "enum": list(REPORT_STATUSES)},
        "created_at": WHEN,
        "resolved_at": nullable(WHEN),
        "resolved_by": nullable(ID),
    }
    action_result: dict[str, Schema] = {
        "action": TEXT,
        "target_type": TEXT,
        "target_id": ID,
        "reason": TEXT,
        "reports_closed": {**COUNT, "description": "Open reports on the target now closed"},
    }
    roles = [role.value for role in Role]
    return {
        "Error": closed({"error": closed({
            "code": {"type": "string", "description": "Stable, machine-readable"},
            "message": {"type": "string", "description": "For people"},
        })}),
        "Health": closed({"status": {"const": "ok"}}),
        "User": closed({
            "id": ID, "email": TEXT, "name": TEXT, "created_at": WHEN,
            "role": {"type": "string", "enum": roles}, "bio": TEXT,
            "avatar_url": nullable(URL),
        }) | {"description": "An account as its owner sees it"},
        "Profile": closed({
            "id": ID, "name": TEXT, "bio": TEXT, "avatar_url": nullable(URL),
            "created_at": WHEN, "subscriber_count": COUNT, "video_count": COUNT,
        }) | {"description": "A user as everyone sees them"},
        "TokenPair": closed({
            "access_token": {"type": "string", "description": "A JWT; send it as "
                                                               "`Authorization: Bearer ...`"},
            "refresh_token": {"type": "string", "description": "Single use; POST it to "
                                                                "/auth/refresh for a new pair"},
            "token_type": {"const": "bearer"},
            "expires_in": {"type": "integer", "minimum": 1,
                           "description": "Seconds the access token is valid"},
        }),
        "Video": closed({
            "id": ID, "title": TEXT, "description": TEXT, "author_id": ID,
            "author_name": TEXT,
            "size": {"type": "integer", "minimum": 1, "description": "Bytes of the stream"},
            "content_type": TEXT,
            "duration": nullable({"type": "number", "minimum": 0}),
            "views": COUNT,
            "created_at": WHEN,
            "stream_url": URL | {"description": "Signed for its author when private"},
            "status": {"type": "string", "enum": list(VIDEO_STATUSES)},
            "failure_reason": nullable(TEXT) | {"description": "Shown to the author alone"},
            "progress": nullable({"type": "number", "minimum": 0, "maximum": 1}),
            "width": nullable(INT), "height": nullable(INT),
            "video_codec": nullable(TEXT), "audio_codec": nullable(TEXT),
            "poster_url": nullable(URL), "storyboard_url": nullable(URL),
            "visibility": {"type": "string", "enum": list(VISIBILITIES)},
            "tags": {"type": "array", "items": TEXT, "maxItems": TAGS_MAX},
            "like_count": COUNT, "dislike_count": COUNT, "comment_count": COUNT,
            "my_reaction": nullable({"type": "string", "enum": list(REACTIONS)}),
            "removed": BOOL,
            "removed_reason": nullable(TEXT) | {"description": "Shown to the author alone"},
        }),
        "VideoPage": page_of("Video"),
        "Comment": closed(comment),
        "CommentThread": closed({**comment, "replies": {
            "type": "array", "items": ref("Comment"),
            "description": "The first replies, oldest first; GET /comments/{id}/replies "
                           "has the rest"}}),
        "CommentPage": page_of("CommentThread"),
        "ReplyPage": page_of("Comment"),
        "Reaction": closed({
            "like_count": COUNT, "dislike_count": COUNT,
            "my_reaction": nullable({"type": "string", "enum": list(REACTIONS)}),
        }),
        "Subscription": closed({"subscribed": BOOL, "subscriber_count": COUNT}),
        "Channel": closed({
            "id": ID, "name": TEXT, "avatar_url": nullable(URL),
            "subscriber_count": COUNT, "subscribed_at": WHEN,
        }),
        "ChannelPage": page_of("Channel"),
        "Block": closed({"blocked": BOOL}),
        "Report": closed(report),
        "QueueItem": closed({**report, "reporter_name": TEXT, "target": closed({
            "type": {"type": "string", "enum": list(REPORT_TARGETS)},
            "id": ID,
            "exists": {**BOOL, "description": "False once the target is deleted"},
            "label": nullable(TEXT),
            "owner_id": nullable(ID),
            "hidden": {**BOOL, "description": "Removed (video, comment) or banned (user) now"},
            "video_id": nullable(ID),
            "open_reports": COUNT,
        })}),
        "QueuePage": page_of("QueueItem"),
        "DismissResult": closed(action_result),
        "ContentActionResult": closed({**action_result, "removed": BOOL}),
        "BanResult": closed({**action_result, "banned": BOOL,
                             "banned_until": nullable(WHEN)}),
        "RoleResult": closed({"id": ID, "role": {"type": "string", "enum": roles},
                              "changed": BOOL}),
        "LogEntry": closed({
            "id": ID, "actor_id": nullable(ID), "actor_name": nullable(TEXT),
            "action": TEXT, "target_type": TEXT, "target_id": ID,
            "target_label": nullable(TEXT), "reason": TEXT,
            "details": {"type": "object"}, "at": WHEN,
        }),
        "LogPage": page_of("LogEntry"),
        **room_schemas(),
        # Requests.
        "Credentials": body_object({
            "email": {"type": "string", "maxLength": 254},
            "password": {"type": "string", "maxLength": 1024},
        }, ("email", "password")),
        "Registration": body_object({
            "email": {"type": "string", "maxLength": 254, "format": "email"},
            "password": {"type": "string", "minLength": 8,
                         "description": "8 characters to 72 bytes (bcrypt's limit)"},
            "name": {"type": "string", "maxLength": NAME_MAX,
                     "description": "Defaults to the email's local part"},
        }, ("email", "password")),
        "RefreshRequest": body_object({"refresh_token": {"type": "string", "minLength": 1,
                                                         "maxLength": 512}},
                                      ("refresh_token",)),
        "ProfileEdit": body_object({
            "name": {"type": "string", "minLength": 1, "maxLength": NAME_MAX},
            "bio": {"type": "string", "maxLength": BIO_MAX},
        }) | {"minProperties": 1, "description": "Send `name`, `bio` or both"},
        "VideoEdit": body_object({
            "title": {"type": "string", "minLength": 1, "maxLength": TITLE_MAX},
            "description": {"type": "string", "maxLength": DESCRIPTION_MAX},
            "visibility": {"type": "string", "enum": list(VISIBILITIES)},
            "tags": {"type": "array", "maxItems": TAGS_MAX, "items": {
                "type": "string", "minLength": 1, "maxLength": TAG_MAX,
                "description": "Letters, digits, '-' or '_'; a leading '#' is dropped and "
                               "the tag lower-cased"}},
        }) | {"minProperties": 1, "description": "At least one field"},
        "NewComment": body_object({
            "body": {"type": "string", "minLength": 1,
                     "maxLength": config.comment_max_length},
            "parent_id": nullable(ID) | {"description": "Reply to this top-level comment"},
        }, ("body",)),
        "CommentEdit": body_object({
            "body": {"type": "string", "minLength": 1,
                     "maxLength": config.comment_max_length},
        }, ("body",)),
        "ReactionRequest": body_object({
            "kind": {"type": "string", "enum": list(REACTIONS)}}, ("kind",)),
        "NewReport": body_object({
            "target_type": {"type": "string", "enum": list(REPORT_TARGETS)},
            "target_id": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
            "reason": {"type": "string", "enum": list(REPORT_REASONS)},
            "note": {"type": "string", "maxLength": REPORT_NOTE_MAX},
        }, ("target_type", "target_id", "reason")),
        "ActionReason": body_object({
            "reason": {"type": "string", "minLength": 1, "maxLength": ACTION_REASON_MAX,
                       "description": "Why; written to the moderation log"}}, ("reason",)),
        "BanRequest": body_object({
            "reason": {"type": "string", "minLength": 1, "maxLength": ACTION_REASON_MAX},
            "until": {"type": ["string", "null"], "format": "date-time",
                      "description": "When the ban ends (UTC without an offset); "
                                     "null or absent: no end"},
        }, ("reason",)),
        "RoleRequest": body_object({
            "role": {"type": "string", "enum": roles},
            "reason": {"type": "string", "maxLength": ACTION_REASON_MAX},
        }, ("role",)),
        "PlaybackReport": body_object({
            "position": {"type": "number", "minimum": 0, "maximum": 7 * 24 * 3600,
                         "description": "The playhead, in seconds"},
            "playing": BOOL,
            "session": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$",
                        "description": "One id per playback, chosen by the client"},
        }, ("position", "playing", "session")),
    }


def room_schemas() -> dict[str, Schema]:
    room: dict[str, Schema] = {
        "id": ID, "name": TEXT, "owner_id": ID,
        "status": {"type": "string", "enum": list(ROOM_STATUSES)},
        "created_at": WHEN,
        "livekit_url": nullable(TEXT) | {"description": "The LiveKit server to connect to "
                                                        "(LIVEKIT_URL); null when unset"},
        "livekit_room": TEXT | {"description": "The room's name in LiveKit"},
        "max_participants": nullable({"type": "integer", "minimum": 1,
                                      "maximum": ROOM_MAX_PARTICIPANTS}),
        "participant_count": COUNT | {"description": "People in the room now"},
    }
    return {
        "Room": closed(room, ("participant_count",)),
        "RoomDetail": closed({**room, "participants": {
            "type": "array", "items": ref("Participant"),
            "description": "Who is in the room now, earliest first; empty once ended"}},
            ("participant_count",)),
        "Participant": closed({
            "identity": TEXT | {"description": "`user-<id>` for accounts, `guest-...` for "
                                               "guests"},
            "name": TEXT, "joined_at": WHEN}),
        "RoomPage": page_of("Room"),
        "JoinToken": closed({
            "token": TEXT | {"description": "A LiveKit access token for this room alone"},
            "livekit_url": nullable(TEXT),
            "identity": TEXT,
        }),
        "WebhookAck": closed({"ok": {"const": True}}),
        "RoomMessage": closed({
            "id": ID, "room_id": ID, "identity": TEXT, "name": TEXT,
            "body": {"type": "string", "minLength": 1, "maxLength": CHAT_BODY_MAX,
                     "description": "Plain text, as written: escape it to show it"},
            "created_at": WHEN,
        }),
        "RoomMessagePage": closed({
            "messages": {"type": "array", "items": ref("RoomMessage"),
                         "description": "Newest first"},
            "next": nullable(ID) | {"description": "Pass as `before` for older messages; "
                                                   "null on the last page"},
        }),
        "NewRoom": body_object({
            "name": {"type": "string", "minLength": 1, "maxLength": ROOM_NAME_MAX},
            "max_participants": nullable({"type": "integer", "minimum": 1,
                                          "maximum": ROOM_MAX_PARTICIPANTS}),
        }, ("name",)),
        "JoinRequest": body_object({
            "name": nullable({"type": "string", "maxLength": GUEST_NAME_MAX}) | {
                "description": "A guest's display name (default `Guest`); ignored for "
                               "accounts, whose name is their profile's"},
        }),
    }


# --- operations -------------------------------------------------------------------

def retry_after() -> Schema:
    return {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}


def responses_component() -> dict[str, Schema]:
    out: dict[str, Schema] = {}
    for status, text in STATUS_TEXT.items():
        if status == 304:
            continue
        response: Schema = {"description": text,
                            "content": {JSON: {"schema": ref("Error")}}}
        if status in (429, 503):
            response["headers"] = retry_after()
        if status == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": TEXT}}
        out[str(status)] = response
    return out


def json_response(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def op(op_id: str, tag: str, summary: str, done: dict[int, Schema], errors: tuple[int, ...],
       *, auth: str | None = None, body: str | Schema | None = None,
       params: tuple[Schema, ...] = (), description: str | None = None) -> Schema:
    """One operation: its success responses, its error statuses (all the one Error
    shape), who may call it (`auth`: "required", "optional" or None) and its JSON body."""
    operation: Schema = {"operationId": op_id, "tags": [tag], "summary": summary}
    if description:
        operation["description"] = description
    if params:
        operation["parameters"] = list(params)
    statuses = set(errors)
    if auth == "required":
        operation["security"] = [{"bearerAuth": []}]
        statuses |= {401, 403}
    elif auth == "optional":
        operation["security"] = [{}, {"bearerAuth": []}]
    if body is not None:
        schema = ref(body) if isinstance(body, str) else body
        operation["requestBody"] = {"required": True,
                                    "content": {JSON: {"schema": schema}}}
        statuses |= set(BODY_ERRORS)
    responses: Schema = {str(status): response for status, response in done.items()}
    for status in sorted(statuses | {503}):
        responses[str(status)] = {"$ref": f"#/components/responses/{status}"}
    operation["responses"] = dict(sorted(responses.items()))
    return operation


def ok(schema: str, description: str = "OK") -> Schema:
    return json_response(description, ref(schema))


NO_CONTENT = {"description": "Done; no body"}


def path_id(what: str) -> Schema:
    return {"name": "id", "in": "path", "required": True,
            "description": f"The {what}'s id; any other spelling names nothing (404)",
            "schema": {"type": "integer", "minimum": 1, "maximum": ID_MAX}}


def query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


LIMIT = query("limit", {"type": "integer", "minimum": 1, "maximum": PAGE_MAX, "default": 20},
              "Items per page")
CURSOR = query("cursor", TEXT, "The `next_cursor` of the page before")
NUMERIC_CURSOR = query("cursor", {"type": "string", "pattern": "^[1-9][0-9]{0,17}$"},
                       "The `next_cursor` of the page before")


def header(name: str, description: str, schema: Schema = TEXT) -> Schema:
    return {"name": name, "in": "header", "required": False, "description": description,
            "schema": schema}


SIGNATURE = (query("expires", TEXT, "A private video's signed URL: when it expires"),
             query("sig", TEXT, "A private video's signed URL: its signature"))
VALIDATORS = (header("If-None-Match", "An ETag the client holds"),
              header("If-Modified-Since", "An HTTP date"))
BINARY = {"type": "string", "contentMediaType": "application/octet-stream"}


def media_headers() -> Schema:
    return {name: {"schema": TEXT} for name in ("ETag", "Last-Modified", "Cache-Control")}


def accounts_paths() -> dict[str, Schema]:
    me = op("me", "accounts", "The signed-in user", {200: ok("User")}, (), auth="required")
    return {
        "/auth/register": {"post": op(
            "register", "accounts", "Create an account", {201: ok("User", "Created")},
            (409, 429), body="Registration",
            description="409 `email_taken`; 429 past AUTH_RATE_LIMIT per address.")},
        "/auth/login": {"post": op(
            "login", "accounts", "Sign in: an access and a refresh token",
            {200: ok("TokenPair")}, (401, 403, 429), body="Credentials",
            description="401 `invalid_credentials`; 403 `banned` (to whoever knows the "
                        "password); 429 past AUTH_RATE_LIMIT per address or account.")},
        "/auth/refresh": {"post": op(
            "refresh", "accounts", "Trade a refresh token for a new pair",
            {200: ok("TokenPair")}, (401, 403), body="RefreshRequest",
            description="A refresh token works once; a reused one revokes its whole "
                        "session (401 `refresh_token_reused`).")},
        "/auth/logout": {"post": op(
            "logout", "accounts", "Revoke every refresh token of the user", {204: NO_CONTENT},
            (), auth="required")},
        "/auth/me": {"get": {**me, "operationId": "auth_me",
                             "description": "The same as GET /users/me."}},
        "/users/me": {
            "get": {**me, "operationId": "users_me"},
            "patch": op("edit_profile", "accounts", "Change the name, the bio or both",
                        {200: ok("User")}, (), auth="required", body="ProfileEdit"),
        },
        "/users/me/avatar": {"put": op(
            "set_avatar", "accounts", "Set the avatar",
            {200: ok("User")}, (400, 413, 415, 422, 429), auth="required",
            description="The body is the image itself (JPEG, PNG, GIF or WebP, at most "
                        "5 MiB); it is re-encoded as a square JPEG.")
            | {"requestBody": {"required": True, "content": {
                "image/*": {"schema": BINARY},
                "application/octet-stream": {"schema": BINARY}}}}},
        "/users/{id}": {"get": op(
            "profile", "accounts", "A user's public profile", {200: ok("Profile")}, (404,),
            params=(path_id("user"),),
            description="A banned user has no profile while the ban lasts (404).")},
        "/users/{id}/avatar.jpg": {"get": op(
            "avatar", "accounts", "A user's avatar",
            {200: {"description": "The JPEG", "headers": media_headers(),
                   "content": {"image/jpeg": {"schema": BINARY}}},
             304: {"description": STATUS_TEXT[304], "headers": media_headers()}},
            (404,), params=(path_id("user"), query("v", TEXT, "The version in avatar_url: "
                                                   "makes the answer cacheable for good"),
                            VALIDATORS[0]))},
    }


def catalog_paths(config: Config) -> dict[str, Schema]:
    video = path_id("video")
    stream_ok = {"description": "The whole file", "content": {
        "video/*": {"schema": BINARY}}}
    partial = {"description": "One range (the video's type, with Content-Range) or several "
                              "(multipart/byteranges)",
               "headers": {"Content-Range": {"schema": TEXT}},
               "content": {"video/*": {"schema": BINARY},
                           "multipart/byteranges": {"schema": BINARY}}}
    stream_params = (
        video,
        header("Range", "`bytes=first-last`, `bytes=first-`, `bytes=-suffix`, or a list"),
        header("If-Range", "An ETag or HTTP date: the range applies only if it matches"),
        header("If-Match", "ETags"), header("If-None-Match", "ETags"),
        header("If-Modified-Since", "An HTTP date"),
        header("If-Unmodified-Since", "An HTTP date"),
        *SIGNATURE)
    stream_doc = (
        "RFC 9110 byte ranges and conditional requests over the processed file. 200 is "
        "the whole file, 206 one range (Content-Range) or several (multipart/byteranges); "
        "416 when no range can be satisfied (`Content-Range: bytes */size`); 304 and 412 "
        "answer the conditional headers. Every answer carries ETag, Last-Modified and "
        "Accept-Ranges. A private video's stream needs the signed URL its author got in "
        "`stream_url` (403 otherwise). With STREAM_REDIRECT=presigned every answer is a "
        "302 to a presigned bucket URL instead. 503 when the file is not on this node and "
        "the bucket cannot be reached.")

    def stream(op_id: str) -> Schema:
        return op(op_id, "videos", "Stream the video",
                  {200: stream_ok, 206: partial,
                   302: {"description": "STREAM_REDIRECT=presigned: the bucket's presigned URL",
                         "headers": {"Location": {"schema": TEXT}}},
                   304: {"description": STATUS_TEXT[304]}},
                  (403, 404, 412, 416, 503), params=stream_params, description=stream_doc)

    def artifact(op_id: str, summary: str, media: str) -> Schema:
        return op(op_id, "videos", summary,
                  {200: {"description": "The file", "headers": media_headers(),
                         "content": {media: {"schema": BINARY if media != "text/vtt"
                                             else TEXT}}},
                   304: {"description": STATUS_TEXT[304], "headers": media_headers()}},
                  (403, 404), params=(video, *VALIDATORS, *SIGNATURE),
                  description="404 until the video is ready. A private video's files "
                              "need its signed URL, as its stream does.")

    return {
        "/videos": {"get": op(
            "videos", "videos", "Listed videos, newest first", {200: ok("VideoPage")}, (422,),
            auth="optional", params=(LIMIT, NUMERIC_CURSOR),
            description="With a token, the caller's own videos of any state are "
                        "included.")},
        "/users/{id}/videos": {"get": op(
            "user_videos", "videos", "A user's videos, newest first",
            {200: ok("VideoPage")}, (404, 422), auth="optional",
            params=(path_id("user"), LIMIT, NUMERIC_CURSOR),
            description="All of them, of any state and visibility, when the caller is "
                        "that user.")},
        "/videos/{id}": {
            "get": op("video", "videos", "One video", {200: ok("Video")}, (404,),
                      auth="optional", params=(video,),
                      description="A private or removed video, or one by a banned author, "
                                  "is found only by its author and moderators."),
            "patch": op("edit_video", "videos", "Edit one's video", {200: ok("Video")},
                        (404,), auth="required", body="VideoEdit", params=(video,)),
            "delete": op("delete_video", "videos", "Delete one's video", {204: NO_CONTENT},
                         (404,), auth="required", params=(video,)),
        },
        "/videos/{id}/stream": {"get": stream("stream"), "head": stream("stream_head")},
        "/videos/{id}/poster.jpg": {"get": artifact("poster", "The poster", "image/jpeg")},
        "/videos/{id}/storyboard.jpg": {"get": artifact(
            "storyboard_sprite", "The seek previews' sprite", "image/jpeg")},
        "/videos/{id}/storyboard.vtt": {"get": artifact(
            "storyboard", "The seek previews (WebVTT naming sprite regions)", "text/vtt")},
        "/videos/upload": {"post": op(
            "upload", "uploads", "Upload a video (multipart/form-data)",
            {201: ok("Video", "Created, in state `processing`")},
            (400, 413, 415, 422, 429), auth="required",
            description=f"At most {config.max_upload_bytes} bytes (MAX_UPLOAD_BYTES); "
                        "MP4, MOV, WebM, Matroska or Ogg, told by its bytes (415 "
                        "otherwise). 429 past RATE_LIMIT_UPLOAD. For big files use the "
                        "resumable /uploads (tus).")
            | {"requestBody": {"required": True, "content": {"multipart/form-data": {
                "schema": body_object({
                    "title": {"type": "string", "minLength": 1, "maxLength": TITLE_MAX},
                    "description": {"type": "string", "maxLength": DESCRIPTION_MAX},
                    "file": BINARY,
                }, ("title", "file"))}}}}},
        "/videos/{id}/views": {"post": op(
            "view_progress", "videos", "Report playback progress (views)", {204: NO_CONTENT},
            (403, 404), auth="optional", body="PlaybackReport", params=(video,),
            description="For clients without the viewer WebSocket. A view counts once a "
                        "session has played for VIEW_MIN_WATCH seconds of wall-clock time. "
                        "403 `origin_not_allowed` for pages of other origins.")},
    }


def tus_paths(config: Config) -> dict[str, Schema]:
    upload = {"name": "id", "in": "path", "required": True, "description": "The upload's id",
              "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
    resumable = {"name": "Tus-Resumable", "in": "header", "required": True,
                 "schema": {"const": "1.0.0"}}
    offset = {"Upload-Offset": {"schema": {"type": "integer"}}}
    chunk = {"required": True, "content": {"application/offset+octet-stream": {
        "schema": BINARY}}}
    doc = (
        "Resumable uploads by the tus 1.0 protocol (creation, creation-with-upload, "
        "termination, expiration, checksum); any tus client works. Every request but "
        "OPTIONS needs `Tus-Resumable: 1.0.0` (412 otherwise) and a Bearer token; an upload "
        "is its creator's alone. When the last byte arrives the file becomes a video "
        "(`Tubelet-Video-Id` header) in state `processing`.")

    def tus(op_id: str, summary: str, done: dict[int, Schema], errors: tuple[int, ...],
            **extra: Any) -> Schema:
        params = extra.pop("params", (resumable,))
        return op(op_id, "uploads", summary, done, errors, auth="required", params=params,
                  description=doc) | extra

    options = {"operationId": "tus_options", "tags": ["uploads"],
               "summary": "tus discovery (and CORS preflight)", "description": doc,
               "responses": {"200": {"description": "Tus-Version, Tus-Extension, "
                                     f"Tus-Max-Size ({config.max_upload_bytes}), "
                                     "Tus-Checksum-Algorithm"}}}
    return {
        "/uploads": {
            "options": options,
            "post": tus("tus_create", "Create an upload (Upload-Length, Upload-Metadata)",
                        {201: {"description": "Created; Location names it",
                               "headers": {"Location": {"schema": TEXT}, **offset}}},
                        (400, 409, 412, 413, 415, 422, 423, 429, 460),
                        requestBody={"required": False, "content": chunk["content"]}),
        },
        "/uploads/{id}": {
            "options": {**options, "operationId": "tus_options_upload",
                        "parameters": [upload]},
            "head": tus("tus_offset", "Where an upload stands",
                        {200: {"description": "Upload-Offset and Upload-Length",
                               "headers": offset}},
                        (404, 410, 412, 415, 423), params=(upload, resumable)),
            "patch": tus("tus_append", "Append bytes at Upload-Offset",
                         {204: {"description": "Taken", "headers": offset}},
                         (400, 404, 408, 409, 410, 412, 413, 415, 422, 423, 460),
                         params=(upload, resumable), requestBody=chunk),
            "delete": tus("tus_terminate", "Abandon an upload", {204: NO_CONTENT},
                          (404, 410, 412, 423), params=(upload, resumable)),
            "post": tus("tus_override", "PATCH, DELETE or HEAD by X-HTTP-Method-Override",
                        {200: {"description": "As HEAD"}, 204: NO_CONTENT},
                        (400, 404, 405, 408, 409, 410, 412, 413, 415, 422, 423, 460),
                        params=(upload, resumable, {
                            "name": "X-HTTP-Method-Override", "in": "header",
                            "required": True,
                            "schema": {"type": "string", "enum": ["PATCH", "DELETE", "HEAD"]}}),
                        requestBody={"required": False, "content": chunk["content"]}),
        },
    }


def social_paths() -> dict[str, Schema]:
    video, user, comment = path_id("video"), path_id("user"), path_id("comment")
    throttled = "429 past the per-account and per-address rate limit."
    return {
        "/videos/{id}/comments": {
            "get": op("video_comments", "social", "A video's comments with their first "
                      "replies", {200: ok("CommentPage")}, (404, 422), auth="optional",
                      params=(video, query("sort", {"type": "string",
                                                    "enum": list(COMMENT_SORTS)},
                                           "newest (default) or top (most replies)"),
                              LIMIT, CURSOR)),
            "post": op("post_comment", "social", "Comment, or reply to a comment",
                       {201: json_response("Created", {"oneOf": [ref("CommentThread"),
                                                                 ref("Comment")]})},
                       (404, 429), auth="required", body="NewComment", params=(video,),
                       description="A top-level comment comes with `replies: []`. 422 "
                                   "`invalid_parent` or `nested_reply` for a bad "
                                   f"parent_id. {throttled}"),
        },
        "/comments/{id}/replies": {"get": op(
            "comment_replies", "social", "A comment's replies, oldest first",
            {200: ok("ReplyPage")}, (404, 422), auth="optional",
            params=(comment, LIMIT, CURSOR))},
        "/comments/{id}": {
            "patch": op("edit_comment", "social", "Edit one's comment", {200: ok("Comment")},
                        (404, 429), auth="required", body="CommentEdit", params=(comment,)),
            "delete": op("delete_comment", "social", "Delete one's comment", {204: NO_CONTENT},
                         (404,), auth="required", params=(comment,),
                         description="One with replies stays as a placeholder."),
        },
        "/videos/{id}/reaction": {
            "put": op("put_reaction", "social", "Like or dislike", {200: ok("Reaction")},
                      (404, 429), auth="required", body="ReactionRequest", params=(video,),
                      description=throttled),
            "delete": op("delete_reaction", "social", "Take one's reaction back",
                         {200: ok("Reaction")}, (404, 429), auth="required", params=(video,),
                         description=throttled),
        },
        "/users/{id}/subscription": {
            "put": op("subscribe", "social", "Subscribe to a channel",
                      {200: ok("Subscription")}, (404, 422, 429), auth="required",
                      params=(user,),
                      description=f"422 `self_subscription`. {throttled}"),
            "delete": op("unsubscribe", "social", "Unsubscribe", {200: ok("Subscription")},
                         (404, 422, 429), auth="required", params=(user,),
                         description=throttled),
        },
        "/users/me/subscriptions": {"get": op(
            "my_subscriptions", "social", "The channels one follows, latest first",
            {200: ok("ChannelPage")}, (422,), auth="required", params=(LIMIT, CURSOR))},
        "/users/{id}/block": {
            "put": op("block", "social", "Block a user (hide their comments)",
                      {200: ok("Block")}, (404, 422), auth="required", params=(user,)),
            "delete": op("unblock", "social", "Unblock", {200: ok("Block")}, (404, 422),
                         auth="required", params=(user,)),
        },
        "/feed/global": {"get": op(
            "feed_global", "feeds", "Listed videos, newest first", {200: ok("VideoPage")},
            (422,), auth="optional", params=(LIMIT, CURSOR))},
        "/feed/following": {"get": op(
            "feed_following", "feeds", "Newest videos of one's subscriptions",
            {200: ok("VideoPage")}, (422,), auth="required", params=(LIMIT, CURSOR))},
        "/feed/trending": {"get": op(
            "feed_trending", "feeds", "Trending videos", {200: ok("VideoPage")}, (410, 422),
            auth="optional", params=(LIMIT, CURSOR),
            description="A ranking snapshot; a cursor outliving its snapshot answers 410 "
                        "`cursor_expired`: start again.")},
        "/search": {"get": op(
            "search", "feeds", "Search listed videos", {200: ok("VideoPage")}, (422,),
            auth="optional",
            params=({"name": "q", "in": "query", "required": True,
                     "description": "Words (\"phrases\", -not, or), the last one matched "
                                    "as a prefix while typed; or `#tag`",
                     "schema": {"type": "string", "minLength": 1, "maxLength": SEARCH_MAX}},
                    LIMIT, CURSOR))},
    }


def moderation_paths() -> dict[str, Schema]:
    def action(op_id: str, summary: str, what: str, result: str,
               body: str = "ActionReason") -> Schema:
        return op(op_id, "moderation", summary, {200: ok(result)}, (404, 409),
                  auth="required", body=body, params=(path_id(what),),
                  description="Moderators and admins (403 for others). 409 when already "
                              "done. Closes the target's open reports; logged.")

    return {
        "/reports": {"post": op(
            "create_report", "moderation", "Report a video, comment or user",
            {201: ok("Report", "Created")}, (404, 409, 429), auth="required",
            body="NewReport",
            description="404 when the reporter cannot see the target; 409 "
                        "`already_reported` while their report on it is open; 429 past "
                        "RATE_LIMIT_REPORT.")},
        "/moderation/reports": {"get": op(
            "moderation_reports", "moderation", "The report queue", {200: ok("QueuePage")},
            (422,), auth="required",
            params=(query("status", {"type": "string", "enum": ["open", "all"]},
                          "open (default) or all"), LIMIT, CURSOR),
            description="Moderators and admins.")},
        "/moderation/reports/{id}/dismiss": {"post": action(
            "moderation_dismiss_report", "Dismiss a report (and the others on its target)",
            "report", "DismissResult")},
        "/moderation/videos/{id}/remove": {"post": action(
            "moderation_remove_video", "Remove a video", "video", "ContentActionResult")},
        "/moderation/videos/{id}/restore": {"post": action(
            "moderation_restore_video", "Restore a removed video", "video",
            "ContentActionResult")},
        "/moderation/comments/{id}/remove": {"post": action(
            "moderation_remove_comment", "Remove a comment", "comment",
            "ContentActionResult")},
        "/moderation/comments/{id}/restore": {"post": action(
            "moderation_restore_comment", "Restore a removed comment", "comment",
            "ContentActionResult")},
        "/moderation/users/{id}/ban": {"post": action(
            "moderation_ban", "Ban a user, for good or until a time", "user", "BanResult",
            "BanRequest")},
        "/moderation/users/{id}/unban": {"post": action(
            "moderation_unban", "Lift a ban", "user", "BanResult")},
        "/admin/users/{id}/role": {"put": op(
            "admin_set_role", "moderation", "Set a user's role", {200: ok("RoleResult")},
            (404,), auth="required", body="RoleRequest", params=(path_id("user"),),
            description="Admins only.")},
        "/moderation/log": {"get": op(
            "moderation_log", "moderation", "The audit log, newest first",
            {200: ok("LogPage")}, (422,), auth="required", params=(LIMIT, NUMERIC_CURSOR),
            description="Moderators and admins.")},
    }


def rooms_paths() -> dict[str, Schema]:
    room = path_id("room")
    join = op("join_room", "rooms", "A LiveKit access token for the room",
              {200: ok("JoinToken")}, (401, 403, 404, 409, 415, 422), auth="optional",
              params=(room,),
              description="Signed-in users get `user-<id>` with their profile's name and may "
                          "publish camera, microphone and screen. Without a token, 401 unless "
                          "ROOMS_GUESTS is on: then a guest (`guest-...`, the body's `name`) "
                          "may only subscribe and chat. 409 `room_ended`, or `room_full` "
                          "when max_participants are in. The token is valid "
                          "LIVEKIT_TOKEN_TTL seconds.")
    join["requestBody"] = {"required": False, "content": {JSON: {"schema": ref("JoinRequest")}}}
    for status in BODY_ERRORS:
        join["responses"][str(status)] = {"$ref": f"#/components/responses/{status}"}
    join["responses"] = dict(sorted(join["responses"].items()))
    return {
        "/rooms": {
            "get": op("rooms", "rooms", "Active rooms, newest first", {200: ok("RoomPage")},
                      (422,), params=(LIMIT, NUMERIC_CURSOR)),
            "post": op("create_room", "rooms", "Create a room", {201: ok("Room", "Created")},
                       (429,), auth="required", body="NewRoom",
                       description="Also created in LiveKit when LIVEKIT_URL is set. 429 past "
                                   "RATE_LIMIT_UPLOAD per account and address."),
        },
        "/rooms/{id}": {"get": op(
            "room", "rooms", "A room, with who is in it now", {200: ok("RoomDetail")},
            (404,), params=(room,))},
        "/rooms/{id}/end": {"post": op(
            "end_room", "rooms", "End a room", {200: ok("Room")}, (404, 409),
            auth="required", params=(room,),
            description="Its owner, moderators and admins (403 for others). Disconnects "
                        "everyone in LiveKit; 409 `room_ended` when already ended.")},
        "/rooms/{id}/join": {"post": join},
        "/rooms/{id}/messages": {"get": op(
            "room_messages", "rooms", "A room's chat history, newest first",
            {200: ok("RoomMessagePage")}, (404, 422),
            params=(room, query("before", {"type": "integer", "minimum": 1, "maximum": ID_MAX},
                                "The `next` of the page before"),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": PAGE_MAX,
                                    "default": CHAT_PAGE_DEFAULT}, "Messages per page")),
            description="Live messages come over the WebSocket `/rooms/{id}/chat`, which "
                        "this document does not describe.")},
        "/livekit/webhook": {"post": {
            "operationId": "livekit_webhook", "tags": ["rooms"],
            "summary": "LiveKit's webhook: who joined and left, rooms started and finished",
            "description": "Sent by the LiveKit server, never by clients. `Authorization` "
                           "carries LiveKit's JWT (signed with the API secret, the body's "
                           "SHA-256 in its `sha256` claim). Unsigned, tampered or stale "
                           "(created_at more than 10 minutes away) events are 401 "
                           "`invalid_webhook`; events of unknown rooms are ignored (200). "
                           f"Bodies over {WEBHOOK_MAX_BODY} bytes are 413.",
            "security": [{"livekitWebhook": []}],
            "requestBody": {"required": True, "content": {
                "application/webhook+json": {"schema": {"type": "object"}}}},
            "responses": {"200": ok("WebhookAck"),
                          **{str(status): {"$ref": f"#/components/responses/{status}"}
                             for status in (401, 413, 503)}}}},
    }


def ops_paths() -> dict[str, Schema]:
    return {
        "/healthz": {"get": {
            "operationId": "health", "tags": ["ops"],
            "summary": "PostgreSQL and Redis answer",
            "responses": {"200": ok("Health"),
                          "503": {"$ref": "#/components/responses/503"}}}},
        "/metrics": {"get": {
            "operationId": "metrics", "tags": ["ops"],
            "summary": "Prometheus metrics (text exposition format)",
            "description": "With METRICS_TOKEN set (and no METRICS_PORT) it needs "
                           "`Authorization: Bearer <METRICS_TOKEN>`; with METRICS_PORT set it "
                           "is served on that port only; with neither it is 404.",
            "security": [{"metricsToken": []}],
            "responses": {"200": {"description": "The metrics", "content": {
                "text/plain": {"schema": TEXT}}},
                **{str(status): {"$ref": f"#/components/responses/{status}"}
                   for status in (401, 404, 503)}}}},
        "/openapi.json": {"get": {
            "operationId": "openapi", "tags": ["ops"], "summary": "This document",
            "responses": {"200": json_response("OpenAPI 3.1", {
                "type": "object", "required": ["openapi", "info", "paths"]})}}},
    }


def build_document(config: Config) -> dict[str, Any]:
    paths = {**ops_paths(), **accounts_paths(), **catalog_paths(config), **tus_paths(config),
             **social_paths(), **moderation_paths(), **rooms_paths()}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Tubelet API",
            "version": "1",
            "description": (
                "The JSON API of a Tubelet server. Every error has one shape: "
                "`{\"error\": {\"code\", \"message\"}}`, with a stable `code`. Send JSON "
                "bodies as application/json. Sign in with POST /auth/login and send the "
                "access token as `Authorization: Bearer <token>`. Lists are pages of "
                "`items` with a `next_cursor`. Live viewer counts come over a WebSocket at "
                "`/videos/{id}/active-viewers`, and a room's chat at `/rooms/{id}/chat`, "
                "which this document does not describe."),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [{"name": name} for name in ("accounts", "videos", "uploads", "social",
                                            "feeds", "moderation", "rooms", "ops")],
        "paths": paths,
        "components": {
            "schemas": schemas(config),
            "responses": responses_component(),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                               "description": "The access token from /auth/login"},
                "metricsToken": {"type": "http", "scheme": "bearer",
                                 "description": "METRICS_TOKEN, for /metrics alone"},
                "livekitWebhook": {"type": "apiKey", "in": "header", "name": "Authorization",
                                   "description": "LiveKit's signed webhook token"},
            },
        },
    }


DOCUMENT_KEY = web.AppKey("openapi_document", bytes)
routes = web.RouteTableDef()


@routes.get("/openapi.json", name="openapi")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[DOCUMENT_KEY], content_type=JSON,
                        headers={"Cache-Control": "no-cache"})


def setup(app: web.Application) -> None:
    app[DOCUMENT_KEY] = json.dumps(build_document(app[CONFIG_KEY]),
                                   separators=(",", ":")).encode()
    app.add_routes(routes)
