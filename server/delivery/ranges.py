"""HTTP range requests and conditional requests (RFC 9110 sections 13-15), as pure functions.

Nothing here performs I/O: callers pass header values in and get plans back, then do
the actual file reads and response writing themselves.
"""

from __future__ import annotations

import calendar
import enum
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# More specs than this in one Range header and the header is ignored (nginx's max_ranges):
# parsing and serving thousands of tiny parts is a cheap denial-of-service lever.
MAX_RANGE_SPECS = 100

# Ranges separated by fewer bytes than a multipart part header costs are merged into one.
COALESCE_GAP = 80

_OWS = " \t"


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"invalid byte range {self.start}-{self.end}")

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def unsatisfied_content_range(size: int) -> str:
    """Content-Range value for a 416 response."""
    return f"bytes */{size}"


class RangeOutcome(enum.Enum):
    FULL = "full"
    PARTIAL = "partial"
    UNSATISFIABLE = "unsatisfiable"


@dataclass(frozen=True, slots=True)
class RangePlan:
    outcome: RangeOutcome
    ranges: tuple[ByteRange, ...] = ()


_FULL = RangePlan(RangeOutcome.FULL)
_UNSATISFIABLE = RangePlan(RangeOutcome.UNSATISFIABLE)

# "first-last", "first-" or "-suffix"; whitespace around the dash is tolerated as nginx does.
_SPEC_RE = re.compile(r"([0-9]+)[ \t]*-[ \t]*([0-9]*)|-[ \t]*([0-9]+)")


def _digits_key(digits: str) -> tuple[int, str]:
    """Orders decimal strings by value without int(), which refuses very long inputs."""
    digits = digits.lstrip("0") or "0"
    return len(digits), digits


def _number(digits: str, cap: int) -> int:
    """Value of a decimal string, limited to cap; huge inputs never reach int()."""
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(cap)):
        return cap
    return min(int(digits), cap)


def _coalesce(ranges: Sequence[ByteRange]) -> tuple[ByteRange, ...]:
    ordered = sorted(ranges, key=lambda r: (r.start, r.end))
    merged = [ordered[0]]
    for r in ordered[1:]:
        last = merged[-1]
        if r.start - last.end - 1 < COALESCE_GAP:
            merged[-1] = ByteRange(last.start, max(last.end, r.end))
        else:
            merged.append(r)
    # Request order is preferred (RFC 9110 14.2) unless merging already reordered things.
    if len(merged) == len(ranges):
        return tuple(ranges)
    return tuple(merged)


def plan_ranges(header: str | None, size: int, *, max_specs: int = MAX_RANGE_SPECS) -> RangePlan:
    """Decide how to answer a Range header for a representation of `size` bytes."""
    if size < 0:
        raise ValueError("size must not be negative")
    if not header:
        return _FULL
    unit, eq, range_set = header.strip(_OWS).partition("=")
    if not eq or not unit.isascii() or unit.lower() != "bytes":
        return _FULL

    specs = [s for s in (part.strip(_OWS) for part in range_set.split(",")) if s]
    if len(specs) > max_specs:
        return _FULL
    if not specs:
        return _UNSATISFIABLE

    ranges: list[ByteRange] = []
    for spec in specs:
        m = _SPEC_RE.fullmatch(spec)
        if m is None:
            return _UNSATISFIABLE
        first, last, suffix = m.groups()
        if suffix is not None:
            if _digits_key(suffix) == (1, "0"):
                continue  # "-0" is valid but selects nothing; alone, the set is unsatisfiable
            if size > 0:
                ranges.append(ByteRange(size - _number(suffix, size), size - 1))
            continue
        if last and _digits_key(last) < _digits_key(first):
            continue  # invalid, and selects nothing (as nginx): others in the set still count
        start = _number(first, size)
        if start >= size:
            continue
        end = _number(last, size - 1) if last else size - 1
        ranges.append(ByteRange(start, end))

    if not ranges:
        return _UNSATISFIABLE
    return RangePlan(RangeOutcome.PARTIAL, _coalesce(ranges))


# --- conditional requests -------------------------------------------------------------


class Precondition(enum.Enum):
    PROCEED = "proceed"
    NOT_MODIFIED = "not_modified"
    PRECONDITION_FAILED = "precondition_failed"


@dataclass(frozen=True, slots=True)
class Validators:
    etag: str  # strong entity-tag including quotes
    last_modified: int  # unix seconds


@dataclass(frozen=True, slots=True)
class Conditions:
    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_unmodified_since: str | None = None
    if_range: str | None = None


# etagc = %x21 / %x23-7E / obs-text; decoded header text may carry any char above 0x7F.
_ETAG_RE = re.compile(r'(W/)?"([\x21\x23-\x7e\x80-\U0010ffff]*)"')


@dataclass(frozen=True, slots=True)
class _Tag:
    weak: bool
    opaque: str


def _parse_etag(value: str) -> _Tag | None:
    m = _ETAG_RE.fullmatch(value.strip(_OWS))
    return None if m is None else _Tag(m[1] is not None, m[2])


def _parse_etag_list(value: str) -> tuple[_Tag, ...] | None:
    """Entity-tags of a comma list; None when the list is malformed."""
    tags: list[_Tag] = []
    pos, n = 0, len(value)
    while True:
        while pos < n and value[pos] in " \t,":  # OWS and empty list elements
            pos += 1
        if pos == n:
            return tuple(tags)
        m = _ETAG_RE.match(value, pos)
        if m is None:
            return None
        tags.append(_Tag(m[1] is not None, m[2]))
        pos = m.end()
        while pos < n and value[pos] in _OWS:
            pos += 1
        if pos < n and value[pos] != ",":
            return None


def _own_tag(v: Validators) -> _Tag:
    return _parse_etag(v.etag) or _Tag(False, v.etag)


def _strong_match(a: _Tag, b: _Tag) -> bool:
    return not a.weak and not b.weak and a.opaque == b.opaque


def _is_star(value: str) -> bool:
    return value.strip(_OWS) == "*"


def _if_match_passes(value: str, v: Validators) -> bool:
    if _is_star(value):
        return True
    own = _own_tag(v)
    return any(_strong_match(t, own) for t in _parse_etag_list(value) or ())


def _if_none_match_matches(value: str, v: Validators) -> bool:
    if _is_star(value):
        return True
    own = _own_tag(v)
    return any(t.opaque == own.opaque for t in _parse_etag_list(value) or ())


def evaluate_preconditions(method: str, cond: Conditions, v: Validators) -> Precondition:
    """RFC 9110 13.2.2 evaluation order; the caller maps the result to 412/304."""
    if cond.if_match is not None:
        if not _if_match_passes(cond.if_match, v):
            return Precondition.PRECONDITION_FAILED
    elif cond.if_unmodified_since is not None:
        date = parse_http_date(cond.if_unmodified_since)
        if date is not None and v.last_modified > date:
            return Precondition.PRECONDITION_FAILED

    safe = method in ("GET", "HEAD")
    if cond.if_none_match is not None:
        if _if_none_match_matches(cond.if_none_match, v):
            return Precondition.NOT_MODIFIED if safe else Precondition.PRECONDITION_FAILED
    elif safe and cond.if_modified_since is not None:
        date = parse_http_date(cond.if_modified_since)
        if date is not None and v.last_modified <= date:
            return Precondition.NOT_MODIFIED
    return Precondition.PROCEED


def range_applies(method: str, cond: Conditions, v: Validators) -> bool:
    """Whether Range should be honoured: GET only, and If-Range (if any) must hold."""
    if method != "GET":
        return False
    if cond.if_range is None:
        return True
    value = cond.if_range.strip(_OWS)
    if value.startswith(('"', "W/")):
        tag = _parse_etag(value)
        return tag is not None and _strong_match(tag, _own_tag(v))
    return parse_http_date(value) == v.last_modified


# --- HTTP-date ------------------------------------------------------------------------

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

_DAY = "|".join(_DAYS)
_MON = "|".join(_MONTHS)
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
_IMF_RE = re.compile(rf"(?:{_DAY}), ([0-9]{{2}}) ({_MON}) ([0-9]{{4}}) {_TIME} GMT")
_RFC850_RE = re.compile(
    rf"(?:{'|'.join(_LONG_DAYS)}), ([0-9]{{2}})-({_MON})-([0-9]{{2}}) {_TIME} GMT"
)
_ASCTIME_RE = re.compile(rf"(?:{_DAY}) ({_MON}) ([0-9]{{2}}| [0-9]) {_TIME} ([0-9]{{4}})")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _timestamp(year: int, mon: str, day: str, hh: str, mm: str, ss: str) -> int | None:
    month = _MONTHS.index(mon) + 1
    d, h, m, s = int(day), int(hh), int(mm), int(ss)
    if year < 1:
        return None  # outside the proleptic calendar timegm can express
    days_in_month = 29 if month == 2 and calendar.isleap(year) else _MONTH_DAYS[month - 1]
    if not (1 <= d <= days_in_month and h <= 23 and m <= 59 and s <= 60):  # 60: leap second
        return None
    return calendar.timegm((year, month, d, h, m, s))


def _two_digit_year(yy: int, now: int) -> int:
    # RFC 9110 5.6.7: a year more than 50 years ahead is read as the most recent past one.
    current = time.gmtime(now).tm_year
    year = current - current % 100 + yy
    return year - 100 if year > current + 50 else year


def parse_http_date(value: str, *, now: int | None = None) -> int | None:
    """Unix seconds for any of the three HTTP-date forms, or None if the value is invalid.

    `now` only matters for the obsolete RFC 850 form, whose two-digit year is resolved
    relative to it (defaults to the current time).
    """
    value = value.strip(_OWS)
    if m := _IMF_RE.fullmatch(value):
        day, mon, year, hh, mm, ss = m.groups()
        return _timestamp(int(year), mon, day, hh, mm, ss)
    if m := _RFC850_RE.fullmatch(value):
        day, mon, yy, hh, mm, ss = m.groups()
        year = _two_digit_year(int(yy), int(time.time()) if now is None else now)
        return _timestamp(year, mon, day, hh, mm, ss)
    if m := _ASCTIME_RE.fullmatch(value):
        mon, day, hh, mm, ss, year = m.groups()
        return _timestamp(int(year), mon, day.strip(), hh, mm, ss)
    return None


def format_http_date(ts: int) -> str:
    """IMF-fixdate, built by hand so the output never depends on the locale."""
    t = _EPOCH + timedelta(seconds=ts)
    return (
        f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year:04d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} GMT"
    )


# --- multipart/byteranges -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MultipartLayout:
    parts: tuple[tuple[bytes, ByteRange], ...]  # (part header written before the body, range)
    closing: bytes
    content_length: int
    content_type: str


# RFC 2046 bchars; the last character may not be a space.
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def multipart_layout(
    ranges: Sequence[ByteRange], size: int, content_type: str, boundary: str
) -> MultipartLayout:
    """Part headers, closing delimiter and exact length of a multipart/byteranges body."""
    if not ranges:
        raise ValueError("multipart/byteranges needs at least one range")
    if _BOUNDARY_RE.fullmatch(boundary) is None:
        raise ValueError(f"invalid multipart boundary {boundary!r}")
    if not content_type.isascii() or any(c in content_type for c in "\r\n\0"):
        raise ValueError(f"invalid part content type {content_type!r}")

    parts: list[tuple[bytes, ByteRange]] = []
    total = 0
    for i, r in enumerate(ranges):
        if r.end >= size:
            raise ValueError(f"range {r.start}-{r.end} exceeds size {size}")
        lines = [f"--{boundary}"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Range: {r.content_range(size)}")
        # The CRLF before each later delimiter belongs to the delimiter (RFC 2046 5.1.1).
        head = ("\r\n" if i else "") + "\r\n".join(lines) + "\r\n\r\n"
        head_bytes = head.encode("ascii")
        parts.append((head_bytes, r))
        total += len(head_bytes) + r.length
    closing = f"\r\n--{boundary}--\r\n".encode("ascii")
    total += len(closing)

    param = boundary if _TOKEN_RE.fullmatch(boundary) else f'"{boundary}"'
    return MultipartLayout(
        parts=tuple(parts),
        closing=closing,
        content_length=total,
        content_type=f"multipart/byteranges; boundary={param}",
    )


# The form players send, "bytes=first-" or "bytes=first-last"; plan_ranges has the rest.
_SIMPLE_RANGE_RE = re.compile(r"bytes=([0-9]{1,15})-([0-9]{0,15})")


def plain_span(range_header: str | None, size: int) -> tuple[int, int, bool] | None:
    """(first, last, partial) for a whole-file GET or one plain satisfiable range.

    None for anything else (empty files, suffix ranges, lists, bad syntax), which
    plan_ranges answers; where both answer, they agree (a test checks).
    """
    if range_header is None:
        return (0, size - 1, False) if size else None
    m = _SIMPLE_RANGE_RE.fullmatch(range_header)
    if m is None:
        return None
    first, last = int(m[1]), m[2]
    end = min(int(last), size - 1) if last else size - 1
    if first > end:
        return None
    return first, end, True
