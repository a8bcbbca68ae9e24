"""Limits that keep one client from costing the server more than it pays: replay pages bounded
by bytes, per-user message rates, connect rates."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import socketio
from redis.asyncio import Redis

from orgcast.errors import RateLimited
from orgcast.services.limits import UserRates
from orgcast.settings import MessagesSettings
from tests.support import Server, node_settings, start_server

BODY = "x" * 2000
PAGE_BYTES = 10_000


@pytest.fixture
async def small_pages(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    messages = MessagesSettings(retention_interval_seconds=3600, replay_max_bytes=PAGE_BYTES)
    async with start_server(node_settings(database_url, tmp_path, messages=messages)) as node:
        yield node


async def publish(server: Server, slug: str, room: str, count: int) -> None:
    for i in range(count):
        status, body = await server.request(
            "POST", f"/api/v1/tenants/{slug}/rooms/{room}/messages", json={"body": [i, BODY]}
        )
        assert status == 201, body


async def test_a_replay_stops_at_replay_max_bytes_and_says_truncated(small_pages: Server) -> None:
    server = small_pages
    tenant = await server.create_tenant()
    await publish(server, tenant.slug, "lobby", 12)
    client = await server.connect(tenant.slug, await server.token(tenant.slug))
    namespace = f"/{tenant.slug}"
    ack = await client.call("join", {"room": "lobby", "since": 0}, namespace=namespace)
    missed = ack["missed"]
    assert ack["truncated"] is True and ack["seq"] == 12
    assert 1 <= len(missed) <= PAGE_BYTES // len(BODY)
    assert [m["seq"] for m in missed] == list(range(1, len(missed) + 1))
    # Paging on with history gets the rest, a bounded page at a time.
    seen = [m["seq"] for m in missed]
    while seen[-1] < 12:
        page = await client.call(
            "history", {"room": "lobby", "after_seq": seen[-1], "limit": 100}, namespace=namespace
        )
        assert 1 <= len(page["messages"]) <= PAGE_BYTES // len(BODY)
        seen += [m["seq"] for m in page["messages"]]
        assert page["has_more"] is (seen[-1] < 12)
    assert seen == list(range(1, 13))


async def test_a_rest_history_page_stops_at_replay_max_bytes(small_pages: Server) -> None:
    server = small_pages
    tenant = await server.create_tenant()
    await publish(server, tenant.slug, "lobby", 12)
    status, page = await server.request(
        "GET", f"/api/v1/tenants/{tenant.slug}/rooms/lobby/messages?limit=100"
    )
    assert status == 200, page
    seqs = [m["seq"] for m in page["messages"]]
    assert page["has_more"] is True
    # The newest messages that fit, oldest first.
    assert seqs == list(range(13 - len(seqs), 13))
    assert 1 <= len(seqs) <= PAGE_BYTES // len(BODY)


async def test_one_message_larger_than_replay_max_bytes_still_replays(
    small_pages: Server,
) -> None:
    server = small_pages
    tenant = await server.create_tenant(limits={"max_message_bytes": 20_000})
    status, body = await server.request(
        "POST",
        f"/api/v1/tenants/{tenant.slug}/rooms/lobby/messages",
        json={"body": "y" * 15_000},
    )
    assert status == 201, body
    client = await server.connect(tenant.slug, await server.token(tenant.slug))
    ack = await client.call("join", {"room": "lobby", "since": 0}, namespace=f"/{tenant.slug}")
    assert [m["seq"] for m in ack["missed"]] == [1]
    assert ack["truncated"] is False


async def presence(client: socketio.AsyncClient, slug: str) -> dict[str, Any]:
    ack: dict[str, Any] = await client.call("presence", {"room": "lobby"}, namespace=f"/{slug}")
    return ack


async def test_messages_per_second_is_per_user_so_a_reconnect_does_not_refill_it(
    server: Server,
) -> None:
    # Half an event per second: one token, refilled in two seconds.
    tenant = await server.create_tenant(limits={"messages_per_second": 0.5})
    first = await server.connect(tenant.slug, await server.token(tenant.slug, "u1"))
    assert (await presence(first, tenant.slug))["ok"] is True
    limited = await presence(first, tenant.slug)
    assert limited["error"]["code"] == "rate_limited", limited
    await first.disconnect()
    again = await server.connect(tenant.slug, await server.token(tenant.slug, "u1"))
    limited = await presence(again, tenant.slug)
    assert limited["error"]["code"] == "rate_limited", limited
    assert limited["error"]["retry_after_ms"] > 0
    other = await server.connect(tenant.slug, await server.token(tenant.slug, "u2"))
    assert (await presence(other, tenant.slug))["ok"] is True


@pytest.mark.redis
async def test_user_rates_are_counted_cluster_wide_in_redis(
    redis_url: str, redis_channel: str
) -> None:
    client = Redis.from_url(redis_url, decode_responses=True)
    rates = UserRates(client, prefix=redis_channel)
    elsewhere = [UserRates(client, prefix=redis_channel) for _ in range(2)]
    try:
        for _ in range(3):
            window = int(time.time())
            # Two other nodes already admitted this user's 10 events of this second (twice the
            # rate, the most one bucket admits within a second).
            for node in elsewhere:
                for _ in range(5):
                    node.take(7, "u1", 5)
                await node.flush()
            rates.take(7, "u1", 5)  # this node's own bucket is full: admitted, then counted
            await rates.flush()
            if int(time.time()) != window:
                elsewhere = [UserRates(client, prefix=redis_channel) for _ in range(2)]
                continue  # a new second began meanwhile: counts start over; try again
            with pytest.raises(RateLimited) as refused:
                rates.take(7, "u1", 5)
            assert refused.value.retry_after_ms is not None
            assert int(await client.get(f"{redis_channel}:rate:7:{window}:u1")) == 11
            return
        raise AssertionError("three attempts crossed a second boundary")
    finally:
        await client.aclose()


async def test_connects_per_second_per_user_are_refused_with_connection_rate(
    database_url: str, tmp_path: Path
) -> None:
    settings = node_settings(database_url, tmp_path)
    settings.limits.connection_rate = 0.5
    async with start_server(settings) as server:
        tenant = await server.create_tenant()
        token = await server.token(tenant.slug, "looper")
        await server.connect(tenant.slug, token)
        refused = await server.refusal(tenant.slug, {"token": token})
        assert refused["code"] == "connection_rate", refused
        # Another user of the same tenant is not held back.
        await server.connect(tenant.slug, await server.token(tenant.slug, "other"))


async def test_connects_per_second_per_address_are_refused_with_connection_rate(
    database_url: str, tmp_path: Path
) -> None:
    settings = node_settings(database_url, tmp_path)
    settings.server.connects_per_address = 2
    async with start_server(settings) as server:
        tenant = await server.create_tenant()
        codes = []
        for i in range(4):
            token = await server.token(tenant.slug, f"user{i}")
            refused = await server.try_connect(tenant.slug, {"token": token})
            codes.append(None if refused is None else refused["code"])
        assert codes[:2] == [None, None]
        assert "connection_rate" in codes[2:], codes
