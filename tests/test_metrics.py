"""GET /metrics: what it shows after real traffic, and where it may be read.

The app runs on the production server build (server.core.http.AppRunner), as
`python -m server` runs it, since requests are counted there.
"""

from __future__ import annotations

import socket
from typing import Any

from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from server.core.http import REQUEST_STATS_KEY

from .conftest import session_upload, until
from .test_access_log import media
from .test_http_hardening import Served, serve  # noqa: F401

TOKEN = "metrics-token-0123456789"
STREAM = "/videos/{id}/stream"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def scrape(session: ClientSession, url: Any, token: str | None = TOKEN) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/plain"
        text = await resp.text()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_metrics_after_real_traffic(serve, http):
    served: Served = await serve(metrics_token=TOKEN)
    _, video_id = await session_upload(http, served, media(300_000))
    stream = served.make_url(f"/videos/{video_id}/stream")
    async with http.get(stream, headers={"Range": "bytes=0-1023"}) as resp:
        assert resp.status == 206
        assert len(await resp.read()) == 1024
    async with http.get(stream, headers={"Range": "bytes=0-9,200000-200009"}) as resp:
        assert resp.status == 206
        await resp.read()
    async with http.get(stream, headers={"Range": "bytes=900000-"}) as resp:
        assert resp.status == 416
    async with http.get(served.make_url("/no/such/page")) as resp:
        assert resp.status == 404
    ws = await http.ws_connect(served.make_url(f"/videos/{video_id}/active-viewers"),
                               headers={"User-Agent": "Mozilla/5.0 Firefox/128.0"})
    await ws.receive_json()
    url = served.make_url("/metrics")
    found: Samples = {}

    async def socket_counted() -> bool:
        nonlocal found
        found = await scrape(http, url)
        return value(found, "tubelet_viewer_sockets") == 1

    await until(socket_counted, 10, "the viewer socket showing in /metrics")
    await ws.close()

    assert value(found, "tubelet_http_requests_total", route=STREAM, status="206") == 2
    assert value(found, "tubelet_http_requests_total", route=STREAM, status="416") == 1
    assert value(found, "tubelet_http_requests_total", route="unmatched", status="404") == 1
    assert value(found, "tubelet_http_requests_total", route="/auth/login", status="200") == 1
    assert value(found, "tubelet_http_request_duration_seconds_count", route=STREAM) == 3
    assert value(found, "tubelet_http_request_duration_seconds_bucket", route=STREAM,
                 le="+Inf") == 3
    assert value(found, "tubelet_stream_requests_total", kind="single") == 1
    assert value(found, "tubelet_stream_requests_total", kind="multi") == 1
    assert value(found, "tubelet_stream_requests_total", kind="unsatisfiable") == 1
    assert value(found, "tubelet_stream_bytes_sent_bytes_total", path="direct") == 1024
    assert value(found, "tubelet_stream_bytes_sent_bytes_total", path="general") == 20
    assert value(found, "tubelet_stream_bytes_sent_bytes_total", path="proxied") == 0
    # The first request loaded the file's metadata; the two after it found it cached.
    assert value(found, "tubelet_stream_cache_lookups_total", result="miss") == 1
    assert value(found, "tubelet_stream_cache_lookups_total", result="hit") == 2
    assert value(found, "tubelet_views_pending") == 0
    assert value(found, "tubelet_views_counted_total") == 0
    assert value(found, "tubelet_jobs", queue="processing", status="todo") is not None


async def test_the_token_is_required(serve, http):
    served: Served = await serve(metrics_token=TOKEN)
    url = served.make_url("/metrics")
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                    {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthorized"
    samples = await scrape(http, url)
    assert value(samples, "tubelet_http_requests_total", route="/metrics", status="401") == 4


async def test_a_metrics_port_serves_them_there_only(serve, http):
    port = free_port()
    served: Served = await serve(metrics_port=port)
    async with http.get(served.make_url("/metrics")) as resp:
        assert resp.status == 404
    samples = await scrape(http, f"http://127.0.0.1:{port}/metrics", token=None)
    assert value(samples, "tubelet_http_requests_total", route="/metrics", status="404") == 1


async def test_a_metrics_port_with_a_token_asks_for_it(serve, http):
    port = free_port()
    await serve(metrics_port=port, metrics_token=TOKEN)
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 401
    assert await scrape(http, f"http://127.0.0.1:{port}/metrics")


async def test_metrics_are_off_until_configured(serve, http):
    served: Served = await serve()
    async with http.get(served.make_url("/metrics"),
                        headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
    # Nothing is counted per request either.
    assert REQUEST_STATS_KEY not in served.app


def test_metrics_settings():
    from server.core.config import Config, ConfigError

    env = {"JWT_SECRET": "s" * 32}
    config = Config.from_env({**env, "METRICS_TOKEN": TOKEN, "METRICS_PORT": "9100",
                              "LOG_FORMAT": "JSON"})
    assert (config.metrics_token, config.metrics_port, config.log_format) == (TOKEN, 9100,
                                                                               "json")
    assert TOKEN not in repr(config)
    plain = Config.from_env(env)
    assert (plain.metrics_token, plain.metrics_port, plain.log_format) == (None, None, "text")
    for bad in ({"METRICS_TOKEN": "short"}, {"METRICS_TOKEN": "with a space 0123456789"},
                {"METRICS_PORT": "0"}, {"LOG_FORMAT": "xml"}):
        try:
            Config.from_env({**env, **bad})
        except ConfigError:
            continue
        raise AssertionError(f"{bad} was accepted")
