"""curl and ffprobe against a real server socket, as a user would run them."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from pathlib import Path

import pytest
from aiohttp import ClientSession

from server.app import create_app

from .conftest import fake_mp4, require_tool, session_upload


async def run(*args: str) -> tuple[int, bytes, bytes]:
    # Asynchronous, so the server on this same event loop keeps answering.
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out, err


def top_level_atoms(data: bytes) -> list[str]:
    atoms, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8:offset + 16])[0]
        atoms.append(kind.decode("latin-1"))
        if size < 8:
            break
        offset += size
    return atoms


@pytest.fixture
async def server(aiohttp_server, config):
    return await aiohttp_server(create_app(config))


async def test_curl_range_and_resume(server, tmp_path: Path):
    curl = require_tool("curl")
    data = fake_mp4(3 * 1024 * 1024 + 17)
    async with ClientSession() as session:
        _, video_id = await session_upload(session, server, data)
    url = str(server.make_url(f"/videos/{video_id}/stream"))

    code, out, err = await run(curl, "-sS", "-r", "0-1023", "-D", str(tmp_path / "h"), url)
    assert code == 0, err
    assert out == data[:1024]
    headers = (tmp_path / "h").read_text().lower()
    assert headers.startswith("http/1.1 206")
    assert f"content-range: bytes 0-1023/{len(data)}" in headers

    # A download interrupted part-way resumes with -C - and ends byte-identical.
    partial = tmp_path / "video.mp4"
    partial.write_bytes(data[:1_000_000])
    code, _, err = await run(curl, "-sS", "-f", "-C", "-", "-o", str(partial), url)
    assert code == 0, err
    assert partial.read_bytes() == data

    # Resuming a complete file: the server answers 416 and curl treats it as done.
    code, _, err = await run(curl, "-sS", "-C", "-", "-o", str(partial), url)
    assert code == 0, err
    assert partial.read_bytes() == data


async def test_ffprobe_seeks_to_moov_at_the_end(server, real_mp4: Path, caplog):
    ffprobe = require_tool("ffprobe")
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    raw = real_mp4.read_bytes()
    atoms = top_level_atoms(raw)
    assert atoms.index("moov") > atoms.index("mdat"), atoms  # index at the end
    async with ClientSession() as session:
        _, video_id = await session_upload(session, server, raw)
    url = str(server.make_url(f"/videos/{video_id}/stream"))
    code, out, err = await run(ffprobe, "-v", "error", "-show_format", "-show_streams",
                               "-of", "json", url)
    assert code == 0, err
    info = json.loads(out)
    assert float(info["format"]["duration"]) == pytest.approx(12, abs=0.5)
    kinds = {s["codec_type"] for s in info["streams"]}
    assert kinds == {"video", "audio"}
    # ffprobe reached the index by seeking: some answers were partial content.
    statuses = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"
                and f"/videos/{video_id}/stream" in r.getMessage()]
    assert any('" 206 ' in line for line in statuses), statuses
