"""A viewer socket after the upgrade (server.viewing.presence.sockets), frame by frame.

Frames are written by hand over a raw TCP connection, so the server's answers to what
real clients rarely send (unmasked frames, reserved bits, oversized or fragmented
messages, bad UTF-8, bad close codes) are seen as they arrive.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import os
import struct
from typing import Any

import pytest
from aiohttp.web_protocol import RequestHandler

from server.app import create_app
from server.viewing.presence.sockets import Heartbeat, ViewerSocket, accept_value, unmask
from server.viewing.presence.websocket import MESSAGES_KEY

from .test_presence import agent, new_video, next_state, viewers


def client_frame(opcode: int, payload: bytes = b"", *, final: bool = True, masked: bool = True,
                 rsv: int = 0) -> bytes:
    first = (0x80 if final else 0) | rsv | opcode
    size = len(payload)
    if size < 126:
        head = bytes((first, (0x80 if masked else 0) | size))
    elif size < 1 << 16:
        head = bytes((first, (0x80 if masked else 0) | 126)) + struct.pack("!H", size)
    else:
        head = bytes((first, (0x80 if masked else 0) | 127)) + struct.pack("!Q", size)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def handshake(path: str, key: str, headers: dict[str, str] | None = None) -> bytes:
    """A client's upgrade request for `path` with Sec-WebSocket-Key `key`, as UTF-8."""
    fields = {"Host": "127.0.0.1", "Upgrade": "websocket", "Connection": "Upgrade",
              "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13", **(headers or {})}
    return (f"GET {path} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in fields.items()) + "\r\n").encode()


class Raw:
    """A WebSocket client written by hand: the handshake, then frames both ways."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, client: Any, path: str, headers: dict[str, str] | None = None) -> Raw:
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(handshake(path, key, headers))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0] == "HTTP/1.1 101 Switching Protocols", lines
        answer = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        assert answer["sec-websocket-accept"] == accept_value(key)
        assert answer["upgrade"].lower() == "websocket"
        return cls(reader, writer)

    async def frame(self, within: float = 5) -> tuple[int, bytes]:
        first, second = await asyncio.wait_for(self.reader.readexactly(2), within)
        assert not second & 0x80, "server frames are not masked"
        size = second & 0x7F
        if size == 126:
            size = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return first & 0x0F, await self.reader.readexactly(size)

    async def until(self, opcode: int, within: float = 5) -> bytes:
        async with asyncio.timeout(within):
            while True:
                got, payload = await self.frame(within)
                if got == opcode:
                    return payload

    async def closed_with(self, within: float = 5) -> int:
        """The code of the server's close frame; the connection then ends."""
        payload = await self.until(0x8, within)
        assert await asyncio.wait_for(self.reader.read(), within) == b""
        return struct.unpack("!H", payload[:2])[0]

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def watch(client):
    video_id = await new_video(client)
    path = f"/videos/{video_id}/active-viewers"
    sockets: list[Raw] = []

    async def open_one(i: int = 1) -> Raw:
        raw = await Raw.open(client, path, agent(i))
        state = json.loads((await raw.until(0x1)).decode())
        assert state["video_id"] == video_id
        sockets.append(raw)
        return raw

    yield open_one
    for raw in sockets:
        raw.close()


@pytest.mark.parametrize(("data", "code"), [
    (client_frame(0x1, b'{"type":"x"}', masked=False), 1002),
    (client_frame(0x1, b"{}", rsv=0x40), 1002),
    (client_frame(0x3, b""), 1002),
    (client_frame(0x0, b"orphan"), 1002),
    (client_frame(0x9, b"p" * 126), 1002),
    (client_frame(0x9, b"", final=False), 1002),
    (client_frame(0x1, b"x" * 5000), 1009),
    (client_frame(0x1, b"\xff\xfe"), 1007),
    (client_frame(0x1, b"{", final=False) + client_frame(0x2, b"}"), 1002),
    (client_frame(0x1, b"x" * 3000, final=False) + client_frame(0x0, b"y" * 3000), 1009),
    (client_frame(0x8, b"\x03"), 1002),
    (client_frame(0x8, struct.pack("!H", 1005)), 1002),
    (client_frame(0x8, struct.pack("!H", 1000) + b"\xff"), 1007),
])
async def test_frames_against_the_rules_close_the_socket(watch, data, code):
    raw = await watch()
    raw.send(data)
    assert await raw.closed_with() == code


@pytest.mark.parametrize("payload", [b"", struct.pack("!H", 1000),
                                     struct.pack("!H", 4000) + b"bye"])
async def test_a_client_close_is_answered_and_the_viewer_leaves(watch, payload):
    raw = await watch(1)
    other = await watch(2)
    raw.send(client_frame(0x8, payload))
    assert await raw.closed_with() == 1000
    while True:
        state = json.loads((await other.until(0x1)).decode())
        if state["active_viewers"] == 1:
            break


async def test_ping_is_answered_with_its_payload(watch):
    raw = await watch()
    raw.send(client_frame(0x9, b"hello"))
    assert await raw.until(0xA) == b"hello"


async def test_a_fragmented_message_is_read_whole(watch):
    raw = await watch()
    raw.send(client_frame(0x1, b'{"type":', final=False) + client_frame(0x9, b"mid")
             + client_frame(0x0, b'"nope"}'))
    assert await raw.until(0xA) == b"mid"  # a control frame may come between fragments
    error = json.loads((await raw.until(0x1)).decode())
    assert error["error"]["code"] == "bad_message"
    assert error["error"]["message"] == "Unknown message type"


async def test_frames_split_across_reads_and_joined_in_one(watch):
    raw = await watch()
    data = client_frame(0x2, b"b" * 300) + client_frame(0x1, b"[]")
    for i in range(len(data)):  # one byte at a time
        raw.send(data[i:i + 1])
        await raw.writer.drain()
    assert json.loads((await raw.until(0x1)).decode())["error"]["message"] == (
        "Send JSON text messages")
    assert json.loads((await raw.until(0x1)).decode())["error"]["message"] == (
        "Messages must be JSON objects")
    raw.send(client_frame(0x9, b"1") + client_frame(0x9, b"2"))
    assert await raw.until(0xA) == b"1"
    assert await raw.until(0xA) == b"2"


async def test_an_upgraded_connection_leaves_aiohttp(client, watch):
    raw = await watch()
    gc.collect()
    server = client.server.runner.server
    # aiohttp's connection handler let go: the server holds only the test client's own
    # (none, between requests), and no RequestHandler object is left for the socket.
    assert not [h for h in server._connections if h.transport is None]
    handlers = [o for o in gc.get_objects() if isinstance(o, RequestHandler)]
    assert all(h.transport is not None for h in handlers)
    assert sum(isinstance(o, ViewerSocket) for o in gc.get_objects()) >= 1
    raw.send(client_frame(0x9, b"still here"))
    assert await raw.until(0xA) == b"still here"


async def test_a_silent_client_is_pinged_and_dropped(aiohttp_client, make_config):
    client = await aiohttp_client(create_app(make_config(heartbeat=0.5)))
    video_id = await new_video(client)
    path = f"/videos/{video_id}/active-viewers"
    quiet = await Raw.open(client, path, agent(1))
    watcher = await client.ws_connect(path, headers=agent(2))
    await next_state(watcher, viewers(2))

    async def silent() -> None:
        assert await quiet.until(0x9, within=3) == b""  # pinged within 1.25 intervals
        # Never answered: dropped half an interval later, and the count follows.
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(quiet.reader.read(), 3)  # ends: the server hung up

    # The aiohttp client answers pings while it reads, so it reads meanwhile.
    await asyncio.gather(silent(), next_state(watcher, viewers(1), within=6))
    quiet.close()
    await watcher.close()


async def test_an_answered_ping_keeps_the_socket(aiohttp_client, make_config):
    client = await aiohttp_client(create_app(make_config(heartbeat=0.5)))
    video_id = await new_video(client)
    raw = await Raw.open(client, f"/videos/{video_id}/active-viewers", agent(1))
    for _ in range(4):
        await raw.until(0x9, within=3)
        raw.send(client_frame(0xA))
    raw.send(client_frame(0x9, b"alive"))
    assert await raw.until(0xA) == b"alive"
    raw.close()


def test_heartbeat_sweep_pings_quiet_sockets_then_drops_them():
    now = [100.0]

    class Fake:
        def __init__(self, heard: float) -> None:
            self.heard = heard
            self.pinged = 0.0
            self.dropped = False

        def ping(self, at: float) -> None:
            self.pinged = at

        def drop(self) -> None:
            self.dropped = True

    beat = Heartbeat(20.0, clock=lambda: now[0])
    fresh, quiet = Fake(95.0), Fake(80.0)
    beat.sockets.update((fresh, quiet))  # type: ignore[arg-type]
    beat.sweep()
    assert (fresh.pinged, quiet.pinged) == (0.0, 100.0)
    now[0] = 109.0
    beat.sweep()
    assert not quiet.dropped
    now[0] = 110.0
    beat.sweep()
    assert quiet.dropped and not fresh.dropped


def test_unmask_is_xor_with_the_repeated_key():
    mask = b"\x01\x02\x03\x04"
    data = bytes(range(11))
    assert unmask(data, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert unmask(b"", mask) == b""


async def test_a_flood_of_empty_fragments_is_refused_at_once(watch):
    raw = await watch()
    raw.send(client_frame(0x1, b"{", final=False) + client_frame(0x0, b"", final=False) * 100)
    assert await raw.closed_with() == 1008


async def test_a_client_that_sends_but_never_reads_is_dropped(watch):
    raw = await watch()
    ping = client_frame(0x9, b"p" * 125)
    with contextlib.suppress(ConnectionError):
        for _ in range(400):  # 50 KB of pings a round, never reading the pongs
            raw.send(ping * 400)
            await asyncio.wait_for(raw.writer.drain(), 5)
            await asyncio.sleep(0)
    # The server hung up: reading finds the end of what it had sent.
    with contextlib.suppress(ConnectionError):
        await asyncio.wait_for(raw.reader.read(), 10)


async def test_a_message_sent_with_the_handshake_is_read_after_the_welcome(client):
    video_id = await new_video(client)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(handshake(f"/videos/{video_id}/active-viewers", key)
                 + client_frame(0x1, b'{"type": "nope"}'))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    raw = Raw(reader, writer)
    first = json.loads((await raw.until(0x1)).decode())
    assert first["video_id"] == video_id  # the welcome comes first
    second = json.loads((await raw.until(0x1)).decode())
    assert second["error"]["message"] == "Unknown message type"
    raw.close()


async def test_a_key_that_is_not_ascii_is_a_bad_request(client):
    video_id = await new_video(client)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(handshake(f"/videos/{video_id}/active-viewers",
                           "caf\u00e9caf\u00e9caf\u00e9caf\u00e9=="))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 400 ")
    writer.close()


async def test_a_client_close_during_a_server_close_ends_it_at_once(client):
    app = client.server.app
    video_id = await new_video(client)
    raw = await Raw.open(client, f"/videos/{video_id}/active-viewers", agent(1))
    await raw.until(0x1)
    sock = next(iter(app[MESSAGES_KEY].heartbeat.sockets))
    closing = asyncio.ensure_future(sock.close(4000, b"bye"))
    assert await raw.until(0x8) == struct.pack("!H", 4000) + b"bye"
    started = asyncio.get_running_loop().time()
    # Another frame, then the close answer, in one write: the close is still seen.
    raw.send(client_frame(0x1, b"{}") + client_frame(0x8, struct.pack("!H", 4000)))
    await asyncio.wait_for(closing, 5)
    assert asyncio.get_running_loop().time() - started < 2  # not CLOSE_TIMEOUT
    raw.close()
