"""The Go peer: Go's net/http serving the same file (`main.go`), compiled at bench time.

Debian's golang-go is enough: the program uses the standard library only, so the build
needs no module and no network. Its build cache and GOPATH are in the bench's workspace,
so it builds for any user, root included, with or without a HOME.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "main.go"


def go_binary() -> str | None:
    return shutil.which("go")


def build(go: str, into: Path, log: Path) -> Path:
    """Compile main.go to into/go-peer; raise with the compiler's output when it fails."""
    into.mkdir(parents=True, exist_ok=True)
    binary = into / "go-peer"
    env = {
        **os.environ,
        "GOCACHE": str(into / "cache"),
        "GOPATH": str(into / "gopath"),
        # Whatever the caller's Go settings: no workspace, no module flags, no toolchain
        # download, no proxy (nothing to fetch), no C compiler (a static binary).
        "GOFLAGS": "", "GOWORK": "off", "GOTOOLCHAIN": "local", "GOPROXY": "off",
        "CGO_ENABLED": "0",
    }
    done = subprocess.run([go, "build", "-trimpath", "-o", str(binary), str(SOURCE)],
                          cwd=into, env=env, capture_output=True, text=True, check=False)
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"go build failed ({done.returncode}): "
                           + (done.stdout + done.stderr).strip()[-500:])
    return binary


def environment() -> dict[str, str]:
    """One core for Go code, like the other peers' single process."""
    return {**os.environ, "GOMAXPROCS": "1"}


def argv(binary: Path, file: Path, port: int) -> list[str]:
    return [str(binary), str(file), str(port)]
