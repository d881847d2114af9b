"""Child processes of the bench: started, pinned to CPUs, measured and stopped by pid."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path


def raise_fd_limit() -> int:
    """Lift the soft open-file limit to the hard one; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(argv: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None,
          cpus: set[int] | None = None) -> subprocess.Popen[bytes]:
    """Start argv with output to log_path, pinned to `cpus` (None: anywhere)."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(list(argv), env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    if cpus:
        # Pinned right after the start: forked workers inherit the mask.
        pin(proc.pid, cpus)
    return proc


@contextlib.contextmanager
def running(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """The block with proc running; stopped when it ends, however it ends."""
    try:
        yield proc
    finally:
        stop(proc)


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of pid: a Go program has several before it can be pinned.

    Threads started later inherit the mask of the thread that starts them; the
    list is read again until it holds no thread not yet pinned.
    """
    done: set[int] = set()
    while fresh := set(threads(pid)) - done:
        for tid in fresh:
            # A thread may end meanwhile.
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, cpus)
        done |= fresh


def threads(pid: int) -> list[int]:
    try:
        return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return [pid]


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_http(url: str, proc: subprocess.Popen[bytes], log_path: Path,
              timeout: float = 60.0) -> None:
    """Wait until `url` answers at all (any status), or fail with the child's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n"
                               + tail(log_path))
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s:\n" + tail(log_path))


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def listener_pid(port: int) -> int | None:
    """The process of this user that listens on 127.0.0.1:port (IPv4), if any.

    For a server the bench did not start (the S3 service), so its CPU time can be
    read like the others'.
    """
    inodes = set()
    try:
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in table:
        fields = line.split()
        # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
            inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            for fd in (proc_dir / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc_dir.name)
        except OSError:
            continue
    return None


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (WORKERS forks children)."""
    found = [pid]
    for current in found:
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                found += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def rss_bytes(pid: int) -> int:
    """Resident memory of pid and its descendants, from /proc/<pid>/status VmRSS."""
    total = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
                break
    return total


def cpu_seconds(pid: int) -> float:
    """User+system CPU time consumed so far by pid and its descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


class RssSampler:
    """Samples a process tree's RSS on a thread while a load runs."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self.samples.append(rss_bytes(self.pid))
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(rss_bytes(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(rss_bytes(self.pid))

    @property
    def before(self) -> int:
        return self.samples[0]

    @property
    def peak(self) -> int:
        return max(self.samples)
