"""What the numbers were measured on."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _version(argv: list[str], pattern: str) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    match = re.search(pattern, out.stdout + out.stderr)
    return match.group(1) if match else None


def _aiohttp_speedups() -> dict[str, bool]:
    """Whether aiohttp runs its C parser and WebSocket mask: the hot path depends on both."""
    from aiohttp import http_parser, http_websocket

    reader = getattr(http_websocket, "WebSocketReader", None)
    return {
        "c_http_parser": http_parser.HttpRequestParser.__module__ == "aiohttp._http_parser",
        "c_websocket_reader": reader is not None and "_c" in getattr(reader, "__module__", ""),
        "no_extensions_env": bool(os.environ.get("AIOHTTP_NO_EXTENSIONS")),
    }


def machine_info() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "aiohttp": aiohttp.__version__,
        "aiohttp_speedups": _aiohttp_speedups(),
        "wrk": _version(["wrk", "-v"], r"wrk ([^ ]+)"),
        "nginx": _version(["nginx", "-v"], r"nginx/([^ \s]+)"),
        "go": _version(["go", "version"], r"go version go([^ ]+)"),
    }


def describe(info: dict[str, Any]) -> str:
    return (f"{info['nproc']} cores ({info['cpu_model']}), {info['memory_gib']} GiB, "
            f"Linux {info['kernel']}, Python {info['python']}, aiohttp {info['aiohttp']}, "
            f"wrk {info['wrk'] or 'absent'}, nginx {info['nginx'] or 'absent'}, "
            f"Go {info['go'] or 'absent'}")
