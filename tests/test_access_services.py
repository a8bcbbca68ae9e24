"""The access services on their own: the expiry heap (one task, whatever the number of sockets),
control-bus commands answered by every node over a real Redis, and the cluster-wide API limit."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from orgcast.errors import RateLimited
from orgcast.services.control import ControlBus
from orgcast.services.expiry import ExpiryScheduler
from orgcast.services.limits import ApiRateLimiter


class Fired:
    """Records what a scheduler fires, as (what, key, exp) on a queue."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[tuple[str, str, int | None]] = asyncio.Queue()

    async def expiring(self, key: str, exp: int) -> None:
        self.events.put_nowait(("expiring", key, exp))

    async def expired(self, key: str) -> None:
        self.events.put_nowait(("expired", key, None))

    async def next(self, within: float = 5.0) -> tuple[str, str, int | None]:
        return await asyncio.wait_for(self.events.get(), within)

    async def nothing(self, within: float = 0.5) -> None:
        with contextlib.suppress(TimeoutError):
            got = await asyncio.wait_for(self.events.get(), within)
            raise AssertionError(f"unexpected {got!r}")


@contextlib.asynccontextmanager
async def running(window: float) -> AsyncIterator[tuple[ExpiryScheduler[str], Fired]]:
    fired = Fired()
    scheduler: ExpiryScheduler[str] = ExpiryScheduler(window, fired.expiring, fired.expired)
    task = asyncio.create_task(scheduler.run())
    try:
        yield scheduler, fired
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_scheduler_warns_within_the_window_then_expires_at_exp() -> None:
    async with running(window=60) as (scheduler, fired):
        exp = int(time.time()) + 2
        scheduler.schedule("a", exp)
        assert await fired.next() == ("expiring", "a", exp)
        assert await fired.next() == ("expired", "a", None)
        assert time.time() >= exp
        assert not scheduler.pending("a") and len(scheduler) == 0


async def test_a_token_shorter_than_the_window_is_warned_halfway_not_at_once() -> None:
    async with running(window=3600) as (scheduler, fired):
        exp = int(time.time()) + 4
        scheduler.schedule("short", exp)
        await fired.nothing(within=1.0)  # not at once: about 2 s in
        assert await fired.next() == ("expiring", "short", exp)
        assert await fired.next() == ("expired", "short", None)


async def test_rescheduling_supersedes_and_cancel_forgets() -> None:
    async with running(window=1) as (scheduler, fired):
        soon = int(time.time()) + 1
        scheduler.schedule("refreshed", soon)
        scheduler.schedule("cancelled", soon)
        later = soon + 3600
        scheduler.schedule("refreshed", later)  # as a refresh does
        scheduler.cancel("cancelled")  # as a disconnect does
        await fired.nothing(within=2.0)
        assert scheduler.pending("refreshed") and not scheduler.pending("cancelled")


async def test_ten_thousand_sockets_cost_no_task_each() -> None:
    async with running(window=60) as (scheduler, fired):
        tasks = len(asyncio.all_tasks())
        exp = int(time.time()) + 3600
        for i in range(10_000):
            scheduler.schedule(f"s{i}", exp + i % 100)
        assert len(asyncio.all_tasks()) == tasks
        for i in range(0, 10_000, 2):
            scheduler.cancel(f"s{i}")
        assert len(scheduler) == 5_000
        await fired.nothing(within=0.2)


async def test_a_mass_expiry_fires_every_socket_once() -> None:
    async with running(window=0) as (scheduler, fired):
        exp = int(time.time())  # already due
        for i in range(600):
            scheduler.schedule(f"s{i}", exp)
        got = [await fired.next() for _ in range(600)]
        assert sorted(key for _, key, _ in got) == sorted(f"s{i}" for i in range(600))
        assert {what for what, _, _ in got} == {"expired"}
        await fired.nothing(within=0.2)


# -- over Redis -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def buses(redis_url: str, channel: str, n: int) -> AsyncIterator[list[ControlBus]]:
    clients = [Redis.from_url(redis_url, decode_responses=True) for _ in range(n)]
    nodes = [ControlBus() for _ in range(n)]
    ready = [asyncio.Event() for _ in range(n)]
    tasks = [
        asyncio.create_task(bus.run(client, channel, event))
        for bus, client, event in zip(nodes, clients, ready, strict=True)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), 5)
        yield nodes
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            await client.aclose()


async def test_a_command_runs_on_every_node_and_sums_their_counts(
    redis_url: str, redis_channel: str
) -> None:
    async with buses(redis_url, redis_channel, 3) as nodes:
        seen: list[tuple[int, dict[str, Any]]] = []
        for index, bus in enumerate(nodes):

            async def handler(args: dict[str, Any], index: int = index) -> int:
                seen.append((index, args))
                return index + 1

            bus.on_command("kick", handler)
        assert await nodes[1].command("kick", {"slug": "acme", "sub": "u"}) == 1 + 2 + 3
        assert sorted(i for i, _ in seen) == [0, 1, 2]
        assert all(args == {"slug": "acme", "sub": "u"} for _, args in seen)


async def test_a_command_waits_at_most_a_second_for_a_silent_node(
    redis_url: str, redis_channel: str
) -> None:
    async with buses(redis_url, redis_channel, 2) as nodes:
        stuck = asyncio.Event()

        async def slow(args: dict[str, Any]) -> int:
            await stuck.wait()
            return 5

        async def quick(args: dict[str, Any]) -> int:
            return 1

        nodes[0].on_command("kick", quick)
        nodes[1].on_command("kick", slow)
        started = time.monotonic()
        assert await nodes[0].command("kick", {}, within=0.5) == 1
        assert time.monotonic() - started < 3
        stuck.set()


async def test_the_api_limit_is_one_budget_for_every_node(
    redis_url: str, redis_channel: str
) -> None:
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        one, two = ApiRateLimiter(client, redis_channel), ApiRateLimiter(client, redis_channel)
        slug = f"t-{uuid.uuid4().hex[:8]}"
        await one.take(slug, 0.1)  # a burst of one, then one call per 10 s
        with pytest.raises(RateLimited) as refused:
            await two.take(slug, 0.1)
        assert 0 < (refused.value.retry_after_ms or 0) <= 10_000
        await two.take(f"{slug}-other", 0.1)  # another tenant has its own budget
    finally:
        await client.aclose()


async def test_without_redis_the_api_limit_is_a_local_bucket() -> None:
    limiter = ApiRateLimiter()
    for _ in range(3):
        await limiter.take("acme", 3)
    with pytest.raises(RateLimited) as refused:
        await limiter.take("acme", 3)
    assert refused.value.code == "rate_limited"
    assert refused.value.message == "more than 3 API requests per second for this tenant"
