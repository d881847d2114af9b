"""LOG_FORMAT=json: one JSON object per line, and access lines with a request id.

Every line has time, level, logger, message and process; an access line adds method, path,
status, bytes, duration (seconds), remote (the client's address, behind
TRUSTED_PROXIES) and request_id. The request id is the X-Request-ID a trusted proxy
sent, when it is a sane token, and otherwise a new random one. It is made by the
access logger, once the response is done, so requests pay nothing for it while
logging is off, and it is not echoed on responses: the stream's direct path writes
a header block built per file, and a per-request header there would cost every
range request.
"""

from __future__ import annotations

import datetime
import json
import logging
import secrets
import time as time_mod
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_log import AccessLogger

from .clients import from_trusted_proxy, request_ip
from .config import Network
from .keys import CONFIG_KEY

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID = 128
# Attributes every LogRecord has; anything else was passed as `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


def sane_request_id(value: str | None) -> bool:
    """At most MAX_REQUEST_ID printable ASCII characters, none of them a space."""
    return (value is not None and 0 < len(value) <= MAX_REQUEST_ID and value.isascii()
            and value.isprintable() and " " not in value)


def request_id(remote: str | None, given: str | None,
               trusted_proxies: tuple[Network, ...]) -> str:
    """The id a trusted proxy gave the request, or a new one."""
    if sane_request_id(given) and from_trusted_proxy(remote, trusted_proxies):
        assert given is not None
        return given
    return secrets.token_hex(16)


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON; fields passed with `extra` are kept."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in entry:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def configure(level: str, log_format: str) -> None:
    """Log to stderr at `level`, as text lines or (log_format "json") JSON objects."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])


class TextAccessLogger(AccessLogger):
    """aiohttp's access log, its default format written at less cost per line.

    aiohttp's logger builds each line from a method call per field, and passes every field
    again as `extra`, a dict per line that no formatter here reads; the two cost more than
    answering a range request. With the default format the line is one %-format, the time
    formatted once a second, and no extra. Any other format is aiohttp's own.
    """

    def __init__(self, logger: logging.Logger, log_format: str = AccessLogger.LOG_FORMAT) -> None:
        super().__init__(logger, log_format)
        self._default = log_format == AccessLogger.LOG_FORMAT
        self._second = -1
        self._stamp = ""

    def log(self, request: web.BaseRequest, response: web.StreamResponse,
            time: float) -> None:
        if not self._default:
            super().log(request, response, time)
            return
        try:
            second = int(time_mod.time() - time)  # when the request began, as aiohttp logs
            if second != self._second:
                started = self._get_local_time() - datetime.timedelta(seconds=time)
                self._stamp = started.strftime("[%d/%b/%Y:%H:%M:%S %z]")
                self._second = second
            headers = request.headers
            version = request.version
            remote = request.remote
            self.logger.info('%s %s "%s %s HTTP/%d.%d" %d %d "%s" "%s"' % (  # noqa: UP031
                "-" if remote is None else remote, self._stamp, request.method,
                request.path_qs, version.major, version.minor, response.status,
                response.body_length, headers.get("Referer", "-"),
                headers.get("User-Agent", "-")))
        except Exception:
            self.logger.exception("Error in logging")


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp's access log as records whose fields the JsonFormatter writes out."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse,
            time: float) -> None:
        remote = request.remote
        proxies: tuple[Network, ...] = ()
        # A web.Request, or the stand-in for a request the stream's lane answered.
        app = request.app if isinstance(request, web.Request) else getattr(request, "app", None)
        if app is not None:
            config = app.get(CONFIG_KEY)
            if config is not None:
                proxies = config.trusted_proxies
        headers = request.headers
        address = request_ip(remote, headers, proxies)
        fields = {
            "method": request.method,
            "path": request.path_qs,
            "status": response.status,
            "bytes": response.body_length,
            "duration": round(time, 6),
            "remote": str(address) if address is not None else remote,
            "request_id": request_id(remote, headers.get(REQUEST_ID_HEADER), proxies),
        }
        self.logger.info('%s "%s %s" %d %d', fields["remote"], fields["method"],
                         fields["path"], fields["status"], fields["bytes"], extra=fields)
