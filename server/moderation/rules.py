"""What a report or a moderation request must hold, and the queue's cursors. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from server.accounts.policy import Role
from server.core.ids import parse_id
from server.core.validation import invalid, string_field

TARGET_TYPES = ("video", "comment", "user")
REPORT_REASONS = ("spam", "harassment", "hate", "violence", "sexual", "copyright",
                  "misinformation", "other")
NOTE_MAX = 1000
ACTION_REASON_MAX = 500
# How much of a comment the queue and the log show.
EXCERPT = 200
# Ids as they appear in JSON bodies: positive and within bigint.
MAX_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class ReportInput:
    target_type: str
    target_id: int
    reason: str
    note: str


def report_input(body: dict[str, Any]) -> ReportInput:
    """A report's fields from a JSON body, or a 422."""
    target_type = string_field(body, "target_type", max_len=20)
    if target_type not in TARGET_TYPES:
        raise invalid(f"'target_type' must be one of: {', '.join(TARGET_TYPES)}")
    target_id = body_id(body, "target_id")
    reason = string_field(body, "reason", max_len=50)
    if reason not in REPORT_REASONS:
        raise invalid(f"'reason' must be one of: {', '.join(REPORT_REASONS)}")
    note = string_field(body, "note", required=False, max_len=NOTE_MAX).strip()
    return ReportInput(target_type, target_id, reason, note)


def body_id(body: dict[str, Any], name: str) -> int:
    """A row id from a JSON body: a positive integer (not a bool, not a float)."""
    value = body.get(name)
    if value is None:
        raise invalid(f"'{name}' is required")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise invalid(f"'{name}' must be a positive integer")
    return value


def action_reason(body: dict[str, Any], *, required: bool = True) -> str:
    """Why a moderator acts: 1..ACTION_REASON_MAX characters after trimming."""
    reason = string_field(body, "reason", required=required,
                          max_len=ACTION_REASON_MAX).strip()
    if required and not reason:
        raise invalid("'reason' must not be empty")
    return reason


def ban_until(body: dict[str, Any], now: datetime) -> datetime | None:
    """The end of a ban: an ISO-8601 datetime after `now`, or None (permanent).

    A datetime without an offset is taken as UTC; the result is in UTC.
    """
    raw = body.get("until")
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > 64:
        raise invalid("'until' must be an ISO-8601 date and time")
    try:
        until = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise invalid("'until' must be an ISO-8601 date and time") from None
    if until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    try:
        until = until.astimezone(UTC)
    except OverflowError:  # past the year 9999 in UTC
        raise invalid("'until' is too far away; leave it out for a ban without end") from None
    if until <= now:
        raise invalid("'until' must be in the future")
    return until


def role_input(body: dict[str, Any]) -> Role:
    raw = string_field(body, "role", max_len=20)
    try:
        return Role(raw)
    except ValueError:
        raise invalid(f"'role' must be one of: {', '.join(r.value for r in Role)}") from None


def queue_status(raw: str | None) -> bool:
    """`?status=`: whether the queue shows every report (`all`) or open ones (`open`)."""
    if raw is None or raw == "" or raw == "open":
        return False
    if raw == "all":
        return True
    raise invalid("'status' must be 'open' or 'all'")


def queue_cursor(rank: int, report_id: int) -> str:
    """Where the next page of the queue starts: after this report, in this group."""
    return f"{'o' if rank == 0 else 'r'}{report_id}"


def parse_queue_cursor(raw: str | None) -> tuple[int, int] | None:
    """(rank, id) from queue_cursor, None for no cursor, or a 422."""
    if raw is None or raw == "":
        return None
    rank = {"o": 0, "r": 1}.get(raw[:1])
    report_id = parse_id(raw[1:])
    if rank is None or report_id is None:
        raise invalid("'cursor' is not a cursor this list gave out")
    return rank, report_id
