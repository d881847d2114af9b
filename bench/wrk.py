"""Drives wrk (Debian's package) with a Lua script per row, and reads its summary back."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import procs

# Each row's request: random aligned ranges of `length` bytes, or the whole file (length 0).
# A fixed seed gives every target the same sequence of ranges.
SCRIPT = """\
local size = {size}
local length = {length}
math.randomseed(20240501)

if length > 0 then
    local slots = math.floor((size - length) / {align})
    request = function()
        local first = math.random(0, slots) * {align}
        local range = "bytes=" .. first .. "-" .. (first + length - 1)
        return wrk.format(nil, nil, {{["Range"] = range}})
    end
end

done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        '\\n@@{{"requests": %d, "bytes": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
        '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}}\\n',
        summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write,
        e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    bytes: int
    seconds: float
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    server_cpu_seconds: float
    server_rss_before: int
    server_rss_peak: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def mib_per_s(self) -> float:
        return self.bytes / self.seconds / 2**20

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def as_json(self) -> dict[str, object]:
        return {
            "requests": self.requests, "bytes": self.bytes, "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1), "mib_per_s": round(self.mib_per_s, 1),
            "errors": self.errors, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
            "server_cpu_seconds": round(self.server_cpu_seconds, 2),
            "server_rss_before_mib": round(self.server_rss_before / 2**20, 1),
            "server_rss_peak_mib": round(self.server_rss_peak / 2**20, 1),
        }


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def run(url: str, *, size: int, length: int, connections: int, duration: float,
        server_pid: int | None, cpus: set[int] | None, threads: int = 1) -> WrkResult:
    """One wrk run against url; length 0 asks for the whole file, else random ranges.

    The server's CPU time and RSS are read from server_pid's process tree; None (a
    server that is not a process of this machine) leaves them at zero.
    """
    binary = wrk_binary()
    if binary is None:
        raise RuntimeError("wrk is not installed")
    align = 1024 if length <= 1024 else 2**20
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(SCRIPT.format(size=size, length=length, align=align))
    try:
        argv = [binary, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
                "--timeout", "10s", "-s", script.name, url]
        cpu_before = procs.cpu_seconds(server_pid) if server_pid else 0.0
        # pid 0 has no /proc entry: its RSS reads as 0.
        with procs.RssSampler(server_pid or 0) as rss:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
            if cpus:
                procs.pin(proc.pid, cpus)
            out, _ = proc.communicate(timeout=duration + 60)
        cpu = procs.cpu_seconds(server_pid) - cpu_before if server_pid else 0.0
    finally:
        Path(script.name).unlink()
    summary = next((line[2:] for line in out.splitlines() if line.startswith("@@")), None)
    if proc.returncode != 0 or summary is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out}")
    data = json.loads(summary)
    return WrkResult(
        requests=data["requests"], bytes=data["bytes"], seconds=data["duration_us"] / 1e6,
        errors={k: data[k] for k in ("connect", "read", "write", "status", "timeout")},
        p50_ms=data["p50_us"] / 1000, p99_ms=data["p99_us"] / 1000,
        server_cpu_seconds=cpu, server_rss_before=rss.before, server_rss_peak=rss.peak,
    )


def settle(seconds: float = 1.0) -> None:
    """A pause between runs so TIME_WAIT sockets and page-cache writeback do not leak over."""
    time.sleep(seconds)
