"""LOG_FORMAT=json: one JSON object per line; access lines carry a request id."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import logging
import secrets
import string
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from server.app import create_app
from server.core import http as core_http
from server.core.config import Config
from server.core.logs import JsonFormatter, request_id, sane_request_id

from .test_http_hardening import ROOT

LOCAL = (ipaddress.ip_network("127.0.0.0/8"),)
ELSEWHERE = (ipaddress.ip_network("10.0.0.0/8"),)


class JsonLines:
    def __init__(self) -> None:
        self.stream = io.StringIO()

    def parsed(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


JsonServe = Callable[..., Awaitable[tuple[str, JsonLines]]]


@pytest.fixture
async def json_serve(make_config: Callable[..., Config]) -> AsyncIterator[JsonServe]:
    """create_app on the production server build with LOG_FORMAT=json; its access lines."""
    runners: list[web.AppRunner] = []

    async def start(**overrides: Any) -> tuple[str, JsonLines]:
        config = make_config(log_format="json", **overrides)
        lines = JsonLines()
        access = logging.getLogger(f"tests.json.{secrets.token_hex(4)}")
        access.setLevel(logging.INFO)
        access.propagate = False
        handler = logging.StreamHandler(lines.stream)
        handler.setFormatter(JsonFormatter())
        access.addHandler(handler)
        runner = core_http.AppRunner(create_app(config), header_timeout=config.header_timeout,
                                     access_log=access, shutdown_timeout=2)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}", lines

    yield start
    for runner in runners:
        await runner.cleanup()


async def access_line(http: Any, base: str, lines: JsonLines, path: str,
                      headers: dict[str, str] | None = None) -> dict[str, Any]:
    async with http.get(base + path, headers=headers or {}) as resp:
        await resp.read()
    for _ in range(200):  # the line is written just after the response's last byte
        found = [line for line in lines.parsed() if line.get("path") == path]
        if found:
            return found[-1]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no access line for {path}")


async def test_access_lines_are_json_with_the_request_fields(json_serve, http):
    base, lines = await json_serve()
    line = await access_line(http, base, lines, "/videos?limit=1")
    assert line["level"] == "INFO"
    assert line["method"] == "GET" and line["status"] == 200
    assert line["path"] == "/videos?limit=1"
    assert line["bytes"] > 0 and line["duration"] >= 0
    assert line["remote"] == "127.0.0.1"
    assert line["message"].startswith('127.0.0.1 "GET /videos?limit=1" 200 ')
    assert {"time", "logger", "request_id", "process"} <= set(line)
    assert len(line["request_id"]) == 32


async def test_a_trusted_proxy_names_the_request(json_serve, http):
    base, lines = await json_serve(trusted_proxies=LOCAL)
    line = await access_line(http, base, lines, "/videos",
                             {"X-Request-ID": "edge-42.abc", "X-Forwarded-For": "203.0.113.9"})
    assert line["request_id"] == "edge-42.abc"
    assert line["remote"] == "203.0.113.9"
    line = await access_line(http, base, lines, "/healthz", {"X-Request-ID": "has space"})
    assert line["request_id"] != "has space" and len(line["request_id"]) == 32


async def test_an_untrusted_peer_cannot_name_the_request(json_serve, http):
    base, lines = await json_serve(trusted_proxies=ELSEWHERE)
    line = await access_line(http, base, lines, "/videos",
                             {"X-Request-ID": "edge-42.abc", "X-Forwarded-For": "203.0.113.9"})
    assert line["request_id"] != "edge-42.abc"
    assert line["remote"] == "127.0.0.1"


@pytest.mark.parametrize(("given", "sane"), [
    ("abc", True),
    ("f81d4fae-7dec-11d0-a765-00a0c91e6bf6", True),
    (string.punctuation, True),
    ("x" * 128, True),
    ("x" * 129, False),
    ("", False),
    (None, False),
    ("two words", False),
    ("tab\there", False),
    ("line\nbreak", False),
    ("caf\u00e9", False),
])
def test_sane_request_ids(given, sane):
    assert sane_request_id(given) is sane
    chosen = request_id("127.0.0.1", given, LOCAL)
    assert (chosen == given) is sane
    assert request_id("192.0.2.1", given, LOCAL) != given


def test_process_logging_writes_json_lines():
    """The logging `python -m server` sets up for LOG_FORMAT=json: a JSON object a line."""
    done = subprocess.run([sys.executable, "-c", (
        "import logging, sys; from server.core.logs import configure; "
        "configure('INFO', 'json'); logging.getLogger('server').warning('hello %s', 'you'); "
        "logging.getLogger('x').error('bad', exc_info=ValueError('v'))")],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    first, second = (json.loads(line) for line in done.stderr.splitlines())
    assert first["message"] == "hello you" and first["level"] == "WARNING"
    assert first["logger"] == "server"
    assert second["exception"].endswith("ValueError: v")
