"""The table `make bench` prints, and the JSON it saves."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    key: str  # "a", "b", "c", "d@1000", ...
    what: str
    unit: str
    tubelet: float | None
    fileresponse: float | None = None
    nginx: float | None = None
    # Go's net/http file server (rows a-c).
    go: float | None = None
    # The S3 bucket serving the same object directly (rows k and w).
    bucket: float | None = None
    target: str = ""
    passed: bool | None = None
    # tubelet / FileResponse where that is the target's measure; tubelet / bucket in the
    # rows that have a bucket figure.
    ratio: float | None = None
    # tubelet / Go net/http and tubelet / nginx (rows a-c), medians of per-round ratios.
    ratio_go: float | None = None
    ratio_nginx: float | None = None
    # The peers whose target the row missed, when it has several (row a).
    missed: list[str] = field(default_factory=list)
    note: str = ""
    shown: str = ""  # the tubelet cell, when one number does not say it
    detail: dict[str, Any] = field(default_factory=dict)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or not theirs:
        return None
    return ours / theirs


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in {"req/s", "MiB/s"}:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(rows: list[Row]) -> str:
    """A Markdown table: it reads in a terminal and pastes into the README as it is.

    The bucket's columns appear only when a row measured the bucket (rows k and w).
    """
    with_bucket = any(row.bucket is not None for row in rows)
    header = ["row", "measure", "tubelet", "FileResponse", "nginx", "Go net/http",
              *(["bucket"] if with_bucket else []), "vs FileResponse", "vs Go",
              *(["vs bucket"] if with_bucket else []), "target", "result"]
    lines = [header]
    for row in rows:
        verdict = "-" if row.passed is None else ("pass" if row.passed else "FAIL")
        if row.missed:
            verdict += ": " + ", ".join(row.missed)
        shown_ratio = _ratio(row.ratio)
        against_bucket = row.bucket is not None
        lines.append([
            row.key, f"{row.what} ({row.unit})", row.shown or _num(row.tubelet, row.unit),
            _num(row.fileresponse, row.unit), _num(row.nginx, row.unit),
            _num(row.go, row.unit), *([_num(row.bucket, row.unit)] if with_bucket else []),
            "-" if against_bucket else shown_ratio, _ratio(row.ratio_go),
            *([shown_ratio if against_bucket else "-"] if with_bucket else []),
            row.target or "-", verdict,
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                   + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def save(path: Path, machine: dict[str, Any], settings: dict[str, Any], rows: list[Row],
         notes: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": machine,
        "settings": settings,
        "rows": [asdict(row) for row in rows],
        "notes": notes,
        "table": table(rows),
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
