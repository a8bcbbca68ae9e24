"""Limits that keep one client from costing the server more than it pays: replay pages bounded
by bytes, per-user message rates, connect rates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

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
