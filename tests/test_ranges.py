"""Tests for server.ranges: Range parsing, conditional requests, HTTP-dates, multipart layout."""

from __future__ import annotations

import calendar
import dataclasses

import pytest

from server.delivery.ranges import (
    COALESCE_GAP,
    MAX_RANGE_SPECS,
    ByteRange,
    Conditions,
    MultipartLayout,
    Precondition,
    RangeOutcome,
    RangePlan,
    Validators,
    evaluate_preconditions,
    format_http_date,
    multipart_layout,
    parse_http_date,
    plan_ranges,
    range_applies,
    unsatisfied_content_range,
)

FULL = "full"
UNSAT = "416"
HUGE = "9" * 5000  # longer than int()'s default digit limit


def _expected(expected: str | list[tuple[int, int]]) -> RangePlan:
    if expected == FULL:
        return RangePlan(RangeOutcome.FULL)
    if expected == UNSAT:
        return RangePlan(RangeOutcome.UNSATISFIABLE)
    return RangePlan(RangeOutcome.PARTIAL, tuple(ByteRange(s, e) for s, e in expected))


# --- ByteRange ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "length", "content_range"),
    [
        (0, 0, 1, "bytes 0-0/1000"),
        (0, 99, 100, "bytes 0-99/1000"),
        (500, 999, 500, "bytes 500-999/1000"),
        (999, 999, 1, "bytes 999-999/1000"),
    ],
)
def test_byte_range(start: int, end: int, length: int, content_range: str) -> None:
    r = ByteRange(start, end)
    assert r.length == length
    assert r.content_range(1000) == content_range


@pytest.mark.parametrize(("start", "end"), [(-1, 5), (5, 4), (-3, -1)])
def test_byte_range_rejects_invalid(start: int, end: int) -> None:
    with pytest.raises(ValueError):
        ByteRange(start, end)


def test_byte_range_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ByteRange(0, 1).start = 5  # type: ignore[misc]


def test_unsatisfied_content_range() -> None:
    assert unsatisfied_content_range(10000) == "bytes */10000"


# --- plan_ranges ----------------------------------------------------------------------

RFC9110_CASES = [
    # RFC 9110 14.1.2 examples for a 10000-byte representation.
    ("bytes=0-499", 10000, [(0, 499)]),
    ("bytes=500-999", 10000, [(500, 999)]),
    ("bytes=-500", 10000, [(9500, 9999)]),
    ("bytes=9500-", 10000, [(9500, 9999)]),
    ("bytes=0-0,-1", 10000, [(0, 0), (9999, 9999)]),
    ("bytes=500-600,601-999", 10000, [(500, 999)]),  # adjacent: coalesced
    ("bytes=500-700,601-999", 10000, [(500, 999)]),  # overlapping: coalesced
]

ABSENT_OR_IGNORED_CASES = [
    (None, 10000, FULL),
    ("", 10000, FULL),
    (None, 0, FULL),
    ("items=0-1", 10000, FULL),
    ("byte=0-1", 10000, FULL),
    ("bytes0-1", 10000, FULL),
    ("bytes", 10000, FULL),
    ("bytes 0-1", 10000, FULL),
    ("foo", 10000, FULL),
    ("bytes =0-1", 10000, FULL),
    ("=0-1", 10000, FULL),
]

UNIT_CASES = [
    ("BYTES=0-1", 10000, [(0, 1)]),
    ("Bytes=0-1", 10000, [(0, 1)]),
    ("bYtEs=5-", 10, [(5, 9)]),
]

WHITESPACE_AND_LIST_CASES = [
    ("bytes=   0 -  1 ,  3-4", 10000, [(0, 4)]),  # Go's "Apache laxity" case, coalesced
    ("bytes= 0 - 1 , 300-400", 10000, [(0, 1), (300, 400)]),
    ("bytes=\t0-1\t,\t500-600\t", 10000, [(0, 1), (500, 600)]),
    ("bytes=- 5", 10, [(5, 9)]),
    ("bytes=0-1,,500-600", 10000, [(0, 1), (500, 600)]),
    ("bytes=,0-1,", 10000, [(0, 1)]),
    ("bytes=, ,0-1, ,", 10000, [(0, 1)]),
    (" bytes=0-1 ", 10000, [(0, 1)]),
    ("bytes=   1 -2   ,  4- 5, 7 - 8 , ,,", 11, [(1, 8)]),
]

EMPTY_LIST_CASES = [
    ("bytes=", 10000, UNSAT),
    ("bytes=,", 10000, UNSAT),
    ("bytes= , , ,   ", 10, UNSAT),
    ("bytes=         ", 10, UNSAT),
]

# Valid, but selecting nothing: "-0", and a last position before the first (RFC 9110
# calls that spec invalid). As nginx does, such a spec is dropped and the rest of the
# set still counts; alone, the set is unsatisfiable.
SELECTS_NOTHING_CASES = [
    ("bytes=-0", 10000, UNSAT),  # nginx: 416, not the whole file
    ("bytes=-000", 10000, UNSAT),
    ("bytes=-0", 0, UNSAT),
    ("bytes=0-1,-0", 10000, [(0, 1)]),
    ("bytes=-0,0-1", 10000, [(0, 1)]),
    ("bytes=10-5", 10000, UNSAT),
    ("bytes=5-4", 10, UNSAT),
    ("bytes=0-1,5-2", 10000, [(0, 1)]),
    ("bytes=0-2,5-4", 10, [(0, 2)]),
    ("bytes=2-5,4-3", 10, [(2, 5)]),
    ("bytes=-0,5-4", 10, UNSAT),
    ("bytes=0-1,99999999999999999999-99999999999999999998", 10000, [(0, 1)]),
    (f"bytes=0-1,{HUGE}-{HUGE[:-1]}8", 10000, [(0, 1)]),
]

SYNTAX_ERROR_CASES = [
    ("bytes=a-b", 10000, UNSAT),
    ("bytes=1-a", 10000, UNSAT),
    ("bytes=A-", 10, UNSAT),
    ("bytes=A-Z", 10, UNSAT),
    ("bytes= -Z", 10, UNSAT),
    ("bytes=5-Z", 10, UNSAT),
    ("bytes=-", 10000, UNSAT),
    ("bytes=--1", 10000, UNSAT),
    ("bytes=--5,4--3", 10, UNSAT),
    ("bytes=1-2-3", 10000, UNSAT),
    ("bytes=7", 10, UNSAT),
    ("bytes= 7 ", 10, UNSAT),
    ("bytes=+1-2", 10000, UNSAT),
    ("bytes=1-+2", 10000, UNSAT),
    ("bytes=-+2", 10000, UNSAT),
    ("bytes=0x01-0x02", 10, UNSAT),
    ("bytes=1 2-3", 10000, UNSAT),  # no space inside a number
    ("bytes=1_0-20", 10000, UNSAT),  # int() would accept the underscore
    ("bytes=\uff11-2", 10000, UNSAT),  # fullwidth digit: int() would accept it
    ("bytes=\u0661-2", 10000, UNSAT),  # Arabic-Indic digit
    ("bytes=1.5-2", 10000, UNSAT),
    ("bytes=Ran-dom, garbage", 10, UNSAT),
    ("bytes=0-1,junk", 10000, UNSAT),
    ("bytes=0-1;2-3", 10000, UNSAT),
    ("bytes=0-1\n,2-3", 10000, UNSAT),
    ("bytes==0-1", 10000, UNSAT),
    ("bytes=10000-,garbage", 10000, UNSAT),  # syntax error even though nothing is satisfiable
]

CLAMP_AND_UNSATISFIABLE_CASES = [
    ("bytes=0-9", 10, [(0, 9)]),
    ("bytes=0-", 10, [(0, 9)]),
    ("bytes=5-", 10, [(5, 9)]),
    ("bytes=0-20", 10, [(0, 9)]),
    ("bytes=-5", 10, [(5, 9)]),
    ("bytes=-15", 10, [(0, 9)]),
    ("bytes=-10", 10, [(0, 9)]),
    ("bytes=-1", 10, [(9, 9)]),
    ("bytes=9-", 10, [(9, 9)]),
    ("bytes=9-9", 10, [(9, 9)]),
    ("bytes=10-", 10, UNSAT),
    ("bytes=10-20", 10, UNSAT),
    ("bytes=9999-", 10000, [(9999, 9999)]),
    ("bytes=10000-", 10000, UNSAT),
    ("bytes=10000-10001,0-0", 10000, [(0, 0)]),
    ("bytes=15-,0-5", 10, [(0, 5)]),
    ("bytes=15-,20-25", 10, UNSAT),
    ("bytes=007-008", 10, [(7, 8)]),
    ("bytes=0-99999999999999999999999", 10000, [(0, 9999)]),
    ("bytes=99999999999999999999-", 10000, UNSAT),
    ("bytes=-99999999999999999999", 10000, [(0, 9999)]),
    ("bytes=0-1,99999999999999999999-99999999999999999999", 10000, [(0, 1)]),
    (f"bytes=0-{HUGE}", 10000, [(0, 9999)]),
    (f"bytes={HUGE}-", 10000, UNSAT),
    (f"bytes=-{HUGE}", 10000, [(0, 9999)]),
    (f"bytes=000000000000000000000000000000005-{HUGE}", 10, [(5, 9)]),
    # A zero-length representation satisfies no range at all.
    ("bytes=0-", 0, UNSAT),
    ("bytes=0-0", 0, UNSAT),
    ("bytes=-5", 0, UNSAT),
    ("bytes=1-", 0, UNSAT),
    ("bytes=0-0", 1, [(0, 0)]),
    ("bytes=1-", 1, UNSAT),
    ("bytes=0-0,-1", 1, [(0, 0)]),
]

COALESCE_CASES = [
    ("bytes=0-,1-,2-", 10, [(0, 9)]),
    ("bytes=-2 , 7-", 11, [(7, 10)]),
    ("bytes=0-0 ,2-2, 7-", 11, [(0, 10)]),
    ("bytes=1-2,5-", 10, [(1, 9)]),
    ("bytes=0-1,0-1", 10000, [(0, 1)]),
    ("bytes=0-1,2-3", 10000, [(0, 3)]),
    ("bytes=0-1,,2-3", 10000, [(0, 3)]),
    # Gap just under / exactly at the part-header overhead.
    ("bytes=0-9,89-99", 10000, [(0, 99)]),
    ("bytes=0-9,90-99", 10000, [(0, 9), (90, 99)]),
    ("bytes=89-99,0-9", 10000, [(0, 99)]),
    ("bytes=90-99,0-9", 10000, [(90, 99), (0, 9)]),
    # No merge: request order is kept.
    ("bytes=5000-5100,0-100", 10000, [(5000, 5100), (0, 100)]),
    ("bytes=-1,0-0", 10000, [(9999, 9999), (0, 0)]),
    ("bytes=9000-,1000-1999,5000-5999", 10000, [(9000, 9999), (1000, 1999), (5000, 5999)]),
    # Any merge: the result is sorted.
    ("bytes=5000-5100,0-100,50-60", 10000, [(0, 100), (5000, 5100)]),
    (
        "bytes=9000-,1000-1999,5000-5999,1500-2500",
        10000,
        [(1000, 2500), (5000, 5999), (9000, 9999)],
    ),
    ("bytes=200-300,0-100,150-160", 10000, [(0, 300)]),
    ("bytes=0-100,10-20", 10000, [(0, 100)]),
]


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    RFC9110_CASES
    + ABSENT_OR_IGNORED_CASES
    + UNIT_CASES
    + WHITESPACE_AND_LIST_CASES
    + EMPTY_LIST_CASES
    + SELECTS_NOTHING_CASES
    + SYNTAX_ERROR_CASES
    + CLAMP_AND_UNSATISFIABLE_CASES
    + COALESCE_CASES,
)
def test_plan_ranges(header: str | None, size: int, expected: str | list[tuple[int, int]]) -> None:
    assert plan_ranges(header, size) == _expected(expected)


def test_coalesce_gap_matches_documented_value() -> None:
    assert COALESCE_GAP == 80


def _spaced_specs(n: int) -> str:
    # Far enough apart that nothing coalesces.
    return "bytes=" + ",".join(f"{i * 1000}-{i * 1000}" for i in range(n))


def test_max_specs_default_is_100() -> None:
    assert MAX_RANGE_SPECS == 100


def test_exactly_max_specs_is_honoured() -> None:
    plan = plan_ranges(_spaced_specs(MAX_RANGE_SPECS), 1_000_000)
    assert plan.outcome is RangeOutcome.PARTIAL
    assert plan.ranges == tuple(ByteRange(i * 1000, i * 1000) for i in range(MAX_RANGE_SPECS))


def test_more_than_max_specs_is_ignored() -> None:
    assert plan_ranges(_spaced_specs(MAX_RANGE_SPECS + 1), 1_000_000) == _expected(FULL)


def test_more_than_max_specs_is_ignored_even_if_they_would_coalesce() -> None:
    header = "bytes=" + ",".join(["0-0"] * (MAX_RANGE_SPECS + 1))
    assert plan_ranges(header, 10) == _expected(FULL)


def test_more_than_max_specs_is_ignored_before_syntax_checks() -> None:
    header = _spaced_specs(MAX_RANGE_SPECS + 1) + ",garbage"
    assert plan_ranges(header, 1_000_000) == _expected(FULL)


@pytest.mark.parametrize(
    ("header", "max_specs", "expected"),
    [
        ("bytes=0-0,100-100,200-200", 2, FULL),
        ("bytes=0-0,100-100,200-200", 3, [(0, 0), (100, 100), (200, 200)]),
        ("bytes=0-0,,,,,", 1, [(0, 0)]),  # empty elements are not specs
        ("bytes=0-0", 0, FULL),
        ("bytes=0-0,1-1,2-2", 2, FULL),  # counted before coalescing
    ],
)
def test_max_specs_parameter(header: str, max_specs: int, expected: str | list) -> None:
    assert plan_ranges(header, 10000, max_specs=max_specs) == _expected(expected)


def test_plan_ranges_rejects_negative_size() -> None:
    with pytest.raises(ValueError):
        plan_ranges("bytes=0-1", -1)


def test_partial_ranges_never_exceed_size() -> None:
    size = 1234
    headers = ["bytes=0-,1-,2-", "bytes=-5000", "bytes=1000-99999,0-0", "bytes=-1,-2,-3"]
    for header in headers:
        plan = plan_ranges(header, size)
        assert plan.outcome is RangeOutcome.PARTIAL
        assert all(0 <= r.start <= r.end < size for r in plan.ranges)
        assert sum(r.length for r in plan.ranges) <= size


# --- preconditions --------------------------------------------------------------------

LM = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT
V = Validators(etag='"abc-123"', last_modified=LM)
AT = "Sun, 06 Nov 1994 08:49:37 GMT"
BEFORE = "Sun, 06 Nov 1994 08:49:36 GMT"
AFTER = "Sun, 06 Nov 1994 08:49:38 GMT"
AT_850 = "Sunday, 06-Nov-94 08:49:37 GMT"
BEFORE_850 = "Sunday, 06-Nov-94 08:49:36 GMT"
AT_ASCTIME = "Sun Nov  6 08:49:37 1994"
BEFORE_ASCTIME = "Sun Nov  6 08:49:36 1994"

OK = Precondition.PROCEED
NM = Precondition.NOT_MODIFIED
PF = Precondition.PRECONDITION_FAILED

PRECONDITION_CASES = [
    ("GET", {}, OK),
    ("PUT", {}, OK),
    # If-Match: strong comparison only.
    ("GET", {"if_match": '"abc-123"'}, OK),
    ("PUT", {"if_match": '"abc-123"'}, OK),
    ("GET", {"if_match": "*"}, OK),
    ("GET", {"if_match": " * "}, OK),
    ("GET", {"if_match": '"xyz"'}, PF),
    ("PUT", {"if_match": '"xyz"'}, PF),
    ("GET", {"if_match": 'W/"abc-123"'}, PF),
    ("GET", {"if_match": '"a", W/"b", "abc-123"'}, OK),
    ("GET", {"if_match": '"a",W/"b","c"'}, PF),
    ("GET", {"if_match": '"a", W/"abc-123"'}, PF),
    ("GET", {"if_match": '"abc-123",,'}, OK),
    ("GET", {"if_match": ' ,"x" , \t"abc-123"\t'}, OK),
    ("GET", {"if_match": '"ABC-123"'}, PF),  # opaque-tags are case-sensitive
    ("GET", {"if_match": "abc-123"}, PF),  # unquoted
    ("GET", {"if_match": '"abc-123'}, PF),  # unterminated
    ("GET", {"if_match": 'w/"abc-123"'}, PF),
    ("GET", {"if_match": "garbage"}, PF),
    ("GET", {"if_match": '"abc-123" garbage'}, PF),
    ("GET", {"if_match": '"abc-123", junk'}, PF),  # malformed list matches nothing
    ("GET", {"if_match": '"abc-123""x"'}, PF),
    ("GET", {"if_match": '*, "abc-123"'}, PF),
    ("GET", {"if_match": ""}, PF),
    # If-Match takes precedence: If-Unmodified-Since is then not evaluated.
    ("GET", {"if_match": '"abc-123"', "if_unmodified_since": BEFORE}, OK),
    ("GET", {"if_match": '"xyz"', "if_unmodified_since": AFTER}, PF),
    # If-Unmodified-Since.
    ("GET", {"if_unmodified_since": AT}, OK),
    ("GET", {"if_unmodified_since": AFTER}, OK),
    ("GET", {"if_unmodified_since": BEFORE}, PF),
    ("PUT", {"if_unmodified_since": BEFORE}, PF),
    ("GET", {"if_unmodified_since": BEFORE_850}, PF),
    ("GET", {"if_unmodified_since": BEFORE_ASCTIME}, PF),
    ("GET", {"if_unmodified_since": AT_850}, OK),
    ("GET", {"if_unmodified_since": "garbage"}, OK),
    ("GET", {"if_unmodified_since": "Sun, 06 Nov 1994 08:49:36"}, OK),
    ("GET", {"if_unmodified_since": f"{BEFORE}, {BEFORE}"}, OK),
    # If-None-Match: weak comparison; 304 for GET/HEAD, 412 otherwise.
    ("GET", {"if_none_match": '"abc-123"'}, NM),
    ("HEAD", {"if_none_match": '"abc-123"'}, NM),
    ("POST", {"if_none_match": '"abc-123"'}, PF),
    ("PUT", {"if_none_match": '"abc-123"'}, PF),
    ("DELETE", {"if_none_match": '"abc-123"'}, PF),
    ("GET", {"if_none_match": 'W/"abc-123"'}, NM),
    ("GET", {"if_none_match": "*"}, NM),
    ("PUT", {"if_none_match": "*"}, PF),
    ("GET", {"if_none_match": '"x", W/"abc-123"'}, NM),
    ("GET", {"if_none_match": '"a", W/"b", "c"'}, OK),
    ("GET", {"if_none_match": '"x"'}, OK),
    ("PUT", {"if_none_match": '"x"'}, OK),
    ("GET", {"if_none_match": "garbage"}, OK),
    ("GET", {"if_none_match": '"abc-123" junk'}, OK),
    ("GET", {"if_none_match": "abc-123"}, OK),
    ("GET", {"if_none_match": ""}, OK),
    # If-None-Match present: If-Modified-Since is not evaluated.
    ("GET", {"if_none_match": '"x"', "if_modified_since": AFTER}, OK),
    ("GET", {"if_none_match": "garbage", "if_modified_since": AT}, OK),
    # If-Modified-Since: GET/HEAD only.
    ("GET", {"if_modified_since": AT}, NM),
    ("GET", {"if_modified_since": AFTER}, NM),
    ("GET", {"if_modified_since": BEFORE}, OK),
    ("HEAD", {"if_modified_since": AT}, NM),
    ("POST", {"if_modified_since": AT}, OK),
    ("DELETE", {"if_modified_since": AFTER}, OK),
    ("GET", {"if_modified_since": AT_850}, NM),
    ("GET", {"if_modified_since": BEFORE_850}, OK),
    ("GET", {"if_modified_since": AT_ASCTIME}, NM),
    ("GET", {"if_modified_since": BEFORE_ASCTIME}, OK),
    ("GET", {"if_modified_since": "garbage"}, OK),
    ("GET", {"if_modified_since": ""}, OK),
    ("GET", {"if_modified_since": "sun, 06 nov 1994 08:49:37 gmt"}, OK),
    ("GET", {"if_modified_since": f"{AT}, {AT}"}, OK),  # more than one member
    # Evaluation order between the groups.
    ("GET", {"if_match": '"xyz"', "if_none_match": '"abc-123"'}, PF),
    ("GET", {"if_unmodified_since": BEFORE, "if_none_match": '"abc-123"'}, PF),
    ("GET", {"if_unmodified_since": BEFORE, "if_modified_since": AT}, PF),
    ("GET", {"if_match": '"abc-123"', "if_none_match": '"abc-123"'}, NM),
    ("GET", {"if_match": "*", "if_modified_since": AT}, NM),
    ("GET", {"if_unmodified_since": "garbage", "if_modified_since": AT}, NM),
    ("GET", {"if_unmodified_since": AFTER, "if_none_match": '"x"'}, OK),
    # If-Range never influences preconditions.
    ("GET", {"if_range": '"xyz"'}, OK),
]


@pytest.mark.parametrize(("method", "headers", "expected"), PRECONDITION_CASES)
def test_evaluate_preconditions(
    method: str, headers: dict[str, str], expected: Precondition
) -> None:
    assert evaluate_preconditions(method, Conditions(**headers), V) is expected


# --- If-Range -------------------------------------------------------------------------

IF_RANGE_CASES = [
    ("GET", None, True),
    ("HEAD", None, False),
    ("POST", None, False),
    ("PUT", None, False),
    ("GET", '"abc-123"', True),
    ("GET", ' "abc-123" ', True),
    ("HEAD", '"abc-123"', False),
    ("GET", 'W/"abc-123"', False),  # weak tags never match
    ("GET", '"other"', False),
    ("GET", '"ABC-123"', False),
    ("GET", '"abc-123", "x"', False),
    ("GET", '"abc-123"junk', False),
    ("GET", '"abc-123', False),
    ("GET", "W/", False),
    ("GET", "*", False),
    ("GET", AT, True),
    ("GET", AT_850, True),
    ("GET", AT_ASCTIME, True),
    ("HEAD", AT, False),
    ("GET", BEFORE, False),  # only an exact match counts
    ("GET", AFTER, False),
    ("GET", BEFORE_850, False),
    ("GET", "garbage", False),
    ("GET", "", False),
    ("GET", f"{AT}, {AT}", False),
]


@pytest.mark.parametrize(("method", "if_range", "expected"), IF_RANGE_CASES)
def test_range_applies(method: str, if_range: str | None, expected: bool) -> None:
    assert range_applies(method, Conditions(if_range=if_range), V) is expected


def test_range_applies_ignores_other_conditions() -> None:
    cond = Conditions(if_match='"nope"', if_none_match='"abc-123"', if_modified_since=AFTER)
    assert range_applies("GET", cond, V) is True


def test_range_applies_with_weak_own_etag_never_matches() -> None:
    weak = Validators(etag='W/"abc-123"', last_modified=LM)
    assert range_applies("GET", Conditions(if_range='W/"abc-123"'), weak) is False
    assert range_applies("GET", Conditions(if_range='"abc-123"'), weak) is False


# --- HTTP-date ------------------------------------------------------------------------

NOW_2026 = calendar.timegm((2026, 1, 1, 0, 0, 0))

PARSE_DATE_CASES = [
    (AT, LM),
    (AT_850, LM),
    (AT_ASCTIME, LM),
    ("Sun Nov 06 08:49:37 1994", LM),  # asctime day may also be two digits
    ("  Sun, 06 Nov 1994 08:49:37 GMT\t", LM),
    ("Mon, 06 Nov 1994 08:49:37 GMT", LM),  # day name is not cross-checked
    ("Thu, 01 Jan 1970 00:00:00 GMT", 0),
    ("Wed, 31 Dec 1969 23:59:59 GMT", -1),
    ("Thu, 29 Feb 2024 00:00:00 GMT", 1709164800),
    ("Tue, 29 Feb 2000 00:00:00 GMT", 951782400),
    ("Wed, 31 Dec 2008 23:59:60 GMT", 1230768000),  # leap second
    ("Fri, 31 Dec 9999 23:59:59 GMT", 253402300799),
    ("Sunday, 09-Sep-01 01:46:40 GMT", 1000000000),
    ("Thu Jan  1 00:00:00 1970", 0),
    ("Tue Feb 29 00:00:00 2000", 951782400),
    # Invalid forms.
    ("", None),
    ("garbage", None),
    ("Sun, 6 Nov 1994 08:49:37 GMT", None),
    ("Sun, 06 Nov 94 08:49:37 GMT", None),
    ("Sun, 06 Nov 1994 08:49:37 UTC", None),
    ("Sun, 06 Nov 1994 08:49:37", None),
    ("Sun, 06 Nov 1994 08:49 GMT", None),
    ("Sun 06 Nov 1994 08:49:37 GMT", None),
    ("Sun,  06 Nov 1994 08:49:37 GMT", None),
    ("Sunday, 06 Nov 1994 08:49:37 GMT", None),
    ("Sun, 06-Nov-94 08:49:37 GMT", None),
    ("Sunday, 06-Nov-1994 08:49:37 GMT", None),
    ("Sun Nov 6 08:49:37 1994", None),
    ("Sun Nov  6 08:49:37 94", None),
    ("Sun Nov  6 08:49:37 1994 GMT", None),
    ("sun, 06 nov 1994 08:49:37 gmt", None),
    ("SUN, 06 NOV 1994 08:49:37 GMT", None),
    ("Foo, 06 Nov 1994 08:49:37 GMT", None),
    ("Sun, 06 Foo 1994 08:49:37 GMT", None),
    ("Sun, 00 Nov 1994 08:49:37 GMT", None),
    ("Sun, 31 Nov 1994 08:49:37 GMT", None),
    ("Thu, 29 Feb 2023 00:00:00 GMT", None),
    ("Thu, 29 Feb 1900 00:00:00 GMT", None),
    ("Sun, 06 Nov 1994 24:00:00 GMT", None),
    ("Sun, 06 Nov 1994 08:60:00 GMT", None),
    ("Sun, 06 Nov 1994 08:49:61 GMT", None),
    ("Sun, 06 Nov 0000 08:49:37 GMT", None),
    ("Sun, \uff10\uff16 Nov 1994 08:49:37 GMT", None),
    (f"{AT}, {AT}", None),
    (f"{AT}\n", None),
]


@pytest.mark.parametrize(("value", "expected"), PARSE_DATE_CASES)
def test_parse_http_date(value: str, expected: int | None) -> None:
    assert parse_http_date(value, now=NOW_2026) == expected


@pytest.mark.parametrize(
    ("yy", "year"),
    [
        ("94", 1994),
        ("70", 2070),
        ("69", 2069),
        ("00", 2000),
        ("26", 2026),
        ("75", 2075),
        ("76", 2076),  # exactly 50 years ahead is still read as the future
        ("77", 1977),  # more than 50 years ahead: the past century
        ("99", 1999),
    ],
)
def test_parse_rfc850_two_digit_year(yy: str, year: int) -> None:
    value = f"Monday, 01-Jan-{yy} 12:00:00 GMT"
    assert parse_http_date(value, now=NOW_2026) == calendar.timegm((year, 1, 1, 12, 0, 0))


def test_parse_rfc850_year_depends_on_now() -> None:
    value = "Monday, 01-Jan-80 00:00:00 GMT"
    now_2000 = calendar.timegm((2000, 6, 1, 0, 0, 0))
    now_2040 = calendar.timegm((2040, 6, 1, 0, 0, 0))
    assert parse_http_date(value, now=now_2000) == calendar.timegm((1980, 1, 1, 0, 0, 0))
    assert parse_http_date(value, now=now_2040) == calendar.timegm((2080, 1, 1, 0, 0, 0))


def test_parse_rfc850_without_now_uses_clock() -> None:
    assert parse_http_date(AT_850) == LM


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (LM, AT),
        (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
        (-1, "Wed, 31 Dec 1969 23:59:59 GMT"),
        (951782400, "Tue, 29 Feb 2000 00:00:00 GMT"),
        (1709164800, "Thu, 29 Feb 2024 00:00:00 GMT"),
        (2**31, "Tue, 19 Jan 2038 03:14:08 GMT"),
        (253402300799, "Fri, 31 Dec 9999 23:59:59 GMT"),
        (1000000000, "Sun, 09 Sep 2001 01:46:40 GMT"),
    ],
)
def test_format_http_date(ts: int, expected: str) -> None:
    assert format_http_date(ts) == expected


@pytest.mark.parametrize(
    "ts", [0, 1, -1, LM, 951782400, 1709164800, 1717171717, 2**31, 4102444799, 253402300799]
)
def test_http_date_round_trip(ts: int) -> None:
    assert parse_http_date(format_http_date(ts)) == ts


# --- multipart/byteranges -------------------------------------------------------------

DATA = bytes((i * 7 + 3) % 256 for i in range(1000))


def _assemble(layout: MultipartLayout, data: bytes) -> bytes:
    body = b"".join(head + data[r.start : r.end + 1] for head, r in layout.parts)
    return body + layout.closing


def test_multipart_layout_headers_and_body() -> None:
    ranges = [ByteRange(0, 9), ByteRange(500, 599), ByteRange(990, 999)]
    layout = multipart_layout(ranges, len(DATA), "video/mp4", "B")

    assert layout.content_type == "multipart/byteranges; boundary=B"
    assert [r for _, r in layout.parts] == ranges
    assert layout.parts[0][0] == (
        b"--B\r\nContent-Type: video/mp4\r\nContent-Range: bytes 0-9/1000\r\n\r\n"
    )
    assert layout.parts[1][0] == (
        b"\r\n--B\r\nContent-Type: video/mp4\r\nContent-Range: bytes 500-599/1000\r\n\r\n"
    )
    assert layout.parts[2][0] == (
        b"\r\n--B\r\nContent-Type: video/mp4\r\nContent-Range: bytes 990-999/1000\r\n\r\n"
    )
    assert layout.closing == b"\r\n--B--\r\n"

    body = _assemble(layout, DATA)
    assert layout.content_length == len(body)
    expected = (
        b"--B\r\nContent-Type: video/mp4\r\nContent-Range: bytes 0-9/1000\r\n\r\n"
        + DATA[0:10]
        + b"\r\n--B\r\nContent-Type: video/mp4\r\nContent-Range: bytes 500-599/1000\r\n\r\n"
        + DATA[500:600]
        + b"\r\n--B\r\nContent-Type: video/mp4\r\nContent-Range: bytes 990-999/1000\r\n\r\n"
        + DATA[990:1000]
        + b"\r\n--B--\r\n"
    )
    assert body == expected


def _split_parts(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """Minimal multipart reader, independent of the layout code."""
    delim = b"\r\n--" + boundary.encode()
    assert body.startswith(b"--" + boundary.encode() + b"\r\n")
    assert body.endswith(delim + b"--\r\n")
    inner = b"\r\n" + body[: -len(delim + b"--\r\n")]
    chunks = inner.split(delim)[1:]
    parts = []
    for chunk in chunks:
        assert chunk.startswith(b"\r\n")
        head, _, payload = chunk[2:].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append((headers, payload))
    return parts


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=0-0,-1", 1000),
        ("bytes=0-9,500-599,990-", 1000),
        ("bytes=900-,0-99", 1000),
        ("bytes=0-0,100-100,200-200,300-300,400-400", 1000),
        ("bytes=-1,0-0", 1000),
        ("bytes=0-0,999-999", 1000),
    ],
)
def test_multipart_layout_round_trips_through_planner(header: str, size: int) -> None:
    plan = plan_ranges(header, size)
    assert plan.outcome is RangeOutcome.PARTIAL and len(plan.ranges) > 1
    boundary = "3d6b6a416f9b5"
    layout = multipart_layout(plan.ranges, size, "video/webm", boundary)
    body = _assemble(layout, DATA[:size])

    assert layout.content_length == len(body)
    parts = _split_parts(body, boundary)
    assert len(parts) == len(plan.ranges)
    for (headers, payload), r in zip(parts, plan.ranges, strict=True):
        assert headers == {
            "Content-Type": "video/webm",
            "Content-Range": f"bytes {r.start}-{r.end}/{size}",
        }
        assert payload == DATA[r.start : r.end + 1]


def test_multipart_layout_single_range() -> None:
    layout = multipart_layout([ByteRange(5, 5)], 10, "video/mp4", "xyz")
    assert layout.parts == (
        (
            b"--xyz\r\nContent-Type: video/mp4\r\nContent-Range: bytes 5-5/10\r\n\r\n",
            ByteRange(5, 5),
        ),
    )
    assert layout.content_length == len(_assemble(layout, DATA[:10]))


def test_multipart_layout_without_content_type_omits_header() -> None:
    layout = multipart_layout([ByteRange(0, 1), ByteRange(8, 9)], 10, "", "b")
    assert layout.parts[0][0] == b"--b\r\nContent-Range: bytes 0-1/10\r\n\r\n"
    assert layout.parts[1][0] == b"\r\n--b\r\nContent-Range: bytes 8-9/10\r\n\r\n"
    assert layout.content_length == len(_assemble(layout, DATA[:10]))


def test_multipart_layout_content_length_counts_large_ranges_without_data() -> None:
    size = 10**12
    ranges = [ByteRange(0, 10**9 - 1), ByteRange(size - 10**9, size - 1)]
    layout = multipart_layout(ranges, size, "video/mp4", "B")
    heads = sum(len(h) for h, _ in layout.parts)
    assert layout.content_length == heads + 2 * 10**9 + len(b"\r\n--B--\r\n")


@pytest.mark.parametrize(
    ("boundary", "content_type"),
    [
        ("simple-boundary_123", "multipart/byteranges; boundary=simple-boundary_123"),
        ("with space", 'multipart/byteranges; boundary="with space"'),
        ("a:b", 'multipart/byteranges; boundary="a:b"'),
        ("x" * 70, "multipart/byteranges; boundary=" + "x" * 70),
    ],
)
def test_multipart_content_type_quotes_boundary_when_needed(
    boundary: str, content_type: str
) -> None:
    layout = multipart_layout([ByteRange(0, 0)], 1, "video/mp4", boundary)
    assert layout.content_type == content_type
    assert layout.closing == f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize(
    ("ranges", "size", "content_type", "boundary"),
    [
        ([], 10, "video/mp4", "B"),
        ([ByteRange(0, 10)], 10, "video/mp4", "B"),
        ([ByteRange(0, 1), ByteRange(5, 10)], 10, "video/mp4", "B"),
        ([ByteRange(0, 0)], 10, "video/mp4", ""),
        ([ByteRange(0, 0)], 10, "video/mp4", "x" * 71),
        ([ByteRange(0, 0)], 10, "video/mp4", "trailing "),
        ([ByteRange(0, 0)], 10, "video/mp4", "bad\r\nboundary"),
        ([ByteRange(0, 0)], 10, "video/mp4", "caf\u00e9"),
        ([ByteRange(0, 0)], 10, "video/mp4", 'quote"d'),
        ([ByteRange(0, 0)], 10, "video/mp4\r\nX-Injected: 1", "B"),
        ([ByteRange(0, 0)], 10, "video/\u2603", "B"),
    ],
)
def test_multipart_layout_rejects_invalid_input(
    ranges: list[ByteRange], size: int, content_type: str, boundary: str
) -> None:
    with pytest.raises(ValueError):
        multipart_layout(ranges, size, content_type, boundary)
