"""Identifiers as they appear in URLs and messages. Pure functions."""

from __future__ import annotations


def parse_id(raw: str) -> int | None:
    """A row id in its one spelling: ASCII digits, no sign, no leading zero."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18 or raw[0] == "0":
        return None
    return int(raw)


# Videos are the ids most often read from paths and pub/sub messages.
parse_video_id = parse_id
