"""Requests aiohttp cannot parse: a 400 for the client, no traceback in the server's log."""

from __future__ import annotations

import asyncio
import logging

from aiohttp.http_exceptions import BadHttpMessage

from server.core.errors import ClientErrorFilter, quiet_client_errors

from .test_presence import server_process

MALFORMED = [
    b"GET /videos HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two Hosts
    b"GET /videos HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /videos HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",  # NUL in a header
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",  # an oversized request line
    b"GET /videos HTTP/1.1\r\nHost: a\r\nX: " + b"b" * 9000 + b"\r\n\r\n",  # oversized header
]


async def test_malformed_requests_get_400_and_no_traceback(make_config):
    config = make_config()
    async with server_process(config) as (_, base):
        port = int(base.rsplit(":", 1)[1])
        for raw in MALFORMED:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(raw)
                reply = await asyncio.wait_for(reader.read(), 5)
            finally:
                writer.close()
            assert reply.split(b" ", 2)[1] == b"400", (raw[:60], reply[:120])
    log = (config.storage_dir.parent / f"server-{port}.log").read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-2000:]


def test_filter_keeps_server_faults_and_demotes_client_errors(caplog):
    logger = logging.getLogger("tests.aiohttp.server")
    quiet_client_errors(logger)
    quiet_client_errors(logger)  # idempotent
    assert sum(isinstance(f, ClientErrorFilter) for f in logger.filters) == 1
    caplog.set_level(logging.DEBUG, logger=logger.name)
    for exc in (BadHttpMessage("bad"), RuntimeError("ours")):
        try:
            raise exc
        except Exception:
            logger.exception("Error handling request from %s", "127.0.0.1")
    client, ours = caplog.records
    assert client.levelno == logging.DEBUG and client.exc_info is None
    assert ours.levelno == logging.ERROR and ours.exc_info is not None
    caplog.clear()
    caplog.set_level(logging.INFO, logger=logger.name)
    try:
        raise BadHttpMessage("bad")
    except Exception:
        logger.exception("Error handling request")
    assert caplog.records == []
