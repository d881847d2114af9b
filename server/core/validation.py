"""Reading and checking JSON request bodies."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from aiohttp import web

from .errors import ApiError, Invalid

# Direction overrides and isolates make a name display as something it is not.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
EMAIL_RE = re.compile(r"^[^@\s\x00-\x1f]{1,64}@[^@\s\x00-\x1f]+\.[^@\s\x00-\x1f]+$")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400/413/415/422 ApiError.

    Only an application/json body is read: a cross-site form or a fetch without a
    CORS preflight can send text/plain, never JSON.
    """
    if request.content_type.lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the body as application/json")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "payload_too_large", "Request body is too large") from None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8, bad JSON, and integers past Python's digit limit.
        raise ApiError(400, "invalid_json", "Request body must be valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(422, "validation_error", "Request body must be a JSON object")
    return body


def invalid(message: str) -> ApiError:
    return Invalid(message)


def string_field(body: dict[str, Any], name: str, *, required: bool = True,
                 default: str = "", max_len: int = 10_000) -> str:
    value = body.get(name)
    if value is None:
        if required:
            raise invalid(f"'{name}' is required")
        return default
    if not isinstance(value, str):
        raise invalid(f"'{name}' must be a string")
    if len(value) > max_len:
        raise invalid(f"'{name}' must be at most {max_len} characters")
    if "\x00" in value:
        raise invalid(f"'{name}' must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, from a "\ud800" escape
            raise invalid(f"'{name}' must be valid Unicode text") from None
    return value


def normalise_email(value: str) -> str:
    email = value.strip()
    if len(email) > 254 or not EMAIL_RE.match(email):
        raise invalid("'email' must be a valid email address")
    return email


def check_password(value: str) -> bytes:
    """A new password from string_field (so already free of NULs and lone surrogates)."""
    if len(value) < 8:
        raise invalid("'password' must be at least 8 characters")
    encoded = value.encode("utf-8")
    if len(encoded) > 72:
        raise invalid("'password' must be at most 72 bytes (bcrypt's limit)")
    return encoded


def positive_int(raw: str | None, name: str, *, default: int | None = None,
                 maximum: int | None = None) -> int | None:
    """Parse a query-string integer (>= 1), raising a 422 on garbage."""
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise invalid(f"'{name}' must be a positive integer")
    value = int(raw)
    if value < 1:
        raise invalid(f"'{name}' must be a positive integer")
    if maximum is not None and value > maximum:
        raise invalid(f"'{name}' must be at most {maximum}")
    return value


def clean_text(value: str, name: str, max_len: int, *, multiline: bool) -> str:
    """User-written text: NFC, CRLF as LF, trimmed, no control characters (a line
    break and a tab only where `multiline`), at most `max_len` characters."""
    text = unicodedata.normalize("NFC", value.replace("\r\n", "\n")).strip()
    for char in text:
        category = unicodedata.category(char)
        if multiline and char in "\n\t":
            continue
        if category in ("Cc", "Zl", "Zp") or char in BIDI_CONTROLS:
            raise Invalid(f"'{name}' must not contain control characters")
    if len(text) > max_len:
        raise Invalid(f"'{name}' must be at most {max_len} characters")
    return text
