"""Group commit: concurrent senders share batches, seq stays gap-free, the queue stays bounded.

Every test here runs a node of its own (default settings unless it says otherwise), so that
``MessageService.batches`` counts only its traffic.
The "database falls behind" case is made deterministic by holding a write lock on the room's row
from the test's own connection: the writer blocks inside its transaction, the bounded queue fills,
and later senders must get ``rate_limited`` at once; releasing the lock lets the accepted ones
commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import socketio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from orgcast.settings import MessagesSettings
from orgcast.state import SERVICES
from tests.support import Server, eventually, joined, node_settings, start_server

CALL_TIMEOUT = 15


@pytest.fixture
async def tiny_queue_node(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    """A node with one message in flight at a time and room for five more in the queue."""
    messages = MessagesSettings(
        queue_max=5, batch_max_size=1, batch_max_delay_ms=50, retention_interval_seconds=3600
    )
    async with start_server(node_settings(database_url, tmp_path, messages=messages)) as node:
        yield node


async def send(client: socketio.AsyncClient, slug: str, room: str, body: Any) -> dict[str, Any]:
    ack: dict[str, Any] = await client.call(
        "message", {"room": room, "body": body}, namespace=f"/{slug}", timeout=CALL_TIMEOUT
    )
    return ack


async def full_history(node: Server, slug: str, room: str) -> list[dict[str, Any]]:
    """Every stored message of a room, oldest first, paging with ``after_seq``."""
    messages: list[dict[str, Any]] = []
    for _ in range(100):
        after = messages[-1]["seq"] if messages else 0
        status, page = await node.request(
            "GET", f"/api/v1/tenants/{slug}/rooms/{room}/messages?after_seq={after}&limit=100"
        )
        assert status == 200, page
        messages.extend(page["messages"])
        if not page["has_more"]:
            return messages
    raise AssertionError("history did not end within 100 pages")


async def test_concurrent_senders_share_batches_and_get_seq_one_to_n_per_room(
    server: Server,
) -> None:
    node = server
    tenant = await node.create_tenant()
    rooms = ["lobby", "ops"]
    clients = [await joined(node, tenant, f"user{i}", rooms[i % 2]) for i in range(20)]
    before = node.app[SERVICES].messages.batches

    # 20 sockets x 10 messages, none waiting for its previous ack.
    calls = [
        send(client, tenant.slug, rooms[i % 2], {"from": i, "n": n})
        for n in range(10)
        for i, client in enumerate(clients)
    ]
    acks = await asyncio.gather(*calls)

    assert all(ack["ok"] is True for ack in acks), [a for a in acks if not a["ok"]]
    for index, room in enumerate(rooms):
        seqs = sorted(ack["seq"] for ack in acks if ack["room"] == room)
        assert seqs == list(range(1, 101)), f"room {room} (senders {index}::2)"
    batches = node.app[SERVICES].messages.batches - before
    assert 1 <= batches <= len(acks) // 4, f"{batches} batches for {len(acks)} messages"

    # History agrees with the acks: ids, seqs and bodies, each stored once.
    for room in rooms:
        stored = await full_history(node, tenant.slug, room)
        by_seq = {ack["seq"]: ack for ack in acks if ack["room"] == room}
        assert [m["seq"] for m in stored] == list(range(1, 101))
        assert [m["id"] for m in stored] == [by_seq[m["seq"]]["id"] for m in stored]
        assert len({(m["body"]["from"], m["body"]["n"]) for m in stored}) == 100


async def test_messages_of_one_socket_are_stored_in_the_order_sent(server: Server) -> None:
    node = server
    tenant = await node.create_tenant()
    clients = [await joined(node, tenant, f"user{i}", "lobby") for i in range(4)]

    acks = await asyncio.gather(
        *[
            asyncio.gather(*[send(client, tenant.slug, "lobby", n) for n in range(12)])
            for client in clients
        ]
    )

    for per_client in acks:
        assert all(ack["ok"] is True for ack in per_client), per_client
        seqs = [ack["seq"] for ack in per_client]
        assert seqs == sorted(seqs), seqs
    assert sorted(ack["seq"] for per in acks for ack in per) == list(range(1, 49))


async def test_rest_publish_and_socket_sends_into_one_room_get_seq_one_to_n_once(
    server: Server,
) -> None:
    node = server
    tenant = await node.create_tenant()
    room = "mixed"
    clients = [await joined(node, tenant, f"user{i}", room) for i in range(5)]
    listener = await joined(node, tenant, "listener", room)
    received: list[dict[str, Any]] = []
    listener.on("message", received.append, namespace=f"/{tenant.slug}")

    async def publish(n: int) -> dict[str, Any]:
        status, body = await node.request(
            "POST",
            f"/api/v1/tenants/{tenant.slug}/rooms/{room}/messages",
            json={"body": {"rest": n}},
        )
        assert status == 201, body
        return dict(body)

    socket_calls = [
        send(client, tenant.slug, room, {"socket": i, "n": n})
        for n in range(8)
        for i, client in enumerate(clients)
    ]
    results = await asyncio.gather(*socket_calls, *[publish(n) for n in range(40)])

    socket_acks, rest_acks = results[:40], results[40:]
    assert all(ack["ok"] is True for ack in socket_acks), socket_acks
    assert all(ack["duplicate"] is False for ack in rest_acks), rest_acks
    seqs = sorted(ack["seq"] for ack in results)
    assert seqs == list(range(1, 81))
    stored = await full_history(node, tenant.slug, room)
    assert [m["seq"] for m in stored] == list(range(1, 81))
    assert sorted(m["id"] for m in stored) == sorted(ack["id"] for ack in results)
    assert sum(1 for m in stored if "rest" in m["body"]) == 40

    # The listener hears every one of them exactly once, in seq order (bounded wait).
    async def all_received() -> bool:
        return len(received) >= 80

    await eventually(all_received, within=5)
    assert [m["seq"] for m in received] == list(range(1, 81))


async def test_full_queue_answers_rate_limited_at_once_and_accepted_ones_commit_after(
    tiny_queue_node: Server, database_url: str
) -> None:
    node = tiny_queue_node
    tenant = await node.create_tenant(limits={"messages_per_second": 1000})
    room = "flood"
    clients = [await joined(node, tenant, f"user{i}", room) for i in range(3)]
    first = await send(clients[0], tenant.slug, room, "first")
    assert first["ok"] is True and first["seq"] == 1, first

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as lock:
            # Hold the room row's write lock: the writer blocks in its upsert like a stalled DB.
            transaction = await lock.begin()
            tenant_id = (
                await lock.execute(
                    text("SELECT id FROM tenants WHERE slug = :slug"), {"slug": tenant.slug}
                )
            ).scalar_one()
            await lock.execute(
                text("UPDATE rooms SET last_seq = last_seq WHERE tenant_id = :t AND name = :r"),
                {"t": tenant_id, "r": room},
            )
            tasks = [
                asyncio.create_task(send(clients[n % 3], tenant.slug, room, {"n": n}))
                for n in range(30)
            ]

            # At most 1 in flight + 5 queued can be accepted; the rest are refused without waiting
            # for the database.
            async def answered_without_the_database() -> bool:
                return sum(t.done() for t in tasks) >= 24

            with contextlib.suppress(AssertionError):
                await eventually(answered_without_the_database, within=10)
            refused = [t for t in tasks if t.done()]
            assert len(refused) >= 24, f"only {len(refused)} sends answered while the DB stalls"
            for task in refused:
                ack = task.result()
                assert ack["ok"] is False, ack
                assert ack["error"]["code"] == "rate_limited", ack
                assert ack["error"]["retry_after_ms"] > 0, ack
            await transaction.commit()
    finally:
        await engine.dispose()

    acks = await asyncio.gather(*tasks)
    accepted = [ack for ack in acks if ack["ok"]]
    limited = [ack for ack in acks if not ack["ok"]]
    assert 5 <= len(accepted) <= 6, acks
    assert len(accepted) + len(limited) == 30
    assert all(ack["error"]["code"] == "rate_limited" for ack in limited), limited
    assert sorted(ack["seq"] for ack in accepted) == list(range(2, 2 + len(accepted)))

    # Exactly the acknowledged messages are stored; a refused one never is.
    stored = await full_history(node, tenant.slug, room)
    assert [m["id"] for m in stored] == [first["id"]] + [
        ack["id"] for ack in sorted(accepted, key=lambda a: a["seq"])
    ]
    again = await send(clients[1], tenant.slug, room, "after the stall")
    assert again["ok"] is True and again["seq"] == 2 + len(accepted), again


async def test_flood_on_tiny_queue_never_hangs_and_every_ok_ack_is_stored(
    tiny_queue_node: Server,
) -> None:
    node = tiny_queue_node
    tenant = await node.create_tenant(limits={"messages_per_second": 1000})
    room = f"flood-{uuid.uuid4().hex[:6]}"
    clients = [await joined(node, tenant, f"user{i}", room) for i in range(10)]

    acks = await asyncio.gather(
        *[send(client, tenant.slug, room, {"n": n}) for n in range(20) for client in clients]
    )

    accepted = [ack for ack in acks if ack["ok"]]
    limited = [ack for ack in acks if not ack["ok"]]
    assert len(accepted) + len(limited) == 200
    assert accepted, "no message got through"
    assert limited, "a queue of five absorbed a burst of 200"
    for ack in limited:
        assert ack["error"]["code"] == "rate_limited", ack
        assert ack["error"]["retry_after_ms"] > 0, ack
    assert sorted(ack["seq"] for ack in accepted) == list(range(1, len(accepted) + 1))
    stored = await full_history(node, tenant.slug, room)
    assert sorted(m["id"] for m in stored) == sorted(ack["id"] for ack in accepted)
