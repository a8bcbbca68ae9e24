"""The delivery worker's claim, on a real database of each kind: outbox rows become deliveries of
at most ``max_batch`` events, as many per endpoint as it has free slots, oldest first, with the
request body the receiver gets; rows another transaction holds are skipped (PostgreSQL); and
successes recorded together are each recorded once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from orgcast.store import schema
from orgcast.store import webhooks as store
from orgcast.store.models import Tenant, WebhookDelivery, WebhookEndpoint, WebhookEvent

NOW = 1_764_000_000_000
SECRET = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3"


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_database"))
    return f"sqlite+aiosqlite:///{tmp_path / 'claim.sqlite3'}"


@pytest.fixture
async def sessions(url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    await schema.upgrade(url)
    engine = create_async_engine(url)
    try:
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()


async def tenant_with_endpoints(
    sessions: async_sessionmaker[AsyncSession], slug: str, *endpoints: str
) -> int:
    async with sessions.begin() as session:
        tenant = Tenant(slug=slug, name=slug, created_at=NOW, updated_at=NOW)
        session.add(tenant)
        await session.flush()
        for endpoint in endpoints:
            session.add(
                WebhookEndpoint(
                    id=endpoint, tenant_id=tenant.id, url=f"http://127.0.0.1:1/{endpoint}",
                    events=["*"], enabled=True, secret=SECRET, created_at=NOW, updated_at=NOW,
                )
            )  # fmt: skip
        return tenant.id


async def write(
    sessions: async_sessionmaker[AsyncSession], tenant_id: int, endpoint: str, first: int, n: int
) -> None:
    async with sessions.begin() as session:
        await store.insert_events(
            session,
            [
                store.NewEvent(tenant_id, endpoint, f"evt_{endpoint}_{i:04d}", "message.created",
                               NOW + i, json.dumps({"seq": i, "text": "h\u00e9 \"quoted\""}))
                for i in range(first, first + n)
            ],
        )  # fmt: skip


async def claim(
    session: AsyncSession, *, busy: dict[str, int] | None = None, limit: int = 64
) -> list[store.Claimed]:
    return await store.claim(
        session, now=NOW + 10_000, lease_ms=20_000, busy=busy or {}, per_endpoint=2,
        limit=limit, max_batch=100,
    )  # fmt: skip


async def outbox(sessions: async_sessionmaker[AsyncSession], endpoint: str) -> int:
    async with sessions() as session:
        query = select(func.count()).where(WebhookEvent.endpoint_id == endpoint)
        return int(await session.scalar(query) or 0)


async def test_outbox_rows_become_full_batches_per_free_slot_oldest_first(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await tenant_with_endpoints(sessions, "claim-a", "ep_a", "ep_b", "ep_c")
    await write(sessions, tenant, "ep_b", 0, 30)  # one slot busy already: 1 batch
    await write(sessions, tenant, "ep_c", 0, 5)  # both slots busy: none
    await write(sessions, tenant, "ep_a", 0, 250)  # 2 slots, 170 of it read (200 rows a round)
    async with sessions.begin() as session:
        claimed = await claim(session, busy={"ep_b": 1, "ep_c": 2})

    by_endpoint: dict[str, list[store.Claimed]] = {}
    for delivery in claimed:
        by_endpoint.setdefault(delivery.endpoint_id, []).append(delivery)
    assert {e: [d.events for d in ds] for e, ds in by_endpoint.items()} == {
        "ep_b": [30],
        "ep_a": [100, 70],
    }
    assert [d.endpoint_id for d in claimed] == ["ep_b", "ep_a", "ep_a"]  # oldest event first
    assert [await outbox(sessions, e) for e in ("ep_a", "ep_b", "ep_c")] == [80, 0, 5]

    seen: list[str] = []
    for delivery in claimed:
        body = json.loads(delivery.body)
        assert list(body) == ["events"]
        for event in body["events"]:
            assert set(event) == {"id", "type", "tenant", "created_at", "data"}
            assert (event["type"], event["tenant"]) == ("message.created", "claim-a")
            assert event["data"]["text"] == 'h\u00e9 "quoted"'
            assert event["created_at"] == NOW + event["data"]["seq"]
        seen += [event["id"] for event in body["events"]]
        assert (delivery.attempt, delivery.url, delivery.secrets, delivery.slug) == (
            0, f"http://127.0.0.1:1/{delivery.endpoint_id}", (SECRET,), "claim-a"
        )  # fmt: skip
    # Oldest first, each event once, batches in order.
    assert seen == [f"evt_ep_b_{i:04d}" for i in range(30)] + [
        f"evt_ep_a_{i:04d}" for i in range(170)
    ]
    async with sessions() as session:
        rows = (await session.scalars(select(WebhookDelivery))).all()
    stored = {row.id: row for row in rows}
    assert set(stored) == {d.id for d in claimed}
    for delivery in claimed:
        row = stored[delivery.id]
        assert row.body.encode() == delivery.body
        assert row.event_ids == [e["id"] for e in json.loads(delivery.body)["events"]]
        assert (row.status, row.attempt, row.lease_until) == ("pending", 0, NOW + 30_000)

    # The next round takes what was left, and a limit caps the number of deliveries.
    async with sessions.begin() as session:
        rest = await claim(session, busy={"ep_a": 2, "ep_c": 1})
        assert [d.endpoint_id for d in rest] == ["ep_c"]
        more = await claim(session, busy={"ep_c": 2}, limit=1)
        assert [(d.endpoint_id, d.events) for d in more] == [("ep_a", 80)]


async def test_successes_recorded_together_are_each_recorded_once(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await tenant_with_endpoints(sessions, "claim-b", "ep_d")
    await write(sessions, tenant, "ep_d", 0, 120)
    async with sessions.begin() as session:
        claimed = await claim(session)
    assert [d.events for d in claimed] == [100, 20]
    done = [store.Delivered(d.id, 200 + i, 7 + i) for i, d in enumerate(claimed)]
    async with sessions.begin() as session:
        await store.record_delivered(session, done, NOW + 20_000)
    async with sessions() as session:
        rows = (await session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))).all()
        by_id = {row.id: row for row in rows}
        for i, delivery in enumerate(claimed):
            row = by_id[delivery.id]
            assert (row.status, row.attempt, row.http_status, row.latency_ms) == (
                "delivered", 1, 200 + i, 7 + i
            )  # fmt: skip
            assert (row.lease_until, row.next_attempt_at, row.updated_at) == (
                None, None, NOW + 20_000
            )  # fmt: skip
        # Delivered rows are never claimed again.
        assert await claim(session) == []


@pytest.mark.postgres
async def test_two_claims_at_once_never_take_the_same_outbox_row(pg_database: str) -> None:
    await schema.upgrade(pg_database)
    engine = create_async_engine(pg_database)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        tenant = await tenant_with_endpoints(sessions, "claim-c", "ep_e")
        await write(sessions, tenant, "ep_e", 0, 350)
        async with sessions.begin() as first:
            held = await claim(first, limit=1)  # reads and locks the 200 oldest rows
            async with sessions.begin() as second:
                # The rows the first transaction holds are skipped, not waited for.
                other = await asyncio.wait_for(claim(second), timeout=10)
        async with sessions.begin() as third:
            rest = await claim(third)  # what the first read but did not use
        ids = [[e["id"] for e in json.loads(d.body)["events"]] for d in held + other + rest]
        assert ids == [
            [f"evt_ep_e_{i:04d}" for i in range(0, 100)],
            [f"evt_ep_e_{i:04d}" for i in range(200, 300)],
            [f"evt_ep_e_{i:04d}" for i in range(300, 350)],
            [f"evt_ep_e_{i:04d}" for i in range(100, 200)],
        ]
    finally:
        await engine.dispose()
