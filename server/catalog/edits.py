"""What PATCH /videos/{id} may change, and how tags are spelled. Pure.

A tag is stored normalised, so `#Cats`, ` cats` and `CATS` are one tag: outer
spaces and leading '#' are dropped, the text is NFKC-normalised (full-width
letters become plain ones) and lower-cased; what remains must be 1-30 letters,
digits (any script, with their combining marks), '-' or '_'.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from server.core.errors import Invalid
from server.core.validation import clean_text, string_field

TITLE_MAX = 200
DESCRIPTION_MAX = 5000
TAG_MAX = 30
TAGS_MAX = 15
VISIBILITIES = ("public", "unlisted", "private")
EDITABLE = ("title", "description", "visibility", "tags")


@dataclass(frozen=True, slots=True)
class VideoEdit:
    """The fields to change; None leaves a field as it is."""

    title: str | None = None
    description: str | None = None
    visibility: str | None = None
    tags: list[str] | None = None

    def params(self) -> dict[str, Any]:
        return {"title": self.title, "description": self.description,
                "visibility": self.visibility, "tags": self.tags}


def _tag_char(c: str) -> bool:
    return c.isalnum() or c in "-_" or unicodedata.category(c).startswith("M")


def normalise_tag(raw: str) -> str | None:
    """The stored form of a tag, or None if it cannot be one."""
    tag = unicodedata.normalize("NFKC", raw.strip()).lstrip("#").strip().lower()
    if not 1 <= len(tag) <= TAG_MAX or not all(_tag_char(c) for c in tag):
        return None
    # A tag of marks alone is no word.
    if unicodedata.category(tag[0]).startswith("M"):
        return None
    return tag


def normalise_tags(value: object) -> list[str]:
    """A request's `tags`: a list of at most TAGS_MAX tags, normalised, first spelling first."""
    if not isinstance(value, list):
        raise Invalid("'tags' must be a list of strings")
    if len(value) > TAGS_MAX:
        raise Invalid(f"'tags' may hold at most {TAGS_MAX} tags")
    tags: list[str] = []
    for raw in value:
        if not isinstance(raw, str):
            raise Invalid("'tags' must be a list of strings")
        tag = normalise_tag(raw) if len(raw) <= 4 * TAG_MAX else None
        if tag is None:
            shown = raw if len(raw) <= 40 else raw[:40] + "..."
            raise Invalid(f"Tag {shown!r} must be 1-{TAG_MAX} letters, digits, '-' or '_'")
        if tag not in tags:
            tags.append(tag)
    return tags


def _text(body: dict[str, Any], name: str, max_len: int, *, required: bool) -> str | None:
    """A text field when present: a string of valid Unicode, trimmed, without control
    characters (line breaks and tabs allowed in a description)."""
    if name not in body:
        return None
    if body[name] is None:
        raise Invalid(f"'{name}' must be a string")
    raw = string_field(body, name, max_len=4 * max_len)
    value = clean_text(raw, name, max_len, multiline=not required)
    if required and not value:
        raise Invalid(f"'{name}' must not be empty")
    return value


def parse_edit(body: dict[str, Any]) -> VideoEdit:
    """The edit a JSON object asks for; Invalid (422) for anything else."""
    if not any(name in body for name in EDITABLE):
        raise Invalid("Send at least one of: " + ", ".join(EDITABLE))
    visibility = body.get("visibility")
    if "visibility" in body and visibility not in VISIBILITIES:
        raise Invalid("'visibility' must be one of: " + ", ".join(VISIBILITIES))
    return VideoEdit(
        title=_text(body, "title", TITLE_MAX, required=True),
        description=_text(body, "description", DESCRIPTION_MAX, required=False),
        visibility=visibility,
        tags=normalise_tags(body["tags"]) if "tags" in body else None,
    )
