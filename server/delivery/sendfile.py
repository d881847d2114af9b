"""Writing responses to the socket: file ranges by sendfile(2), and whole responses direct.

The stream route's usual request, a GET of one range or of the whole file, is answered
by writing a header block built here and the body by sendfile(2), with the socket
corked between them so a small response leaves as one segment. bench/NOTES.md has the
measurements that led here. On uvloop (EVENT_LOOP=uvloop) the same sendfile(2) calls go
to the connection's own descriptor; only the wait for room differs (`_sendfile_polled`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import SERVER_SOFTWARE

from server.core.http import TakenOver
from server.core.storage import StorageUnavailable

from .ranges import format_http_date

log = logging.getLogger(__name__)


def plain_socket(transport: asyncio.BaseTransport | None) -> Any:
    """The transport's socket when bytes may be written to it directly (no TLS)."""
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return None
    return transport.get_extra_info("socket")


def cork(sock: Any, on: bool) -> None:
    """Hold (or release) partial segments, so header block and body share a segment."""
    if sock is not None and sock.fileno() != -1:
        try:  # noqa: SIM105 - twice per request; suppress() costs a context manager
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1 if on else 0)
        except OSError:
            pass  # the connection is gone; the send that follows says so


async def sendfile(transport: asyncio.WriteTransport | None, sock: Any, fd: int, offset: int,
                   count: int, response: FileBodyResponse | SentResponse) -> None:
    """Send `count` bytes of the file `fd` from `offset` with sendfile(2).

    The first sendfile(2) is made here, at once, when nothing is queued ahead of it
    on the plain socket `sock`: a small range goes out in that one call. loop.sendfile
    sends what the socket did not take; each call of it costs a future, an fstat
    and a seek, four epoll changes and an extra loop iteration, which is more than
    the send itself for a 1 KiB range. The bytes sent are added to `response.file_bytes`
    as they go, so a response cut short is logged with what it really sent.
    """
    if transport is None or transport.is_closing():
        raise ConnectionResetError("client went away")
    if sock is not None and count and not transport.get_write_buffer_size():
        sent = sendfile_once(sock.fileno(), fd, offset, count)
        response.file_bytes += sent
        offset += sent
        count -= sent
    if count:
        if sock is not None and not isinstance(asyncio.get_running_loop(),
                                               asyncio.BaseEventLoop):
            await _sendfile_polled(transport, sock, fd, offset, count, response)
        else:
            await _sendfile_rest(transport, fd, offset, count, response)


async def _sendfile_rest(transport: asyncio.WriteTransport, fd: int, offset: int, count: int,
                         response: FileBodyResponse | SentResponse) -> None:
    """loop.sendfile, over an open file description of its own.

    When loop.sendfile fails part-way, the only account of how far it got is the
    file position, which it sets with lseek(2) on the descriptor it was given, on
    failure and on success alike (its read/write fallback seeks too). The cached
    descriptor is shared by every request streaming the file, so its position tells
    nothing; reopening /proc/self/fd/N gives a description of the same file (even one
    deleted since) that only this call moves. That open and close happen only for a
    body the socket did not take at once, where they cost little beside the send.
    A send cancelled outright (at shutdown) is not seeked, and counts nothing here.
    """
    # procfs, not the disk: the file is open already, nothing here waits on storage.
    with open(f"/proc/self/fd/{fd}", "rb", buffering=0) as file:  # noqa: ASYNC230
        file.seek(offset)
        try:
            sent = await asyncio.get_running_loop().sendfile(transport, file, offset, count)
        finally:
            response.file_bytes += file.tell() - offset
    if sent < count:
        raise ShortFile(f"the file ended {count - sent} bytes before the response did")


async def _sendfile_polled(transport: asyncio.WriteTransport, sock: Any, fd: int, offset: int,
                           count: int, response: FileBodyResponse | SentResponse) -> None:
    """sendfile(2) to the socket as it has room: what uvloop gets instead of loop.sendfile.

    uvloop has no loop.sendfile, and its loop refuses add_writer on a descriptor a
    transport owns; a dup(2) of it is another descriptor of the same socket, which it
    watches. Bytes go out only while the transport has nothing queued, so they never
    overtake a header block still in its buffer. The duplicate keeps the socket open
    after the transport closes its own descriptor, so each wait ends by asking whether
    the transport is closing; a delete's shutdown(2) wakes the wait and fails the send.
    """
    loop = asyncio.get_running_loop()
    out = os.dup(sock.fileno())
    try:
        while count:
            await _writable(loop, out)
            if transport.is_closing():
                raise ConnectionResetError("client went away")
            if transport.get_write_buffer_size():
                continue
            try:
                sent = os.sendfile(out, fd, offset, count)
            except BlockingIOError:
                continue
            if not sent:
                raise ShortFile(f"the file ended {count} bytes before the response did")
            response.file_bytes += sent
            offset += sent
            count -= sent
    finally:
        os.close(out)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Until the socket `fd` has room to write (or has failed, which the send then says)."""
    waiter = loop.create_future()
    loop.add_writer(fd, _wake, waiter)
    try:
        await waiter
    finally:
        loop.remove_writer(fd)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def shut_down(sock: Any) -> None:
    """Shut a transport's socket down both ways: its pending and next sends fail.

    Through the descriptor, since uvloop's stand-in for the socket refuses shutdown().
    """
    fd = sock.fileno()
    if fd == -1:
        return
    with contextlib.suppress(OSError):  # closed or not connected: nothing to cut off
        raw = socket.socket(fileno=fd)
        try:
            raw.shutdown(socket.SHUT_RDWR)
        finally:
            raw.detach()


def sendfile_once(out_fd: int, in_fd: int, offset: int, count: int) -> int:
    """One non-blocking sendfile(2); 0 when the socket is full or the call is not possible."""
    try:
        return os.sendfile(out_fd, in_fd, offset, count)
    except ConnectionError:
        raise
    except OSError:
        # EAGAIN, or a file sendfile cannot read: loop.sendfile waits or falls back.
        return 0


class ShortFile(Exception):
    """A stored file ended before the bytes its response had promised."""


def abandon(request: web.BaseRequest, exc: Exception) -> None:
    """End a response that failed after its header block went out, with its connection.

    A client that goes away mid-body (a seeking player does so constantly) is normal
    traffic, logged only for debugging. Anything else is the server's fault and is
    logged as such. Either way no error response may follow: it would land inside
    the body the header block announced, so the connection is closed instead.
    """
    end_response(request.transport, exc, request.method, request.path)


def end_response(transport: asyncio.BaseTransport | None, exc: Exception, method: str,
                 path: str) -> None:
    """abandon() for a response known by its transport, with no request object at hand."""
    # asyncio raises RuntimeError for a sendfile on a transport that is closing.
    # The bucket failing while its ranges are forwarded is an outage, not a client leaving.
    client_gone = (isinstance(exc, ConnectionError)
                   and not isinstance(exc, StorageUnavailable)) or (
        isinstance(exc, RuntimeError) and (transport is None or transport.is_closing()))
    if client_gone:
        log.debug("client left during %s: %s", path, exc)
    else:
        log.error("%s %s failed mid-response; closing the connection", method, path,
                  exc_info=exc)
    if transport is not None:
        transport.close()


class HttpDate:
    """The Date header's value, formatted once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._value = format_http_date(second).encode("ascii")
            self._second = second
        return self._value


def header_fields(headers: Mapping[str, str]) -> bytes:
    """Header lines that depend only on the file, and the Server line aiohttp sends."""
    fields = {**headers, "Server": SERVER_SOFTWARE}
    for name, value in fields.items():
        if any(c in name + value for c in "\r\n\0"):
            raise ValueError(f"header {name!r} must be a single line")
    return "".join(f"{name}: {value}\r\n" for name, value in fields.items()).encode("latin-1")


def head_block(first: int, last: int, size: int, partial: bool, fields: bytes, date: bytes,
               keep_alive: bool) -> bytes:
    """An HTTP/1.1 header block for bytes `first`-`last` of a `size`-byte file."""
    if partial:
        status = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\n" % (
            first, last, size)
    else:
        status = b"HTTP/1.1 200 OK\r\n"
    return b"%sContent-Length: %d\r\n%sDate: %s\r\n%s\r\n" % (
        status, last - first + 1, fields, date, b"" if keep_alive else b"Connection: close\r\n")


class FileBodyResponse(web.StreamResponse):
    """A response whose file ranges go out by sendfile(2), past aiohttp's writer.

    aiohttp's body_length, the access log's %b, counts what went through its writer:
    the header block and any literal parts. `file_bytes` adds what sendfile(2) sent.
    """

    def __init__(self, *, status: int, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status=status, headers=headers)
        self.file_bytes = 0
        self._writer: AbstractStreamWriter | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = await super().prepare(request)
        if writer is not None:
            self._writer = writer  # aiohttp drops its own reference at write_eof()
        return writer

    @property
    def body_length(self) -> int:
        written = self._writer.output_size if self._writer is not None else 0
        return written + self.file_bytes


class SentResponse(TakenOver):
    """A response whose header block and body the handler writes to the socket itself.

    aiohttp still calls prepare() and write_eof() on what a handler returns; here, as for
    any TakenOver, they have nothing left to do. on_response_prepare signals do not run
    for it: a header every response must carry belongs in `header_fields` too.
    body_length is what was written: the header block, and the body bytes sendfile(2)
    handed to the kernel.
    """

    def __init__(self, status: int, keep_alive: bool) -> None:
        # Not FileBodyResponse: one constructor less on the path every plain range
        # request takes.
        super().__init__(status=status)
        self.file_bytes = 0
        self.head_bytes = 0
        self.completed = False  # the whole body went out: the connection may be kept
        self._sent_keep_alive = keep_alive

    @property
    def keep_alive(self) -> bool:
        return self.completed and self._sent_keep_alive

    @property
    def body_length(self) -> int:
        return self.head_bytes + self.file_bytes


async def send_direct(request: web.BaseRequest, sock: Any, head: bytes, fd: int, offset: int,
                      count: int, response: SentResponse) -> None:
    """Write `head`, then `count` bytes of `fd` from `offset`, accounted in `response`."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    corked = not transport.get_write_buffer_size()
    if corked:
        cork(sock, True)
    try:
        transport.write(head)
        response.head_bytes = len(head)
        await sendfile(transport, sock, fd, offset, count, response)
        response.completed = True
    except Exception as exc:
        abandon(request, exc)
    finally:
        if corked:
            cork(sock, False)
