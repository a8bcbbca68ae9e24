"""Retention: expired messages go in bounded batches, per tenant, and replay says what was lost.

Messages are stored through the node's own ``MessageService`` and then aged by moving their ``ts``
back with SQL on the test's own connection; ``RetentionTask.sweep`` runs on demand. Deletions are
observed with a SQLAlchemy cursor event on every engine in the process, which sees each DELETE the
sweep issues and how many rows it removed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import create_async_engine

from orgcast.services.messages import NewMessage, encode_body
from orgcast.services.retention import RetentionTask
from orgcast.settings import MessagesSettings
from orgcast.state import SERVICES
from tests.support import Server, Tenant, node_settings, start_server

DAY_MS = 86_400_000
BATCH = 7


@pytest.fixture
async def node(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    messages = MessagesSettings(retention_batch=BATCH, retention_interval_seconds=3600)
    async with start_server(node_settings(database_url, tmp_path, messages=messages)) as server:
        yield server


@pytest.fixture
def deletes() -> Iterator[list[int]]:
    """Row counts of every ``DELETE FROM messages`` run while the test runs."""
    counts: list[int] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM MESSAGES"):
            counts.append(cursor.rowcount)

    event.listen(Engine, "after_cursor_execute", record)
    yield counts
    event.remove(Engine, "after_cursor_execute", record)


async def store(node: Server, tenant: Tenant, room: str, count: int) -> list[int]:
    """Store ``count`` messages through the service; returns their seqs."""
    services = node.app[SERVICES]
    tenant_id = await tenant_id_of(node, tenant)
    futures = [
        services.messages.send(
            NewMessage(tenant_id, room, "system", None, encode_body({"n": n}, 1000), None)
        )
        for n in range(count)
    ]
    return [row.seq for row in await asyncio.gather(*futures)]


async def tenant_id_of(node: Server, tenant: Tenant) -> int:
    return (await node.app[SERVICES].tenants.get(tenant.slug)).id


async def age(database_url: str, tenant_id: int, room: str, up_to_seq: int, days: int) -> int:
    """Move the ts of a room's messages with seq <= up_to_seq ``days`` into the past."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(
                text(
                    "UPDATE messages SET ts = ts - :delta WHERE tenant_id = :t AND seq <= :seq"
                    " AND room_id = (SELECT id FROM rooms WHERE tenant_id = :t AND name = :r)"
                ),
                {"delta": days * DAY_MS, "t": tenant_id, "seq": up_to_seq, "r": room},
            )
            return int(result.rowcount)
    finally:
        await engine.dispose()


async def joined(node: Server, tenant: Tenant) -> socketio.AsyncClient:
    return await node.connect(tenant.slug, await node.token(tenant.slug, sub="reader"))


async def join(client: socketio.AsyncClient, tenant: Tenant, room: str, since: int) -> Any:
    return await client.call(
        "join", {"room": room, "since": since}, namespace=f"/{tenant.slug}", timeout=10
    )


def sweeper(node: Server) -> RetentionTask:
    services = node.app[SERVICES]
    return RetentionTask(services.tenants, services.messages, node.settings)


async def test_sweep_deletes_expired_messages_in_bounded_batches_and_spares_other_tenants(
    node: Server, database_url: str, deletes: list[int]
) -> None:
    short = await node.create_tenant(limits={"history_retention_days": 1})
    long = await node.create_tenant(limits={"history_retention_days": 30})
    short_id, long_id = await tenant_id_of(node, short), await tenant_id_of(node, long)
    assert await store(node, short, "log", 25) == list(range(1, 26))
    assert await store(node, short, "side", 5) == list(range(1, 6))
    assert await store(node, long, "log", 10) == list(range(1, 11))
    assert await age(database_url, short_id, "log", 20, days=2) == 20
    assert await age(database_url, short_id, "side", 5, days=2) == 5
    assert await age(database_url, long_id, "log", 10, days=2) == 10

    deleted = await sweeper(node).sweep()

    assert deleted == 25
    # 25 rows at 7 per statement: never more than a batch at once.
    assert [n for n in deletes if n] == [7, 7, 7, 4]
    status, page = await node.request(
        "GET", f"/api/v1/tenants/{short.slug}/rooms/log/messages?limit=100"
    )
    assert status == 200
    assert [m["seq"] for m in page["messages"]] == list(range(21, 26))
    status, page = await node.request(
        "GET", f"/api/v1/tenants/{long.slug}/rooms/log/messages?limit=100"
    )
    assert status == 200
    assert [m["seq"] for m in page["messages"]] == list(range(1, 11))

    # A second sweep finds nothing left to do.
    deletes.clear()
    assert await sweeper(node).sweep() == 0
    assert [n for n in deletes if n] == []


async def test_join_since_older_than_retention_returns_what_remains_with_expired_flag(
    node: Server, database_url: str
) -> None:
    short = await node.create_tenant(limits={"history_retention_days": 1})
    long = await node.create_tenant(limits={"history_retention_days": 30})
    short_id, long_id = await tenant_id_of(node, short), await tenant_id_of(node, long)
    await store(node, short, "log", 25)
    await store(node, short, "side", 5)
    await store(node, long, "log", 10)
    await age(database_url, short_id, "log", 20, days=2)
    await age(database_url, short_id, "side", 5, days=2)
    await age(database_url, long_id, "log", 10, days=2)
    assert await sweeper(node).sweep() == 25
    client = await joined(node, short)

    ack = await join(client, short, "log", 0)
    assert ack["ok"] is True, ack
    assert (ack["seq"], ack["truncated"], ack["expired"]) == (25, False, True)
    assert [m["seq"] for m in ack["missed"]] == list(range(21, 26))
    assert [m["body"] for m in ack["missed"]] == [{"n": n} for n in range(20, 25)]

    ack = await join(client, short, "log", 12)
    assert ack["expired"] is True
    assert [m["seq"] for m in ack["missed"]] == list(range(21, 26))

    # Nothing after since was removed: no flag.
    ack = await join(client, short, "log", 20)
    assert "expired" not in ack, ack
    assert [m["seq"] for m in ack["missed"]] == list(range(21, 26))

    # A room whose every message expired still reports its seq.
    ack = await join(client, short, "side", 0)
    assert (ack["ok"], ack["seq"], ack["missed"], ack["expired"]) == (True, 5, [], True)
    ack = await join(client, short, "side", 5)
    assert (ack["seq"], ack["missed"]) == (5, [])
    assert "expired" not in ack, ack

    # History below what remains returns what exists, not an error.
    history = await client.call(
        "history", {"room": "log", "before_seq": 21}, namespace=f"/{short.slug}", timeout=10
    )
    assert history == {"ok": True, "room": "log", "messages": [], "has_more": False}

    # The other tenant's log is whole.
    other = await joined(node, long)
    ack = await join(other, long, "log", 0)
    assert [m["seq"] for m in ack["missed"]] == list(range(1, 11))
    assert "expired" not in ack, ack

    # seq keeps counting where it was, in both rooms.
    sent = await client.call(
        "message", {"room": "log", "body": "after"}, namespace=f"/{short.slug}", timeout=10
    )
    assert sent["ok"] is True and sent["seq"] == 26, sent
    assert await store(node, short, "side", 1) == [6]


async def test_sweep_runs_beside_live_sends_which_keep_their_seq(
    node: Server, database_url: str
) -> None:
    tenant = await node.create_tenant(limits={"history_retention_days": 1})
    tenant_id = await tenant_id_of(node, tenant)
    await store(node, tenant, "busy", 300)
    await age(database_url, tenant_id, "busy", 300, days=3)
    client = await joined(node, tenant)
    ack = await join(client, tenant, "busy", 300)
    assert ack["ok"] is True and ack["seq"] == 300

    sweep = asyncio.create_task(sweeper(node).sweep())
    acks = await asyncio.gather(
        *[
            client.call(
                "message", {"room": "busy", "body": n}, namespace=f"/{tenant.slug}", timeout=15
            )
            for n in range(20)
        ]
    )
    deleted = await sweep

    assert deleted == 300
    assert all(a["ok"] is True for a in acks), acks
    assert [a["seq"] for a in acks] == list(range(301, 321))
    ack = await join(client, tenant, "busy", 0)
    assert [m["seq"] for m in ack["missed"]] == list(range(301, 321))
    assert ack["expired"] is True
