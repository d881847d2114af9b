"""Watch time: how much of a playback report the server believes. Pure functions.

A client says where the playhead is and whether it is playing. Between two
reports it is credited the smaller of how far the playhead moved and how much
time passed on the server's clock, and only if it said it was playing. So no
client earns watch time faster than the wall clock, however it reports.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

# Clients report at least every 5 s while playing; a longer silence is not
# believed to have been playback, and counting restarts from the next report.
MAX_REPORT_GAP = 15.0
MAX_POSITION = 7 * 24 * 3600.0
SESSION_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class ReportError(ValueError):
    """A playback report that does not follow the protocol."""


@dataclass(frozen=True, slots=True)
class Report:
    position: float
    playing: bool


@dataclass(frozen=True, slots=True)
class WatchState:
    position: float
    at: float
    watched: float
    playing: bool


def required_watch(duration: float | None, min_watch: float) -> float:
    """Seconds of playback a view needs: `min_watch`, or half of a shorter video."""
    if duration is not None and 0 < duration < min_watch:
        return duration / 2
    return min_watch


def advance(state: WatchState | None, report: Report, now: float) -> WatchState:
    """The session after `report` arrives at server time `now`."""
    if state is None:
        return WatchState(report.position, now, 0.0, report.playing)
    elapsed = now - state.at
    credit = 0.0
    if state.playing and 0 < elapsed <= MAX_REPORT_GAP:
        credit = max(0.0, min(report.position - state.position, elapsed))
    # A clock that stepped back must not let the next interval be counted twice.
    return WatchState(report.position, max(now, state.at), state.watched + credit,
                      report.playing)


def parse_report(body: dict[str, Any]) -> Report:
    position = body.get("position")
    if isinstance(position, bool) or not isinstance(position, int | float):
        raise ReportError("'position' must be a number of seconds")
    position = float(position)
    if not math.isfinite(position) or not 0 <= position <= MAX_POSITION:
        raise ReportError("'position' must be a non-negative number of seconds")
    playing = body.get("playing")
    if not isinstance(playing, bool):
        raise ReportError("'playing' must be true or false")
    return Report(position, playing)


def parse_session(body: dict[str, Any]) -> str:
    session = body.get("session")
    if not isinstance(session, str) or not SESSION_RE.match(session):
        raise ReportError("'session' must be 1-64 characters of A-Z a-z 0-9 . _ -")
    return session
