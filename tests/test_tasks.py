"""Stopping background tasks: a cancellation a library swallowed is repeated."""

from __future__ import annotations

import asyncio

from orgcast.tasks import cancel_and_wait


async def _swallows_one_cancellation(started: asyncio.Event) -> None:
    """Like a loop whose Redis call turned the cancellation into its own error and went on."""
    started.set()
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        pass
    await asyncio.sleep(3600)


async def test_a_task_that_swallowed_its_cancellation_is_cancelled_again() -> None:
    started = asyncio.Event()
    stubborn = asyncio.create_task(_swallows_one_cancellation(started))
    plain = asyncio.create_task(asyncio.sleep(3600))
    await started.wait()

    await asyncio.wait_for(cancel_and_wait([stubborn, plain]), 10)

    assert stubborn.cancelled() and plain.cancelled()


async def test_a_task_that_failed_has_its_exception_retrieved() -> None:
    async def fails() -> None:
        raise ValueError("broken")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await cancel_and_wait([task])  # no "exception was never retrieved" (warnings are errors)
    assert isinstance(task.exception(), ValueError)
