"""A viewer's WebSocket after the upgrade, held in a few hundred bytes.

aiohttp keeps, for every open WebSocket, the parsed request head, its connection handler
with its HTTP parser, the handler's task and coroutine frames, a reader queue, a writer and
two heartbeat timers: about 16 KB per socket (bench/NOTES.md). A presence socket needs
none of that once it is open: the server writes it whole frames (`room.text_frame`) and
reads at most a few small JSON messages. So the handler answers the upgrade itself and hands
the connection from aiohttp to a `ViewerSocket` (`server.core.http.take_over`): a protocol
with a frame parser (RFC 6455, 5), no task, and a place in one `Heartbeat` sweep that pings
quiet sockets and drops those that do not answer, as aiohttp's heartbeat did.

Frames from the client must be masked, with no reserved bits and no extensions; a message
may be fragmented (in at most 64 pieces) and may hold at most `max_message` bytes; text
must be UTF-8. A frame breaking those rules closes the socket with 1002 (protocol error),
1009 (too big), 1008 (too many fragments) or 1007 (not UTF-8). A client that sends but
does not read what it is answered is dropped once 256 KiB wait for it. A client's close
frame is answered with 1000 and the connection is closed; a close the server starts waits
`close_timeout` seconds for the client's answer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__package__)

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

PROTOCOL_ERROR = 1002
NOT_UTF8 = 1007
POLICY = 1008
TOO_BIG = 1009
# Fragments of one message past which it is refused (each may be empty).
MAX_FRAGMENTS = 64
# Unsent bytes past which a client that sends but does not read is dropped.
WRITE_LIMIT = 256 * 1024
NORMAL = 1000
# Close codes a peer may send (RFC 6455, 7.4.1, and the registry's 1012-1014).
_VALID_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013,
                          1014})


def accept_value(key: str) -> str:
    """Sec-WebSocket-Accept for a handshake's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode()


def frame(opcode: int, payload: bytes = b"") -> bytes:
    """One final, unmasked frame, as a server sends."""
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 1 << 16:
        return bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big") + payload


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return frame(OP_CLOSE, code.to_bytes(2, "big") + reason[:123])


PING = frame(OP_PING)


def unmask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return payload
    size = len(payload)
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        size, "little")


def valid_close_code(code: int) -> bool:
    return code in _VALID_CODES or 3000 <= code <= 4999


class FrameError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Owner(Protocol):
    """Who reads a socket's messages and learns that it closed."""

    def message(self, sock: ViewerSocket, text: str | None) -> None:
        """A complete message: its text, or None for a binary one."""

    def lost(self, sock: ViewerSocket) -> None:
        """The connection is gone."""


class ViewerSocket(asyncio.Protocol):
    """An open WebSocket: parses the client's frames, writes the server's."""

    __slots__ = ("transport", "owner", "closed", "heard", "pinged", "_buf", "_parts",
                 "_part_op", "_part_size", "_closing", "_closed_waiter", "_heartbeat",
                 "_max_message", "_close_timeout")

    def __init__(self, transport: asyncio.Transport | None, owner: Owner, heartbeat: Heartbeat,
                 max_message: int, close_timeout: float) -> None:
        self.transport: asyncio.Transport | None = transport
        self.owner = owner
        self.closed = False
        self.heard = time.monotonic()
        self.pinged = 0.0
        self._buf = b""
        self._parts: list[bytes] | None = None
        self._part_op = 0
        self._part_size = 0
        self._closing = False
        self._closed_waiter: asyncio.Future[None] | None = None
        self._heartbeat = heartbeat
        self._max_message = max_message
        self._close_timeout = close_timeout
        heartbeat.sockets.add(self)

    # --- writing -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if self._closing or transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > WRITE_LIMIT:
            # Pongs and error replies to a client that never reads them.
            log.debug("dropping a viewer socket that does not read")
            transport.abort()
            return
        transport.write(data)

    def send_text(self, text: str) -> None:
        self.write(frame(OP_TEXT, text.encode()))

    async def close(self, code: int, message: bytes = b"") -> None:
        """Send a close frame and wait (at most close_timeout) for the client's answer."""
        transport = self.transport
        if self._closing or transport is None or transport.is_closing():
            return
        self._closing = True
        transport.write(close_frame(code, message))
        waiter = self._closed_waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(waiter, self._close_timeout)
        except TimeoutError:
            pass
        finally:
            transport.close()

    def _fail(self, code: int, reason: str) -> None:
        log.debug("closing a viewer socket: %s (%d)", reason, code)
        if not self._closing and self.transport is not None:
            self._closing = True
            self.transport.write(close_frame(code, reason.encode()))
            self.transport.close()

    # --- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass  # made by aiohttp's server; this socket was handed the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self._buf = b""
        self._parts = None
        self._heartbeat.sockets.discard(self)
        waiter = self._closed_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.owner.lost(self)

    def eof_received(self) -> bool:
        return False  # the transport closes itself

    def data_received(self, data: bytes) -> None:
        self.heard = time.monotonic()
        self.pinged = 0.0
        if self.closed:
            return
        buf = self._buf + data if self._buf else data
        try:
            end = self._frames(buf)
        except FrameError as exc:
            self._buf = b""
            self._fail(exc.code, str(exc))
            return
        self._buf = buf[end:] if end < len(buf) else b""

    def _frames(self, buf: bytes) -> int:
        """Handle every complete frame in `buf`; the offset of what is left."""
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            if first & 0x70:
                raise FrameError(PROTOCOL_ERROR, "reserved bits set")
            if not second & 0x80:
                raise FrameError(PROTOCOL_ERROR, "client frames must be masked")
            opcode = first & 0x0F
            final = bool(first & 0x80)
            length = second & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[start:start + 2], "big")
                start += 2
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[start:start + 8], "big")
                start += 8
            if opcode >= OP_CLOSE:
                if length > 125 or not final:
                    raise FrameError(PROTOCOL_ERROR, "bad control frame")
            elif length > self._max_message:
                raise FrameError(TOO_BIG, "message too big")
            end = start + 4 + length
            if end > size:
                break
            payload = unmask(buf[start + 4:end], buf[start:start + 4])
            pos = end
            self._frame(opcode, final, payload)
            transport = self.transport
            if transport is None or transport.is_closing():
                return size  # failed, or closed after the client's close frame
        return pos

    def _frame(self, opcode: int, final: bool, payload: bytes) -> None:
        if opcode == OP_PING:
            self.write(frame(OP_PONG, payload))
        elif opcode == OP_PONG:
            pass  # any frame counts as a sign of life
        elif opcode == OP_CLOSE:
            self._close_received(payload)
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._parts is not None:
                raise FrameError(PROTOCOL_ERROR, "a message began inside another")
            if final:
                self._message(opcode, payload)
            else:
                self._parts = [payload]
                self._part_op = opcode
                self._part_size = len(payload)
        elif opcode == OP_CONTINUATION:
            parts = self._parts
            if parts is None:
                raise FrameError(PROTOCOL_ERROR, "continuation of no message")
            parts.append(payload)
            self._part_size += len(payload)
            if self._part_size > self._max_message:
                raise FrameError(TOO_BIG, "message too big")
            if len(parts) > MAX_FRAGMENTS:
                raise FrameError(POLICY, "too many fragments")
            if final:
                self._parts = None
                self._message(self._part_op, b"".join(parts))
        else:
            raise FrameError(PROTOCOL_ERROR, f"unknown opcode {opcode}")

    def _message(self, opcode: int, payload: bytes) -> None:
        if self._closing:
            return  # the server is closing: only the client's close frame matters now
        if opcode == OP_BINARY:
            self.owner.message(self, None)
            return
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(NOT_UTF8, "text is not UTF-8") from None
        self.owner.message(self, text)

    def _close_received(self, payload: bytes) -> None:
        if len(payload) == 1:
            raise FrameError(PROTOCOL_ERROR, "close frame of one byte")
        if payload:
            if not valid_close_code(int.from_bytes(payload[:2], "big")):
                raise FrameError(PROTOCOL_ERROR, "invalid close code")
            try:
                payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise FrameError(NOT_UTF8, "close reason is not UTF-8") from None
        transport = self.transport
        if transport is None:
            return
        if not self._closing:  # the client began: answer, then hang up
            self._closing = True
            transport.write(close_frame(NORMAL))
        transport.close()

    # --- heartbeat ------------------------------------------------------------------

    def ping(self, now: float) -> None:
        self.pinged = now
        self.write(PING)

    def drop(self) -> None:
        """No answer to a ping: the connection is dead."""
        if self.transport is not None:
            self.transport.abort()


class Heartbeat:
    """Pings sockets quiet for `interval` seconds; drops those silent `interval`/2 after.

    One sweep over every socket, four times per interval: a socket quiet for 1-1.25
    intervals gets a ping, one that has sent nothing 0.5-0.75 intervals after it is
    dropped. A socket costs one set entry, not timers of its own.
    """

    def __init__(self, interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.sockets: set[ViewerSocket] = set()
        self._clock = clock

    def sweep(self) -> None:
        now = self._clock()
        quiet = now - self.interval
        grace = self.interval / 2
        for sock in list(self.sockets):
            if sock.pinged:
                if now - sock.pinged >= grace:
                    sock.drop()
            elif sock.heard <= quiet:
                sock.ping(now)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval / 4)
            self.sweep()
