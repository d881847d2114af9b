"""What a stored file is: container sniffing from magic bytes, and duration via ffprobe."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
from pathlib import Path

# Enough of the file to see an EBML header's DocType.
SNIFF_BYTES = 64

QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


def sniff_container(head: bytes) -> tuple[str, str] | None:
    """(content type, file extension) judged from the first bytes, or None.

    The client's filename and Content-Type are never consulted.
    """
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"qt  ":
            return "video/quicktime", "mov"
        if brand.startswith(b"3g"):
            return "video/3gpp", "3gp"
        return "video/mp4", "mp4"
    if len(head) >= 8 and head[4:8] in QUICKTIME_ATOMS and int.from_bytes(head[:4]) >= 8:
        return "video/quicktime", "mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        window = head[:SNIFF_BYTES]
        if b"webm" in window:
            return "video/webm", "webm"
        if b"matroska" in window:
            return "video/x-matroska", "mkv"
        return None
    if head.startswith(b"OggS\x00"):
        return "video/ogg", "ogv"
    return None


def parse_duration(ffprobe_json: bytes) -> float | None:
    try:
        value = float(json.loads(ffprobe_json)["format"]["duration"])
    except (ValueError, KeyError, TypeError):
        return None
    return value if math.isfinite(value) and value > 0 else None


async def probe_duration(path: Path, limit: float = 30.0) -> float | None:
    """Duration in seconds by ffprobe, or None when ffprobe is absent or cannot tell."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None
    proc = await asyncio.create_subprocess_exec(
        ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "json",
        str(path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        return None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return parse_duration(out) if proc.returncode == 0 else None
