"""The Redis manager's own subscription loop (realtime/patches.py, item 6) against a real
redis-server that goes away for longer than the library's back-off would tolerate."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import pytest

from orgcast.realtime.patches import ClusterRedisManager
from tests.conftest import IN_CI
from tests.nodes import private_redis
from tests.support import eventually


# redis-py may warn about a connection to the stopped server that it closes late.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_the_subscription_reports_loss_and_return_and_resubscribes_within_its_cap() -> None:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("needs redis-server: CI requires it", pytrace=False)
        pytest.skip("needs redis-server")
    links: list[bool] = []
    with private_redis() as redis_server:
        manager = ClusterRedisManager(redis_server.url, channel="patches-test")
        manager.on_link = links.append
        listener = asyncio.ensure_future(_drain(manager._redis_listen_with_retries()))
        try:
            await eventually(lambda: _holds(links == [True]), within=10)
            redis_server.stop()
            # Six failed attempts: the library's back-off would now be past 30 s; ours is 2 s.
            await eventually(lambda: _holds(links.count(False) >= 6), within=20)
            redis_server.start()
            await eventually(lambda: _holds(links[-1] is True), within=2 + 5)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await manager.close()


async def _drain(messages: Any) -> None:
    async for _ in messages:
        pass


async def _holds(value: bool) -> bool:
    return value
