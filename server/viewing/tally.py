"""Reading view counts out of Redis's replies. Pure functions."""

from __future__ import annotations

from typing import Any

from .watch_rules import WatchState


def encode_state(state: WatchState) -> dict[str, str]:
    return {"p": repr(state.position), "t": repr(state.at), "w": repr(state.watched),
            "s": "1" if state.playing else "0"}


def decode_state(raw: dict[bytes, bytes]) -> WatchState | None:
    try:
        return WatchState(float(raw[b"p"]), float(raw[b"t"]), float(raw[b"w"]),
                          raw[b"s"] == b"1")
    except (KeyError, ValueError):
        return None


def batch_counts(raw: dict[bytes, bytes]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for field, value in raw.items():
        try:
            video_id, n = int(field), int(value)
        except ValueError:
            continue
        if n > 0:
            counts[video_id] = n
    return counts


def pairs(flat: list[Any]) -> dict[bytes, list[bytes | None]]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _int(value: bytes | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def combine(ids: list[int], rows: list[dict[str, Any]], pending: list[bytes | None],
            batches: dict[bytes, list[bytes | None]]) -> dict[int, int]:
    """Stored + pending + every in-flight batch the database has not applied yet."""
    stored = {row["id"]: row["views"] for row in rows}
    applied = {a.encode() for row in rows for a in row["applied"]}
    unapplied = [counts for batch, counts in batches.items() if batch not in applied]
    totals = {}
    for i, video_id in enumerate(ids):
        if video_id not in stored:
            continue
        totals[video_id] = (stored[video_id] + _int(pending[i])
                            + sum(_int(counts[i]) for counts in unapplied))
    return totals
