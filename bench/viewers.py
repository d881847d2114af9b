"""A load client for row d: `python -m bench.viewers HOST PORT PATH COUNT`.

It holds COUNT live-viewer WebSockets and answers commands read from stdin, one
JSON object a line, with one JSON line on stdout each:

    {"cmd": "open"}                        open COUNT sockets
    {"cmd": "settle", "expect": N, "within": S}
                                           wait until every socket has seen N viewers
    {"cmd": "arm", "expect": N}            start watching for N viewers
    {"cmd": "collect", "within": S}        when each socket first saw it (monotonic time)
    {"cmd": "close"}                       close every socket and exit

The sockets are a small asyncio protocol rather than aiohttp's client, so that
what is timed is the moment the frame reaches this process and thousands of
them fit in one process: it does the handshake, reads unmasked server frames,
answers pings and records the count of every text frame.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

CONNECT_CONCURRENCY = 48


class ViewerSocket(asyncio.Protocol):
    def __init__(self, request: bytes, ready: asyncio.Future[None], client: Client) -> None:
        self.request = request
        self.ready = ready
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.count: int | None = None
        self.expect: int | None = None
        self.arrived: float | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(exc or ConnectionError("closed during the handshake"))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buffer[:end]).split(b"\r\n", 1)[0]
            if b" 101 " not in status + b" ":
                self.ready.set_exception(ConnectionError(status.decode("latin-1")))
                self.transport.close()  # type: ignore[union-attr]
                return
            del self.buffer[:end + 4]
            self.upgraded = True
        self._frames(now)

    def _frames(self, now: float) -> None:
        buf = self.buffer
        while len(buf) >= 2:
            opcode, length, start = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, start = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, start = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < start + length:
                return
            payload = bytes(buf[start:start + length])
            del buf[:start + length]
            if opcode == 0x1:
                self._state(payload, now)
            elif opcode == 0x9:
                self._send(0xA, payload)
            elif opcode == 0x8:
                self.transport.close()  # type: ignore[union-attr]

    def _state(self, payload: bytes, now: float) -> None:
        count = json.loads(payload).get("active_viewers")
        if not isinstance(count, int):
            return
        self.count = count
        if not self.ready.done():
            self.ready.set_result(None)
        if self.expect is not None and self.arrived is None and count >= self.expect:
            self.arrived = now
            self.client.arrived += 1
        self.client.changed.set()

    def _send(self, opcode: int, payload: bytes) -> None:
        """A masked frame, as every client frame must be."""
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)  # type: ignore[union-attr]

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._send(0x8, (1000).to_bytes(2, "big"))
            self.transport.close()


def handshake(host: str, port: int, path: str, agent: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nUser-Agent: {agent}\r\n\r\n").encode()


def agent(number: int) -> str:
    """A User-Agent of its own for each socket: the server counts distinct viewers
    (address and User-Agent), and many bench sockets share one loopback address."""
    return f"tubelet-bench/{os.getpid()}.{number}"


class Client:
    def __init__(self, host: str, port: int, path: str, count: int,
                 source: str | None = None) -> None:
        self.host, self.port, self.path, self.count = host, port, path, count
        # A loopback address of this client's own (127.0.0.x): one source address reaches
        # one server port through at most ip_local_port_range's ~28,000 ports.
        self.source = source
        self.sockets: list[ViewerSocket] = []
        self.arrived = 0
        self.changed = asyncio.Event()

    async def open(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        failures: list[str] = []
        started = time.monotonic()

        async def one(number: int) -> None:
            async with gate:
                ready: asyncio.Future[None] = loop.create_future()
                request = handshake(self.host, self.port, self.path, agent(number))
                try:
                    _, sock = await loop.create_connection(
                        lambda: ViewerSocket(request, ready, self), self.host, self.port,
                        local_addr=None if self.source is None else (self.source, 0))
                    await asyncio.wait_for(ready, 60)
                except (TimeoutError, OSError) as exc:
                    failures.append(repr(exc))
                    return
                self.sockets.append(sock)

        await asyncio.gather(*(one(number) for number in range(self.count)))
        return {"opened": len(self.sockets), "failed": len(failures),
                "errors": sorted(set(failures))[:5],
                "seconds": round(time.monotonic() - started, 2)}

    async def _until(self, done: Callable[[], bool], within: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while not done():
                    self.changed.clear()
                    await self.changed.wait()
                    await asyncio.sleep(0.02)  # a burst of frames is checked once

    async def settle(self, expect: int, within: float) -> dict[str, Any]:
        await self._until(lambda: all(s.count == expect for s in self.sockets), within)
        counts = [s.count or 0 for s in self.sockets]
        return {"settled": all(c == expect for c in counts),
                "min": min(counts, default=None), "max": max(counts, default=None),
                "closed": sum(s.closed for s in self.sockets)}

    def arm(self, expect: int) -> dict[str, Any]:
        self.arrived = 0
        for s in self.sockets:
            s.expect, s.arrived = expect, None
        return {"armed": len(self.sockets)}

    async def collect(self, within: float) -> dict[str, Any]:
        await self._until(lambda: self.arrived >= len(self.sockets), within)
        arrived = [s.arrived for s in self.sockets if s.arrived is not None]
        return {"arrivals": arrived, "missing": len(self.sockets) - len(arrived)}

    def close(self) -> dict[str, Any]:
        for s in self.sockets:
            s.close()
        return {"closed": len(self.sockets)}


async def serve(client: Client) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        cmd = command["cmd"]
        if cmd == "open":
            reply = await client.open()
        elif cmd == "settle":
            reply = await client.settle(command["expect"], command["within"])
        elif cmd == "arm":
            reply = client.arm(command["expect"])
        elif cmd == "collect":
            reply = await client.collect(command["within"])
        elif cmd == "close":
            reply = client.close()
            await asyncio.sleep(0.5)
        else:
            reply = {"error": f"unknown command {cmd!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        if cmd == "close":
            return


def main(argv: list[str]) -> int:
    host, port, path, count = argv[0], int(argv[1]), argv[2], int(argv[3])
    source = argv[4] if len(argv) > 4 else None
    asyncio.run(serve(Client(host, port, path, count, source)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
