"""Pure decisions of the social layer: comment text, cursors, search queries, choices.

Tested by tables in tests/test_comments.py and tests/test_search.py, without a server.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from server.catalog.edits import normalise_tag as stored_tag
from server.core.errors import ApiError, Invalid
from server.core.validation import string_field

# Top-level comments carry this many of their replies, oldest first.
REPLY_PREVIEW = 3
SORTS = ("newest", "top")
REACTIONS = ("like", "dislike")
SEARCH_MAX_LENGTH = 200
# A word being typed matches as a prefix once it is this long; a single letter
# would match most of the index.
PREFIX_MIN_LENGTH = 2
CURSOR_MAX_LENGTH = 200
# Words as the search parser sees them: letters and digits (no '_', which
# PostgreSQL's parser splits on).
WORD_RE = re.compile(r"[^\W_]+")
TRAILING_WORD_RE = re.compile(r"[^\W_]+$")
KEEP_CONTROLS = frozenset("\n\t")


def clean_comment(raw: str, max_length: int) -> str:
    """A comment body as stored: line ends as \\n, control characters other than
    newline and tab removed, outer whitespace stripped, 1..max_length characters.

    `raw` comes from string_field, so it holds no NUL and no lone surrogate.
    """
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(ch for ch in text
                   if ch in KEEP_CONTROLS or unicodedata.category(ch) != "Cc").strip()
    if not text:
        raise Invalid("'body' must not be empty")
    if len(text) > max_length:
        raise Invalid(f"'body' must be at most {max_length} characters")
    return text


def parse_sort(raw: str | None) -> str:
    if raw is None or raw == "":
        return "newest"
    if raw not in SORTS:
        raise Invalid("'sort' must be 'newest' or 'top'")
    return raw


def parse_kind(value: Any) -> str:
    if not isinstance(value, str) or value not in REACTIONS:
        raise Invalid("'kind' must be 'like' or 'dislike'")
    return value


def reaction_delta(old: str | None, new: str | None) -> tuple[int, int]:
    """(likes, dislikes) to add to a video's counts when a user's reaction goes old -> new."""
    likes = (new == "like") - (old == "like")
    dislikes = (new == "dislike") - (old == "dislike")
    return likes, dislikes


# --- cursors ------------------------------------------------------------------

class CursorExpired(ApiError):
    def __init__(self) -> None:
        super().__init__(410, "cursor_expired",
                         "This ranking has been replaced; start again without a cursor")


def encode_cursor(*parts: int | float | str) -> str:
    """An opaque page cursor holding a position in a list."""
    raw = json.dumps(list(parts), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(raw: str | None, *shape: type) -> tuple[Any, ...] | None:
    """The parts of a cursor made by encode_cursor with parts of these types; None
    when there is no cursor; a 422 for anything else."""
    if raw is None or raw == "":
        return None
    bad = Invalid("'cursor' is not a cursor this list gave out", "invalid_cursor")
    if len(raw) > CURSOR_MAX_LENGTH or not raw.isascii():
        raise bad
    try:
        parts = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        raise bad from None
    if not isinstance(parts, list) or len(parts) != len(shape):
        raise bad
    out: list[Any] = []
    for part, kind in zip(parts, shape, strict=True):
        if kind is int and type(part) is int and 0 <= part < 2**63:
            out.append(part)
        elif kind is float and type(part) in (int, float) and part == part \
                and abs(part) != float("inf"):
            out.append(float(part))
        elif kind is datetime and isinstance(part, str):
            try:
                moment = datetime.fromisoformat(part)
            except ValueError:
                raise bad from None
            if moment.tzinfo is None:
                raise bad
            try:
                # PostgreSQL takes offsets up to 15:59 only; UTC is what cursors hold.
                out.append(moment.astimezone(UTC))
            except OverflowError:
                raise bad from None
        else:
            raise bad
    return tuple(out)


# --- search -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TextSearch:
    """A full-text query: `text` parsed websearch-style; `prefix` (`word:*`) the last
    word as typed so far, to match with `head`, the text before it."""

    text: str
    head: str
    prefix: str | None


@dataclass(frozen=True, slots=True)
class TagSearch:
    tag: str


def check_query_text(raw: str | None, name: str = "q") -> str:
    value = string_field({name: raw}, name, max_len=SEARCH_MAX_LENGTH).strip()
    if not value:
        raise Invalid(f"'{name}' is required")
    return value


def parse_search(raw: str | None) -> TextSearch | TagSearch:
    """What GET /search?q= asks for: a tag (`#tag`) or a text query."""
    q = check_query_text(raw)
    if q.startswith("#"):
        # `#tag` lists a tag, in the form tags are stored in; anything after '#' that
        # cannot be a tag ("#two words") is searched as text.
        if not q.lstrip("#").strip():
            raise Invalid("'#' must be followed by a tag")
        tag = stored_tag(q)
        if tag is not None:
            return TagSearch(tag)
    match = TRAILING_WORD_RE.search(q)
    # A space after the last word: it is finished, and matches whole.
    assert raw is not None
    finished = raw[-1].isspace()
    if finished or match is None or len(match.group()) < PREFIX_MIN_LENGTH:
        return TextSearch(q, q, None)
    before = q[:match.start()]
    # A word inside an unclosed phrase or after '-' (a negation) is no prefix.
    if before.count('"') % 2 == 1 or before.endswith("-"):
        return TextSearch(q, q, None)
    return TextSearch(q, before, match.group().lower() + ":*")
