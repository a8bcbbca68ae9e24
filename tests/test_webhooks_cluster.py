"""Webhooks across real ``orgcast serve`` processes sharing one PostgreSQL database: a row is
delivered by one node only, and rows a killed node left are delivered by another."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.nodes import NodeProcess
from tests.support import ADMIN_TOKEN, eventually, unique_slug
from tests.webhooks_support import receiver

pytestmark = pytest.mark.postgres

FAST_ENV = {
    "ORGCAST_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true",
    "ORGCAST_WEBHOOKS__RETRY_SCHEDULE_SECONDS": "[0.2]",
    "ORGCAST_WEBHOOKS__RETRY_JITTER": "0",
    "ORGCAST_WEBHOOKS__POLL_INTERVAL_SECONDS": "0.2",
    "ORGCAST_WEBHOOKS__TIMEOUT_SECONDS": "1",
}


@pytest.fixture
def nodes(pg_database: str, tmp_path: Path) -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for node in started:
        node.stop()


def start(nodes: list[NodeProcess], database: str, tmp_path: Path) -> NodeProcess:
    node = NodeProcess(database, tmp_path, **FAST_ENV)
    nodes.append(node)
    return node


async def call(
    http: aiohttp.ClientSession, method: str, url: str, *, token: str = ADMIN_TOKEN, **kw: Any
) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.request(method, url, headers=headers, **kw) as response:
        assert response.status < 300, await response.text()
        return await response.json()


async def tenant_with_endpoint(http: aiohttp.ClientSession, base: str, url: str) -> str:
    slug = unique_slug()
    await call(http, "POST", f"{base}/api/v1/tenants", json={"slug": slug, "name": slug})
    await call(http, "POST", f"{base}/api/v1/tenants/{slug}/webhooks",
               json={"url": url, "events": ["message.created"]})  # fmt: skip
    return slug


async def test_two_nodes_never_both_deliver_a_row(
    nodes: list[NodeProcess], pg_database: str, tmp_path: Path
) -> None:
    first = start(nodes, pg_database, tmp_path)
    await first.ready()  # one node migrates the empty database before the other starts
    second = start(nodes, pg_database, tmp_path)
    await second.ready()
    async with receiver() as target, aiohttp.ClientSession() as http:
        slug = await tenant_with_endpoint(http, first.url, target.url)
        acked = []
        for i in range(120):
            # Both nodes store messages and both run a worker against the same outbox.
            node = (first, second)[i % 2]
            acked.append(
                await call(
                    http,
                    "POST",
                    f"{node.url}/api/v1/tenants/{slug}/rooms/r{i % 3}/messages",
                    json={"body": i},
                )
            )

        async def all_arrived() -> bool:
            return len(target.events()) >= len(acked)

        await eventually(all_arrived, within=20)
        event_ids = [e["id"] for e in target.events()]
        assert sorted(event_ids) == sorted("evt_" + a["id"] for a in acked)
        assert len(set(event_ids)) == len(event_ids)
        # One POST per delivery: no delivery was attempted by both nodes.
        delivery_ids = collections.Counter(r.headers["webhook-id"] for r in target.received)
        assert set(delivery_ids.values()) == {1}
        assert target.attempts == len(delivery_ids)


async def test_rows_a_killed_node_left_undelivered_are_delivered_by_the_next_node(
    nodes: list[NodeProcess], pg_database: str, tmp_path: Path
) -> None:
    doomed = start(nodes, pg_database, tmp_path)
    await doomed.ready()
    async with receiver() as target, aiohttp.ClientSession() as http:
        slug = await tenant_with_endpoint(http, doomed.url, target.url)
        target.script = [500] * 10_000  # every attempt fails while the first node lives
        acked = [
            await call(
                http,
                "POST",
                f"{doomed.url}/api/v1/tenants/{slug}/rooms/lobby/messages",
                json={"body": i},
            )
            for i in range(30)
        ]

        async def attempted() -> bool:
            return target.attempts >= 3

        await eventually(attempted)
        doomed.kill()
        target.script.clear()
        survivor = start(nodes, pg_database, tmp_path)
        await survivor.ready()

        async def all_arrived() -> bool:
            return len({e["id"] for e in target.events()}) == len(acked)

        # A delivery the killed node held in flight waits for its lease (timeout + 15 s).
        await eventually(all_arrived, within=40)
        assert {e["id"] for e in target.events()} == {"evt_" + a["id"] for a in acked}
