"""Stopping background tasks for sure.

A cancellation can be lost: a library call that is cancelled at the moment its own timeout fires
may turn the ``CancelledError`` into its error (Python 3.11's ``asyncio.timeout`` does so; redis-py
then raises a ``TimeoutError`` or ``ConnectionError``), which the task's loop handles like any Redis
failure and goes on. ``cancel_and_wait`` cancels again until every task has ended: a node seen to
hang on shutdown after a Redis outage, waiting for a task that had swallowed its cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

# How long a cancelled task may run before it is cancelled again.
RECANCEL_SECONDS = 1.0


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until all have ended, cancelling again the ones still running
    every ``RECANCEL_SECONDS``; their exceptions are theirs (already logged where they occur)."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved, as gather(return_exceptions=True) would
