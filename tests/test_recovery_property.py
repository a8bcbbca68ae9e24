"""Property: whatever the interleaving of sends, drops and rejoins, no stored message is missed.

Hypothesis writes random programs over three clients in one room: send a few messages, publish
from the tenant backend, disconnect, reconnect with ``join {since: last seen seq}``, or send and
drop the connection before the ack can arrive. After the program every client catches up once
more; then, for every client, the seqs it learned through any channel (broadcasts, ``missed`` of
each join, its own acks) must be exactly ``1..N`` where ``N`` is the room's last seq, every
acknowledged message must be among them with the id and body it was stored with, and each channel
on its own must deliver strictly increasing seqs. Channels may overlap (a join's ``missed`` may
repeat a broadcast that raced it), so the union is compared as a set, but the set must equal the
stored log, so de-duplication can never hide a loss.

One node serves every example (module-scoped, on the module's event loop); each example uses a
fresh room, and fresh connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import socketio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import Server, Tenant, node_settings, start_server

CLIENTS = 3
pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Shared:
    node: Server
    tenant: Tenant
    tokens: list[str]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Shared]:
    data_dir: Path = tmp_path_factory.mktemp("property")
    settings = node_settings(database_url, data_dir)
    # The programs drop and reconnect the same users many times a second: this test is about
    # recovery, so the connect-rate limits (tested in test_hardening_limits) are lifted.
    settings.server.connects_per_address = 100_000
    async with start_server(settings) as node:
        tenant = await node.create_tenant(
            limits={"messages_per_second": 10_000, "connection_rate": 100_000}
        )
        tokens = [await node.token(tenant.slug, sub=f"user{i}") for i in range(CLIENTS)]
        yield Shared(node, tenant, tokens)


@dataclass
class Peer:
    """One client slot: its live connection (if any) and everything it has learned."""

    index: int
    client: socketio.AsyncClient | None = None
    last_seen: int = 0
    channels: list[list[int]] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)
    learned: dict[int, tuple[str, Any]] = field(default_factory=dict)

    def learn(self, messages: list[dict[str, Any]], channel: list[int]) -> None:
        for message in messages:
            channel.append(message["seq"])
            self.note(message["seq"], message["id"], message["body"])

    def note(self, seq: int, message_id: str, body: Any) -> None:
        previous = self.learned.setdefault(seq, (message_id, body))
        assert previous == (message_id, body), f"seq {seq} seen as {previous} and {message_id}"
        self.last_seen = max(self.last_seen, seq)


class Program:
    """Runs the steps of one example against the shared node."""

    def __init__(self, shared: Shared) -> None:
        self.node = shared.node
        self.slug = shared.tenant.slug
        self.namespace = f"/{self.slug}"
        self.tokens = shared.tokens
        self.room = f"p-{uuid.uuid4().hex[:12]}"
        self.peers = [Peer(i) for i in range(CLIENTS)]
        self.acked: dict[int, tuple[str, Any]] = {}
        self.sent = 0

    async def connect(self, peer: Peer) -> None:
        client = socketio.AsyncClient(reconnection=False)
        broadcasts: list[int] = []
        peer.channels.append(broadcasts)

        def on_message(message: dict[str, Any]) -> None:
            assert message["room"] == self.room, message
            peer.learn([message], broadcasts)

        client.on("message", on_message, namespace=self.namespace)
        await client.connect(
            self.node.url,
            namespaces=[self.namespace],
            auth={"token": self.tokens[peer.index]},
            transports=["websocket"],
            wait_timeout=5,
        )
        peer.client = client
        await self.join(peer)

    async def join(self, peer: Peer) -> None:
        assert peer.client is not None
        ack = await peer.client.call(
            "join",
            {"room": self.room, "since": peer.last_seen},
            namespace=self.namespace,
            timeout=10,
        )
        assert ack["ok"] is True, ack
        assert ack["truncated"] is False and "expired" not in ack, ack
        missed: list[int] = []
        peer.channels.append(missed)
        peer.learn(ack["missed"], missed)
        assert all(seq <= ack["seq"] for seq in missed), (missed, ack["seq"])

    async def disconnect(self, peer: Peer) -> None:
        if peer.client is not None:
            client, peer.client = peer.client, None
            await client.disconnect()

    def body(self) -> dict[str, Any]:
        self.sent += 1
        return {"n": self.sent, "room": self.room}

    async def send(self, peer: Peer, count: int) -> None:
        if peer.client is None:
            return
        bodies = [self.body() for _ in range(count)]
        acks = await asyncio.gather(
            *[
                peer.client.call(
                    "message",
                    {"room": self.room, "body": body},
                    namespace=self.namespace,
                    timeout=10,
                )
                for body in bodies
            ]
        )
        for body, ack in zip(bodies, acks, strict=True):
            assert ack["ok"] is True, ack
            self.acked[ack["seq"]] = (ack["id"], body)
            peer.acks.append(ack["seq"])
            peer.note(ack["seq"], ack["id"], body)

    async def send_and_drop(self, peer: Peer) -> None:
        """Send one message and hang up at once: it may or may not be stored, never half."""
        if peer.client is None:
            return
        body = self.body()
        answered: list[dict[str, Any]] = []
        await peer.client.emit(
            "message",
            {"room": self.room, "body": body},
            namespace=self.namespace,
            callback=answered.append,
        )
        await self.disconnect(peer)
        for ack in answered:
            if ack["ok"]:
                self.acked[ack["seq"]] = (ack["id"], body)

    async def publish(self, count: int) -> None:
        bodies = [self.body() for _ in range(count)]
        results = await asyncio.gather(
            *[
                self.node.request(
                    "POST",
                    f"/api/v1/tenants/{self.slug}/rooms/{self.room}/messages",
                    json={"body": body},
                )
                for body in bodies
            ]
        )
        for body, (status, ack) in zip(bodies, results, strict=True):
            assert status == 201, ack
            self.acked[ack["seq"]] = (ack["id"], body)

    async def run(self, steps: list[tuple[str, int, int]]) -> None:
        for peer in self.peers:
            await self.connect(peer)
        for action, index, count in steps:
            peer = self.peers[index]
            if action == "send":
                await self.send(peer, count)
            elif action == "publish":
                await self.publish(count)
            elif action == "disconnect":
                await self.disconnect(peer)
            elif action == "reconnect" and peer.client is None:
                await self.connect(peer)
            elif action == "drop":
                await self.send_and_drop(peer)
        # Final catch-up: everyone (re)joins since the last seq it saw.
        for peer in self.peers:
            if peer.client is None:
                await self.connect(peer)
            else:
                await self.join(peer)

    async def stored(self) -> dict[int, tuple[str, Any]]:
        status, page = await self.node.request(
            "GET", f"/api/v1/tenants/{self.slug}/rooms/{self.room}/messages?after_seq=0&limit=100"
        )
        assert status == 200 and page["has_more"] is False, page
        return {m["seq"]: (m["id"], m["body"]) for m in page["messages"]}

    async def close(self) -> None:
        for peer in self.peers:
            with contextlib.suppress(Exception):
                await self.disconnect(peer)


step = st.one_of(
    st.tuples(st.just("send"), st.integers(0, CLIENTS - 1), st.integers(1, 4)),
    st.tuples(st.just("publish"), st.just(0), st.integers(1, 3)),
    st.tuples(st.just("disconnect"), st.integers(0, CLIENTS - 1), st.just(0)),
    st.tuples(st.just("reconnect"), st.integers(0, CLIENTS - 1), st.just(0)),
    st.tuples(st.just("drop"), st.integers(0, CLIENTS - 1), st.just(0)),
)


@settings(max_examples=40, deadline=None, database=None)
@given(steps=st.lists(step, min_size=1, max_size=14))
async def test_random_send_drop_rejoin_programs_never_miss_or_repeat_a_stored_message(
    shared: Shared, steps: list[tuple[str, int, int]]
) -> None:
    program = Program(shared)
    try:
        await program.run(steps)
        stored = await program.stored()
    finally:
        await program.close()

    top = max(stored, default=0)
    assert sorted(stored) == list(range(1, top + 1)), "the log has a gap"
    for seq, entry in program.acked.items():
        assert stored.get(seq) == entry, f"acknowledged seq {seq} is not stored as acked"
    for peer in program.peers:
        assert sorted(peer.learned) == list(range(1, top + 1)), f"client {peer.index} missed some"
        assert all(peer.learned[seq] == stored[seq] for seq in stored)
        for channel in [*peer.channels, peer.acks]:
            assert channel == sorted(set(channel)), f"client {peer.index}: {channel}"
