"""Helpers for long-running background tasks."""

from __future__ import annotations

import asyncio


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
