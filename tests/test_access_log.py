"""The access log's %b is what the stream really wrote, on both response paths.

aiohttp's %b is the size of the response written, header block included; bodies sent
by sendfile(2) go past its writer and are added by the stream's responses. A response
cut short by its client counts the body bytes handed to the kernel, not those promised.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest
from aiohttp import ClientSession

from .conftest import fake_mp4, session_upload
from .test_http_hardening import Served, serve  # noqa: F401

SMALL = 300_000
LARGE = 64 * 1024 * 1024


def media(size: int) -> bytes:
    """A file that sniffs as MP4, made quickly at any size."""
    head = fake_mp4(4096)
    return head + bytes(size - len(head))


async def uploaded(served: Served, data: bytes) -> str:
    async with ClientSession() as session:
        _, video_id = await session_upload(session, served, data)
    return f"/videos/{video_id}/stream"


async def logged(served: Served, url: str, count: int = 1,
                 method: str = "GET") -> list[tuple[int, int]]:
    """(status, %b) of the access log lines for `method` `url`, once `count` are there."""
    deadline = time.monotonic() + 10
    while True:
        lines = [line.split(" ", 2) for line in served.access if f'"{method} {url} ' in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return [(int(status), int(size)) for status, size, _ in lines]
        await asyncio.sleep(0.05)


async def exchange(served: Served, url: str, headers: str) -> bytes:
    """One request on a connection of its own; every byte the server sent, to EOF."""
    reader, writer = await served.connect()
    try:
        writer.write(f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n"
                     .encode())
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


@pytest.mark.parametrize(("headers", "status", "body"), [
    ("", 200, SMALL),  # the direct path: whole file
    ("Range: bytes=1000-200999\r\n", 206, 200_000),  # the direct path: one range
    ("Range: bytes=1000-200999\r\nIf-None-Match: \"other\"\r\n", 206, 200_000),  # general
    ("If-Range: \"other\"\r\nRange: bytes=0-9\r\n", 200, SMALL),  # general, whole file
    ("Range: bytes=0-99999,200000-299999\r\n", 206, None),  # general, multipart
])
async def test_complete_responses_log_every_byte_sent(serve, headers, status, body):
    served = await serve()
    url = await uploaded(served, media(SMALL))
    reply = await exchange(served, url, headers)
    head, _, received = reply.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    if body is not None:
        assert len(received) == body
    assert await logged(served, url) == [(status, len(reply))]


async def test_head_logs_the_header_block(serve):
    served = await serve()
    url = await uploaded(served, media(SMALL))
    reader, writer = await served.connect()
    try:
        writer.write(f"HEAD {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"\r\n\r\n")
    assert await logged(served, url, method="HEAD") == [(200, len(reply))]


def reset(sock: socket.socket) -> None:
    """Close with a TCP RST, as a player abandoning a download does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("headers", [
    "",  # the direct path
    "If-None-Match: \"other\"\r\n",  # the general path
])
async def test_client_that_hangs_up_early_is_logged_with_what_was_sent(serve, headers):
    served = await serve()
    url = await uploaded(served, media(LARGE))
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    # A small window, so the server's buffers cannot take the whole body.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    received = 0
    try:
        await loop.sock_connect(sock, ("127.0.0.1", served.port))
        await loop.sock_sendall(sock, f"GET {url} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        first = b""
        while received < 64 * 1024:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 16 * 1024), 5)
            assert chunk, "the server hung up"
            first = first or chunk
            received += len(chunk)
        assert first.startswith(b"HTTP/1.1 200 ")
        await asyncio.sleep(0.2)  # the server is waiting for the socket to drain
    finally:
        reset(sock)
    [(status, size)] = await logged(served, url)
    assert status == 200
    # At least what this client read; at most what the two socket buffers could hold
    # (a few MiB on loopback), far below the 64 MiB promised.
    assert received <= size < LARGE // 4, (received, size)


async def test_direct_and_general_paths_log_alike(serve):
    """The same response sent by either path is logged with the same size."""
    served = await serve()
    url = await uploaded(served, media(SMALL))
    async with ClientSession() as session, session.head(served.make_url(url)) as resp:
        etag = resp.headers["ETag"]
    sizes: list[int] = []
    for extra in ("Range: bytes=10-19\r\n", f"Range: bytes=10-19\r\nIf-Range: {etag}\r\n"):
        reply = await exchange(served, url, extra)
        sizes.append(len(reply))
    assert await logged(served, url, 2) == [(206, sizes[0]), (206, sizes[1])]
    assert sizes[0] == sizes[1]
