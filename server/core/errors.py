"""One error shape for the whole API: {"error": {"code", "message"}}."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import psycopg2
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .keys import HTML_ERRORS_KEY
from .storage import StorageUnavailable

log = logging.getLogger(__name__)

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    411: "length_required",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """A client-facing failure; the middleware turns it into the JSON error shape."""

    status = 500
    code = "internal_error"

    def __init__(self, status: int, code: str, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class NotFound(ApiError):
    def __init__(self, message: str = "Not found", code: str = "not_found") -> None:
        super().__init__(404, code, message)


class Forbidden(ApiError):
    def __init__(self, message: str, code: str = "forbidden") -> None:
        super().__init__(403, code, message)


class Invalid(ApiError):
    def __init__(self, message: str, code: str = "validation_error") -> None:
        super().__init__(422, code, message)


class Unavailable(ApiError):
    """A dependency (PostgreSQL, Redis, the disk) cannot do its part now; retry later."""

    def __init__(self, message: str = "The service is briefly unavailable; retry later",
                 retry_after: int = 5) -> None:
        super().__init__(503, "unavailable", message, {"Retry-After": str(retry_after)})


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(code, message), status=status, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# Failures of what a request depends on, not of the request: answered 503.
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    RedisConnectionError,
    RedisTimeoutError,
    TimeoutError,
    StorageUnavailable,
)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        if isinstance(exc, Unavailable):
            log.warning("%s %s: 503: %s", request.method, request.path, exc.message)
        response = await _render(request, exc.status, exc.code, exc.message, exc.headers)
        if exc.headers.get("Connection", "").lower() == "close":
            # The rest of the body is not wanted: drop the connection, don't drain it.
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason if exc.text is None or exc.text.startswith(str(exc.status)) \
            else exc.text
        return await _render(request, exc.status, CODES.get(exc.status, "error"), message,
                             _passthrough_headers(exc))
    except asyncio.CancelledError:
        raise
    except ConnectionError as exc:
        # The client went away: nothing to answer. The bucket failing is an outage.
        if not isinstance(exc, StorageUnavailable):
            raise
        return await _unavailable(request, exc)
    except DEPENDENCY_ERRORS as exc:
        return await _unavailable(request, exc)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return await _render(request, 500, "internal_error", "Internal server error", {})


async def _unavailable(request: web.Request, exc: BaseException) -> web.StreamResponse:
    # One line, no traceback: an outage is weather, not a bug.
    log.warning("%s %s: 503: dependency unavailable: %s", request.method, request.path,
                _describe(exc))
    unavailable = Unavailable()
    return await _render(request, 503, unavailable.code, unavailable.message,
                         unavailable.headers)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, else its type's name: one log line."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _describe(exc: BaseException) -> str:
    name, line = type(exc).__name__, first_line(exc)
    return name if line == name else f"{name}: {line}"


async def _render(request: web.Request, status: int, code: str, message: str,
                  headers: Mapping[str, str]) -> web.StreamResponse:
    html = request.app.get(HTML_ERRORS_KEY)
    if html is not None:
        page = await html(request, status, message)
        if page is not None:
            page.headers.update(headers)
            return page
    return error_response(status, code, message, headers)


def _passthrough_headers(exc: web.HTTPException) -> dict[str, str]:
    keep = ("Allow", "Retry-After", "WWW-Authenticate")
    return {name: exc.headers[name] for name in keep if name in exc.headers}


class ClientErrorFilter(logging.Filter):
    """Turns aiohttp's ERROR-with-traceback for a malformed request into a DEBUG line.

    A request aiohttp cannot parse (bad framing, oversized headers, a bare LF) is the
    client's error; at ERROR, any client could fill the log with tracebacks.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg = f"{record.msg}: {exc!r}"
        record.exc_info = record.exc_text = None
        return True


def quiet_client_errors(logger: logging.Logger | None = None) -> None:
    """Install ClientErrorFilter on aiohttp's server logger, once."""
    logger = logger or logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientErrorFilter) for f in logger.filters):
        logger.addFilter(ClientErrorFilter())
