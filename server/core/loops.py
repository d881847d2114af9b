"""Helpers for long-running background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from .errors import DEPENDENCY_ERRORS, first_line

log = logging.getLogger(__name__)

# Failures of what a round depends on: a warning line, not a traceback.
OUTAGES: tuple[type[BaseException], ...] = (*DEPENDENCY_ERRORS, OSError)


def raise_if_cancelled() -> None:
    """Raise CancelledError if someone asked the current task to stop.

    On Python 3.11 asyncio.wait_for, which aiopg awaits every query with, can
    return the result of a query that finished just as the task was cancelled
    and drop the cancellation; the task still counts the request. A loop that
    calls this each round stops anyway instead of running on forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def run_every(interval: float, fn: Callable[[], Awaitable[object]],
              name: str, *, first_after: float = 0.0) -> asyncio.Task[None]:
    """Run `fn` after `first_after` seconds (now by default), then `interval` seconds
    after each round ends, until cancelled.

    A round that fails is logged and the next one runs on schedule. An outage
    of a dependency is one warning line when the rounds start failing and one
    when they recover, not a line a round; anything else is a traceback.
    Stop the task with `stop`.
    """
    return asyncio.create_task(_every(interval, fn, name, first_after), name=name)


async def _every(interval: float, fn: Callable[[], Awaitable[object]], name: str,
                 first_after: float) -> None:
    failing = False
    if first_after > 0:
        await asyncio.sleep(first_after)
    while True:
        raise_if_cancelled()
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except OUTAGES as exc:
            if not failing:
                log.warning("%s failing, will retry every %gs: %s", name, interval,
                            first_line(exc))
            failing = True
        except Exception:
            log.exception("%s failed, will retry in %gs", name, interval)
        else:
            if failing:
                log.warning("%s recovered", name)
            failing = False
        raise_if_cancelled()
        await asyncio.sleep(interval)


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a background task and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
