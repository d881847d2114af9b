"""Before any load: every target must answer the same requests with the same bytes."""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path


def _get(url: str, range_header: str | None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url)
    if range_header:
        request.add_header("Range", range_header)
    with urllib.request.urlopen(request, timeout=60) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()


def verify(url: str, media: Path, sha256: str) -> None:
    """Raise unless url serves media: a 1 KiB range, a 16 MiB range and the whole file."""
    size = media.stat().st_size
    with open(media, "rb") as src:
        for start, length in ((4096, 1024), (size // 4, min(16 * 2**20, size // 2))):
            src.seek(start)
            expected = src.read(length)
            end = start + length - 1
            status, headers, body = _get(url, f"bytes={start}-{end}")
            if status != 206 or body != expected:
                raise RuntimeError(f"{url}: bytes={start}-{end} answered {status} with "
                                   f"{len(body)} bytes that do not match the file")
            if headers.get("content-range") != f"bytes {start}-{end}/{size}":
                raise RuntimeError(f"{url}: wrong Content-Range {headers.get('content-range')}")
    status, headers, body = _get(url, None)
    if status != 200 or hashlib.sha256(body).hexdigest() != sha256:
        raise RuntimeError(f"{url}: the whole-file GET ({status}, {len(body)} bytes) "
                           "does not match the file")
