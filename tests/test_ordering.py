"""Ordered live delivery (DESIGN §11) on a real node: gaps are repaired from the database, in
order, and a socket never gets a seq twice."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from socketio import AsyncClient
from sqlalchemy import event

from orgcast.services.messages import NewMessage
from orgcast.settings import MessagesSettings
from orgcast.state import SERVICES
from tests.support import Inbox, Server, call, eventually, node_settings, start_server


async def _member(server: Server, slug: str, sub: str, room: str | None = None) -> AsyncClient:
    """A client of ``sub`` connected to ``slug``, and joined to ``room`` when one is given."""
    client = await server.connect(slug, await server.token(slug, sub))
    if room is not None:
        assert (await call(client, slug, "join", {"room": room}))["ok"]
    return client


async def _store_without_broadcast(server: Server, slug: str, room: str, body: str) -> int:
    """What a node that died between its commit and its broadcast leaves behind."""
    services = server.app[SERVICES]
    tenant = await services.tenants.get(slug)
    row = await services.messages.send(NewMessage(tenant.id, room, "ghost", None, body, None))
    return row.seq


async def test_a_message_stored_but_never_broadcast_is_delivered_live_before_the_next_one(
    server: Server,
) -> None:
    tenant = await server.create_tenant()
    ns = f"/{tenant.slug}"
    alice = await _member(server, tenant.slug, "alice", "r")
    bob = await _member(server, tenant.slug, "bob", "r")
    inbox = Inbox(bob, "message", ns)

    lost = await _store_without_broadcast(server, tenant.slug, "r", '"lost"')
    ack = await call(alice, tenant.slug, "message", {"room": "r", "body": "next"})

    first, second = await inbox.get(), await inbox.get()
    assert (first["seq"], first["body"], first["sender"]["id"]) == (lost, "lost", "ghost")
    assert (second["seq"], second["body"]) == (ack["seq"], "next") == (lost + 1, "next")
    await inbox.expect_nothing()
    assert server.app[SERVICES].hub.ordering.repaired == 1


async def test_the_sender_never_gets_its_own_message_even_when_its_room_had_a_gap(
    server: Server,
) -> None:
    tenant = await server.create_tenant()
    ns = f"/{tenant.slug}"
    alice = await _member(server, tenant.slug, "alice", "r")
    inbox = Inbox(alice, "message", ns)

    lost = await _store_without_broadcast(server, tenant.slug, "r", "1")
    ack = await call(alice, tenant.slug, "message", {"room": "r", "body": 2})

    assert ack["seq"] == lost + 1
    assert (await inbox.get())["seq"] == lost  # the gap, before the ack's seq
    await inbox.expect_nothing()


async def test_a_join_after_messages_gets_live_only_what_follows_its_ack_seq(
    server: Server,
) -> None:
    tenant = await server.create_tenant()
    ns = f"/{tenant.slug}"
    alice = await _member(server, tenant.slug, "alice", "r")
    for n in range(3):
        await call(alice, tenant.slug, "message", {"room": "r", "body": n})
    bob = await _member(server, tenant.slug, "bob")
    inbox = Inbox(bob, "message", ns)

    joined = await call(bob, tenant.slug, "join", {"room": "r", "since": 1})
    await call(alice, tenant.slug, "message", {"room": "r", "body": 3})

    assert joined["seq"] == 3 and [m["seq"] for m in joined["missed"]] == [2, 3]
    assert (await inbox.get())["seq"] == 4
    await inbox.expect_nothing()


@contextlib.contextmanager
def room_reads(server: Server) -> Iterator[list[str]]:
    """The statements that read a room's seq (``store.room_state``) while the block runs."""
    engine = server.app[SERVICES].health._engine.sync_engine
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT ROOMS.ID, ROOMS.LAST_SEQ"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_a_join_to_a_room_the_node_delivers_to_reports_its_seq_without_a_database_read(
    server: Server,
) -> None:
    tenant = await server.create_tenant()
    ns = f"/{tenant.slug}"
    alice = await _member(server, tenant.slug, "alice")
    with room_reads(server) as first:
        assert (await call(alice, tenant.slug, "join", {"room": "r"}))["seq"] == 0
    assert len(first) == 1  # nobody here was in the room: its seq comes from the database
    for n in range(3):
        await call(alice, tenant.slug, "message", {"room": "r", "body": n})
    bob = await _member(server, tenant.slug, "bob")
    inbox = Inbox(bob, "message", ns)

    with room_reads(server) as second:
        joined = await call(bob, tenant.slug, "join", {"room": "r"})
    await call(alice, tenant.slug, "message", {"room": "r", "body": 3})

    assert second == []
    assert joined["seq"] == 3 and "missed" not in joined
    assert (await inbox.get())["seq"] == 4
    await inbox.expect_nothing()


async def test_a_join_reporting_the_nodes_seq_gets_a_message_stored_but_not_yet_delivered_live(
    server: Server,
) -> None:
    tenant = await server.create_tenant()
    ns = f"/{tenant.slug}"
    alice = await _member(server, tenant.slug, "alice", "r")
    lost = await _store_without_broadcast(server, tenant.slug, "r", '"lost"')
    bob = await _member(server, tenant.slug, "bob")
    inbox = Inbox(bob, "message", ns)

    joined = await call(bob, tenant.slug, "join", {"room": "r"})
    ack = await call(alice, tenant.slug, "message", {"room": "r", "body": "next"})

    # The ack reports what this node delivered (nothing yet); the stored message is above it,
    # so it reaches bob live, repaired from the database before the next one.
    assert joined["seq"] == lost - 1
    assert [(await inbox.get())["seq"] for _ in range(2)] == [lost, ack["seq"]]
    await inbox.expect_nothing()


async def test_rooms_without_members_on_the_node_hold_no_ordering_state(server: Server) -> None:
    tenant = await server.create_tenant()
    ordering = server.app[SERVICES].hub.ordering
    before = ordering.tracked_rooms()
    alice = await _member(server, tenant.slug, "alice")
    for room in ("a", "b"):
        assert (await call(alice, tenant.slug, "join", {"room": room}))["ok"]
    assert ordering.tracked_rooms() == before + 2
    await call(alice, tenant.slug, "leave", {"room": "a"})
    assert ordering.tracked_rooms() == before + 1
    await alice.disconnect()

    async def released() -> bool:
        return ordering.tracked_rooms() == before

    await eventually(released, within=5)


async def test_the_last_message_of_a_quiet_room_that_was_never_broadcast_is_delivered_live(
    database_url: str, tmp_path: Path
) -> None:
    messages = MessagesSettings(retention_interval_seconds=3600, gap_poll_seconds=0.1)
    async with start_server(node_settings(database_url, tmp_path, messages=messages)) as node:
        tenant = await node.create_tenant()
        ns = f"/{tenant.slug}"
        bob = await _member(node, tenant.slug, "bob", "quiet")
        inbox = Inbox(bob, "message", ns)

        lost = await _store_without_broadcast(node, tenant.slug, "quiet", '"tail"')

        got = await inbox.get(within=10)
        assert (got["seq"], got["body"]) == (lost, "tail")
        await inbox.expect_nothing()


async def test_concurrent_reads_of_a_rooms_seq_share_one_statement(server: Server) -> None:
    tenant = await server.create_tenant()
    messages = server.app[SERVICES].messages
    tenant_id = (await server.app[SERVICES].tenants.get(tenant.slug)).id
    for n in range(3):
        await _store_without_broadcast(server, tenant.slug, "burst", str(n))

    with room_reads(server) as reads:
        seqs = await asyncio.gather(*(messages.room_seq(tenant_id, "burst") for _ in range(20)))

    assert seqs == [3] * 20
    assert len(reads) == 1


async def test_a_read_of_a_rooms_seq_asked_while_one_runs_is_a_later_statement(
    server: Server,
) -> None:
    """A join needs a read that starts after its call: one already running may predate what the
    room stored since, so callers that come while it runs wait for the next read."""
    tenant = await server.create_tenant()
    messages = server.app[SERVICES].messages
    tenant_id = (await server.app[SERVICES].tenants.get(tenant.slug)).id
    engine = server.app[SERVICES].health._engine.sync_engine
    order: list[str] = []
    later: list[asyncio.Future[list[int]]] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.lstrip().upper().startswith("SELECT ROOMS.ID, ROOMS.LAST_SEQ"):
            return
        order.append("read")
        if not later:  # the first read is running: ask again, from a task of its own
            order.append("asked")
            calls = (messages.room_seq(tenant_id, "r") for _ in range(5))
            later.append(asyncio.ensure_future(asyncio.gather(*calls)))

    event.listen(engine, "before_cursor_execute", record)
    try:
        first = await messages.room_seq(tenant_id, "r")
        again = await asyncio.wait_for(later[0], 5)
    finally:
        event.remove(engine, "before_cursor_execute", record)

    assert (first, again) == (0, [0] * 5)
    assert order == ["read", "asked", "read"]


async def test_joins_arriving_together_get_every_later_message_once_in_order(
    server: Server,
) -> None:
    tenant = await server.create_tenant()
    ns = f"/{tenant.slug}"
    joiners = [await _member(server, tenant.slug, f"u{i}") for i in range(8)]
    inboxes = [Inbox(client, "message", ns) for client in joiners]
    sender = await _member(server, tenant.slug, "sender")

    async def send() -> list[int]:
        return [
            (await call(sender, tenant.slug, "message", {"room": "r", "body": n}))["seq"]
            for n in range(10)
        ]

    assert (await call(sender, tenant.slug, "join", {"room": "r"}))["ok"]
    acks, *joined = await asyncio.gather(
        send(), *(call(c, tenant.slug, "join", {"room": "r"}) for c in joiners)
    )

    assert acks == list(range(1, 11))
    for inbox, join in zip(inboxes, joined, strict=True):
        expected = list(range(join["seq"] + 1, 11))
        assert [(await inbox.get())["seq"] for _ in expected] == expected
        await inbox.expect_nothing(0.05)
