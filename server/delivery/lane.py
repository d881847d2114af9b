"""The stream's fast lane: a plain range GET answered from the bytes of its head.

A seeking player or a segmented downloader sends one request over and over on a kept-alive
connection: `GET /videos/{id}/stream HTTP/1.1`, a Host, perhaps one `Range: bytes=a-b`, and
headers the stream does not read (User-Agent, Accept, Referer, cookies). When such a head
arrives in one piece, on a connection that has sent nothing else, the connection's protocol
(`server.core.http`) hands it to `StreamLane.answer` before aiohttp parses it, and it is
answered there: the direct path's header block and sendfile(2) of the body, with none of
the parsed message, request, task, routing and response objects aiohttp builds per request.
bench/NOTES.md has the measurements.

Only what this module recognises exactly is taken. Anything else goes to aiohttp, and the
connection stays with aiohttp from then on: another method, path or version, a query, a
conditional header, a body, an upgrade, a Connection value other than `close` or
`keep-alive`, a head not of strict HTTP/1.1 syntax, a video not in this process's cache
or private (its signed URL is checked by the handler), a range other than the one plain
`bytes=a-b` or `bytes=a-` form, a file not on this node, a TLS connection. Whatever it
takes, the handler's direct path would have answered with the same bytes
(tests/test_stream_lane.py checks). The access log and the request metrics count its
answers as the handler's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from typing import Any

from aiohttp import web

from server.core.http import LaneConnection
from server.core.ids import parse_video_id

from .files import OpenFile, VideoFileCache
from .ranges import plain_span
from .sendfile import SentResponse, cork, end_response, head_block, sendfile, sendfile_once

log = logging.getLogger(__name__)

# The request line, then header fields of RFC 9112's syntax (a token, a colon, a value of
# visible characters, spaces, tabs and obs-text), then the empty line; nothing after it.
_HEAD = re.compile(
    rb"GET /videos/([0-9]{1,18})/stream HTTP/1\.1\r\n"
    rb"((?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*)\r\n")
# Fields that make a request one for the handler (conditionals, a body, an upgrade,
# an expectation); searched in the lower-cased head.
# Proxy-Connection counts as Connection for aiohttp's parser (llhttp).
_HANDLER_FIELDS = re.compile(
    rb"\r\n(?:if-|content-length:|transfer-encoding:|upgrade:|expect:|te:|proxy-connection:)")
_MAX_HEAD = 8190  # aiohttp's line limit: anything longer is for its parser to judge
_MAX_FIELDS = 100  # aiohttp refuses more than 128 fields; many are for it to judge
# Bodies up to this size are copied into one write with their header block (`_send`).
SMALL_BODY = 16 * 1024


class StreamLane:
    """Answers plain range GETs of cached public videos; `answer` says whether it did.

    The access log, when on, gets its line from the connection (server.core.http)."""

    __slots__ = ("_cache", "route", "app", "taken")

    def __init__(self, cache: VideoFileCache, route: object,
                 app: web.Application | None = None) -> None:
        self._cache = cache
        self.app = app
        # The router's resource the lane's answers are counted under (request metrics).
        self.route = route
        self.taken = 0

    def answer(self, conn: LaneConnection, head: bytes) -> bool:
        if len(head) > _MAX_HEAD or head.count(b"\r\n") > _MAX_FIELDS:
            return False
        match = _HEAD.fullmatch(head)
        if match is None:
            return False
        lower = head.lower()
        if _HANDLER_FIELDS.search(lower) is not None or lower.count(b"\r\nhost:") != 1:
            return False
        range_value = _field(head, lower, b"\r\nrange:")
        connection = _field(head, lower, b"\r\nconnection:")
        if range_value == _REPEATED or connection == _REPEATED:
            return False  # the field appears twice
        keep_alive = True
        if connection is not None:
            token = connection.lower()
            if token == b"close":
                keep_alive = False
            elif token != b"keep-alive":
                return False
        video_id = parse_video_id(match[1].decode("ascii"))
        cache = self._cache
        video = None if video_id is None else cache.peek(video_id)
        if video is None or video.private:
            return False
        span = plain_span(None if range_value is None else range_value.decode("latin-1"),
                          video.size)
        if span is None:
            return False
        transport = conn.transport
        if transport is None or transport.is_closing():
            return False
        assert video_id is not None
        try:
            file = cache.open_present(video_id, video, transport)
        except OSError as exc:  # out of descriptors, say: the handler answers, or says so
            log.warning("the fast lane could not open video %d: %r", video_id, exc)
            return False
        if file is None:
            return False  # gone, or not on this node yet: the handler answers
        counts = cache.counts
        counts.hits += 1
        if cache.node_cache is not None:
            cache.node_cache.counts.hits += 1
        self.taken += 1
        first, last, partial = span
        if partial:
            counts.single += 1
        else:
            counts.full += 1
        status = 206 if partial else 200
        head_bytes = head_block(first, last, video.size, partial, video.fields,
                                cache.date.now(), keep_alive)
        count = last - first + 1
        sock = conn.lane_socket
        try:
            sent = _send(transport, sock, conn.lane_raw, head_bytes, file.fd, first, count)
        except OSError as exc:  # the client went away, or the socket failed
            log.debug("client left during a stream: %r", exc)
            file.release(transport)
            transport.close()
            conn.lane_done(status, False, len(head_bytes))
            return True
        counts.direct_bytes += sent
        if sent == count:
            file.release(transport)
            conn.lane_done(status, keep_alive, len(head_bytes) + sent)
            return True
        # The socket did not take the whole body: the rest is sent as the handler's
        # direct path sends it, with reading paused so no next request overtakes it.
        conn.lane_hold()
        response = SentResponse(status, keep_alive)
        response.head_bytes = len(head_bytes)
        response.file_bytes = sent
        conn.lane_task(self._finish(conn, transport, video_id, file, first + sent,
                                    count - sent, response))
        return True

    async def _finish(self, conn: LaneConnection, transport: asyncio.Transport,
                      video_id: int, file: OpenFile, offset: int, count: int,
                      response: SentResponse) -> None:
        before = response.file_bytes
        try:
            await sendfile(transport, conn.lane_socket, file.fd, offset, count, response)
            response.completed = True
        except Exception as exc:
            end_response(transport, exc, "GET", f"/videos/{video_id}/stream")
        finally:
            file.release(transport)
            self._cache.counts.direct_bytes += response.file_bytes - before
        conn.lane_done(response.status, response.keep_alive, response.body_length)


def _send(transport: asyncio.Transport, sock: Any, raw: socket.socket | None, head: bytes,
          fd: int, offset: int, count: int) -> int:
    """Send the header block and what the socket takes of the body now; the body bytes sent.

    A body of at most SMALL_BODY bytes is read with pread(2) and written with its header
    block in one write(2): one segment, two system calls, where sendfile(2) costs more
    than the copy it saves. Otherwise, with the connection's own socket object at hand
    (asyncio's loop), the header block goes with MSG_MORE, which holds it for the
    sendfile(2) that follows; without it (uvloop) the socket is corked around the
    transport's write and the sendfile(2). What the socket does not take is queued on the
    transport, and no body byte is sent past it: a small body is queued whole after it,
    a large one is sent later (the caller holds the connection).
    """
    backlog = transport.get_write_buffer_size()
    if count <= SMALL_BODY:
        body = os.pread(fd, count, offset)
        if len(body) == count:
            data = head + body
            written = 0
            if not backlog:
                try:
                    written = os.write(sock.fileno(), data)
                except (BlockingIOError, InterruptedError):
                    written = 0
            if written < len(data):
                transport.write(data[written:] if written else data)
            return count
        # A file shorter than its row says: sendfile(2) and the handler's path find out.
    if backlog:
        transport.write(head)
        return 0
    if raw is not None:
        try:
            written = raw.send(head, socket.MSG_MORE)
        except (BlockingIOError, InterruptedError):
            written = 0
        if written < len(head):
            transport.write(head[written:])
            return 0
        return sendfile_once(raw.fileno(), fd, offset, count)
    cork(sock, True)
    try:
        transport.write(head)
        if transport.get_write_buffer_size():
            return 0
        return sendfile_once(sock.fileno(), fd, offset, count)
    finally:
        cork(sock, False)


# What _field gives for a field that appears twice; no value can hold a NUL.
_REPEATED = b"\0"


def _field(head: bytes, lower: bytes, name: bytes) -> bytes | None:
    """The value of the field `name` ("\\r\\nname:"), None when absent, _REPEATED when twice."""
    start = lower.find(name)
    if start < 0:
        return None
    if lower.find(name, start + len(name)) >= 0:
        return _REPEATED
    start += len(name)
    return head[start:head.index(b"\r\n", start)].strip(b" \t")

