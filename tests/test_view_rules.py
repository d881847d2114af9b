"""The pure decisions behind view counting and the viewer socket, as tables."""

from __future__ import annotations

import ipaddress

import pytest

from server.core.clients import (
    client_ip,
    from_trusted_proxy,
    hash_secret,
    ip_bucket,
    ip_key,
    is_bot,
    parse_address,
    viewer_key,
)
from server.core.origins import normalise_origin, origin_allowed, own_origin
from server.viewing.tally import batch_counts, combine, decode_state, encode_state
from server.viewing.watch_rules import (
    MAX_REPORT_GAP,
    Report,
    ReportError,
    WatchState,
    advance,
    parse_report,
    parse_session,
    required_watch,
)

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
SECRET = hash_secret("x" * 40)


@pytest.mark.parametrize("remote, xff, expected", [
    ("203.0.113.7", None, "203.0.113.7"),
    # An untrusted peer's X-Forwarded-For is ignored: anyone can send one.
    ("203.0.113.7", "198.51.100.1", "203.0.113.7"),
    ("10.0.0.2", "198.51.100.1", "198.51.100.1"),
    # Right to left through trusted hops; a spoofed leftmost entry is not believed.
    ("10.0.0.2", "1.1.1.1, 198.51.100.1, 10.0.0.9", "198.51.100.1"),
    ("10.0.0.2", "10.0.0.5, 10.0.0.9", "10.0.0.5"),
    ("10.0.0.2", "", "10.0.0.2"),
    # Garbage from a trusted hop stops the walk at that hop.
    ("10.0.0.2", "198.51.100.1, not-an-ip", "10.0.0.2"),
    ("10.0.0.2", "198.51.100.1:5555", "198.51.100.1"),
    ("10.0.0.2", "[2001:db8::1]:443", "2001:db8::1"),
    ("fd00::1", "2001:db8::7", "2001:db8::7"),
    ("::ffff:10.0.0.2", "198.51.100.1", "198.51.100.1"),
    (None, "198.51.100.1", None),
])
def test_client_ip(remote, xff, expected):
    result = client_ip(remote, xff, PROXIES)
    assert (str(result) if result is not None else None) == expected


def test_trusted_proxy_only_by_address():
    assert from_trusted_proxy("10.1.2.3", PROXIES)
    assert not from_trusted_proxy("203.0.113.7", PROXIES)
    assert not from_trusted_proxy(None, PROXIES)
    assert not from_trusted_proxy("10.1.2.3", ())


@pytest.mark.parametrize("raw, expected", [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
    ("::ffff:198.51.100.3", "198.51.100.3"),
])
def test_ip_bucket_groups_an_ipv6_64(raw, expected):
    assert ip_bucket(parse_address(raw)) == expected


def test_viewer_key():
    ip = parse_address("203.0.113.7")
    browser = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
    anon = viewer_key(None, ip, browser, SECRET)
    assert anon == viewer_key(None, ip, browser, SECRET)
    assert anon != viewer_key(None, ip, browser + " other", SECRET)
    assert anon != viewer_key(None, parse_address("203.0.113.8"), browser, SECRET)
    assert anon != viewer_key(None, ip, browser, hash_secret("y" * 40))
    assert "203.0.113" not in anon
    # A signed-in viewer is the account, wherever it watches from.
    assert viewer_key(7, ip, browser, SECRET) == viewer_key(7, None, "", SECRET) == "u7"
    assert ip_key(ip, SECRET) == ip_key(parse_address("203.0.113.7"), SECRET)
    assert "203.0.113" not in ip_key(ip, SECRET)
    assert ip_key(parse_address("2001:db8::1"), SECRET) == \
        ip_key(parse_address("2001:db8::2"), SECRET)


@pytest.mark.parametrize("agent, bot", [
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/126.0 Safari/537.36", False),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
     "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1", False),
    ("Mozilla/5.0 (Linux; Android 13; Cubot KingKong) AppleWebKit/537.36 Chrome/120 "
     "Mobile Safari/537.36", False),
    ("Tubelet/2.3 (Android 14; Pixel 8)", False),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", True),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", True),
    ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", True),
    ("Twitterbot/1.0", True),
    ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", True),
    ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", True),
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.0)", True),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/126.0 Safari", True),
    ("curl/8.5.0", True),
    ("Wget/1.21.4", True),
    ("python-requests/2.32.3", True),
    ("Python/3.11 aiohttp/3.14.5", True),
    ("Go-http-client/2.0", True),
    ("", True),
    (None, True),
])
def test_is_bot(agent, bot):
    assert is_bot(agent) is bot


@pytest.mark.parametrize("duration, min_watch, expected", [
    (None, 10.0, 10.0),
    (600.0, 10.0, 10.0),
    (10.0, 10.0, 10.0),
    (6.0, 10.0, 3.0),
    (0.0, 10.0, 10.0),
])
def test_required_watch(duration, min_watch, expected):
    assert required_watch(duration, min_watch) == expected


def _run(reports: list[tuple[float, float, bool]]) -> float:
    """Feed (server time, position, playing) reports; the seconds credited."""
    state = None
    for now, position, playing in reports:
        state = advance(state, Report(position, playing), now)
    assert state is not None
    return state.watched


@pytest.mark.parametrize("reports, watched", [
    # Honest playback, a report every 5 s.
    ([(0, 0, True), (5, 5, True), (10, 10, True)], 10),
    # Claims 10 s of progress within 1 s of wall clock: 1 s is believed.
    ([(0, 0, True), (0.5, 5, True), (1, 10, True)], 1),
    # Many reports in a burst earn no more than the time that passed.
    ([(0, 0, True)] + [(0.01 * i, 1.0 * i, True) for i in range(1, 101)], 1),
    # Paused time earns nothing, even if the position jumps.
    ([(0, 0, False), (30, 30, False), (35, 35, True)], 0),
    ([(0, 0, True), (5, 5, False), (60, 60, True), (65, 65, True)], 10),
    # A playhead that does not move earns nothing.
    ([(0, 42, True), (5, 42, True), (10, 42, True)], 0),
    # Seeking back earns nothing for that interval; seeking forward at most wall time.
    ([(0, 100, True), (5, 20, True), (10, 25, True)], 5),
    ([(0, 0, True), (5, 300, True)], 5),
    # Silence longer than the protocol allows is not believed to be playback.
    ([(0, 0, True), (MAX_REPORT_GAP + 1, MAX_REPORT_GAP + 1, True)], 0),
    # A clock that steps back credits nothing and cannot re-credit later.
    ([(100, 0, True), (90, 5, True), (105, 10, True)], 5),
])
def test_watch_time_follows_the_wall_clock(reports, watched):
    assert _run(reports) == pytest.approx(watched)


@pytest.mark.parametrize("body, error", [
    ({"position": 1.5, "playing": True}, None),
    ({"position": 0, "playing": False}, None),
    ({"position": "1", "playing": True}, "position"),
    ({"position": True, "playing": True}, "position"),
    ({"position": -1, "playing": True}, "position"),
    ({"position": float("nan"), "playing": True}, "position"),
    ({"position": 1e12, "playing": True}, "position"),
    ({"playing": True}, "position"),
    ({"position": 1, "playing": "yes"}, "playing"),
    ({"position": 1}, "playing"),
])
def test_parse_report(body, error):
    if error is None:
        assert parse_report(body) == Report(float(body["position"]), body["playing"])
    else:
        with pytest.raises(ReportError, match=error):
            parse_report(body)


@pytest.mark.parametrize("session, ok", [
    ("abc-123_x.y", True), ("a" * 64, True), ("a" * 65, False), ("", False),
    ("has space", False), ("ünï", False), (12, False), (None, False),
])
def test_parse_session(session, ok):
    if ok:
        assert parse_session({"session": session}) == session
    else:
        with pytest.raises(ReportError):
            parse_session({"session": session})


def test_watch_state_round_trips_through_redis_fields():
    state = WatchState(12.25, 1700000000.125, 7.5, True)
    raw = {k.encode(): v.encode() for k, v in encode_state(state).items()}
    assert decode_state(raw) == state
    assert decode_state({}) is None
    assert decode_state({b"p": b"x", b"t": b"1", b"w": b"1", b"s": b"1"}) is None


def test_batch_counts_ignores_junk():
    assert batch_counts({b"3": b"2", b"4": b"0", b"x": b"1", b"5": b"y"}) == {3: 2}


def test_combine_adds_pending_and_unapplied_batches_only():
    ids = [1, 2, 3]
    rows = [{"id": 1, "views": 10, "applied": ["b-applied"]},
            {"id": 2, "views": 0, "applied": ["b-applied"]}]
    pending = [b"2", None, b"9"]
    batches = {b"b-applied": [b"5", b"5", None], b"b-new": [b"1", None, b"1"]}
    # Video 3 is not in the database (deleted): it has no total.
    assert combine(ids, rows, pending, batches) == {1: 13, 2: 0}


@pytest.mark.parametrize("value, expected", [
    ("https://Example.COM", "https://example.com"),
    ("https://example.com:443", "https://example.com"),
    ("http://example.com:8080/", "http://example.com:8080"),
    ("http://[::1]:8080", "http://[::1]:8080"),
    ("null", None),
    ("example.com", None),
    ("ftp://example.com", None),
    ("https://example.com/path", None),
    ("https://user@example.com", None),
    ("http://example.com:99999", None),
])
def test_normalise_origin(value, expected):
    assert normalise_origin(value) == expected


@pytest.mark.parametrize("origin, scheme, host, allowed, ok", [
    (None, "http", "tube.example", (), True),
    ("http://tube.example", "http", "tube.example", (), True),
    ("http://tube.example:80", "http", "tube.example", (), True),
    ("https://tube.example", "https", "tube.example:443", (), True),
    ("http://127.0.0.1:8080", "http", "127.0.0.1:8080", (), True),
    ("https://evil.example", "https", "tube.example", (), False),
    ("http://tube.example:8081", "http", "tube.example:8080", (), False),
    ("https://tube.example", "http", "tube.example", (), False),
    ("null", "http", "tube.example", (), False),
    ("https://app.example", "https", "tube.example", ("https://app.example",), True),
    ("https://APP.example:443", "https", "tube.example", ("https://app.example/",), True),
    ("https://other.example", "https", "tube.example", ("https://app.example",), False),
    ("https://other.example", "https", "tube.example", ("*",), True),
])
def test_origin_allowed(origin, scheme, host, allowed, ok):
    assert origin_allowed(origin, own_origin(scheme, host), allowed) is ok
