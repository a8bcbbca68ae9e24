"""Presence-like webhook events: decided cluster-wide, debounced by presence_grace_seconds.

A reconnect within the grace emits nothing; a real leave emits one member.left, one user.offline
and, for the room's last member, one room.vacated. With Redis, a user on two nodes is online
once, and leaving one node while still on the other is not offline.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from orgcast.state import PRESENCE_WEBHOOKS
from tests.support import (
    RedisSettings,
    Server,
    allow_connections,
    eventually,
    node_settings,
    start_server,
)
from tests.test_webhooks import add_endpoint
from tests.webhooks_support import FAST, Receiver, quiet_endpoints, receiver

PRESENCE = ["user.online", "user.offline", "member.joined", "member.left", "room.occupied",
            "room.vacated"]  # fmt: skip


@pytest.fixture
async def target() -> AsyncIterator[Receiver]:
    async with receiver() as found:
        yield found


@pytest.fixture(autouse=True)
async def _quiet_endpoints(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    yield
    if "pg_database" not in request.fixturenames:  # a database of the test's own is dropped
        await quiet_endpoints(request.getfixturevalue("database_url"))


def kinds(target: Receiver) -> list[str]:
    return [e["type"] for e in target.events()]


async def wait_for(target: Receiver, count: int) -> None:
    async def arrived() -> bool:
        return len(target.events()) >= count

    try:
        await eventually(arrived)
    except AssertionError:
        raise AssertionError(f"{count} events expected, received: {kinds(target)}") from None


async def joined(server: Server, slug: str, token: str, room: str = "lobby") -> Any:
    client = await server.connect(slug, token)
    ack = await client.call("join", {"room": room}, namespace=f"/{slug}")
    assert ack["ok"], ack
    return client


async def test_a_reconnect_within_the_grace_emits_nothing_and_a_real_leave_emits_one_of_each(
    database_url: str, tmp_path: Path, target: Receiver
) -> None:
    async with start_server(node_settings(database_url, tmp_path, webhooks=FAST)) as node:
        tenant = await node.create_tenant()
        await add_endpoint(node, tenant, target.url, PRESENCE)
        token = await node.token(tenant.slug, "ada", name="Ada")
        first = await joined(node, tenant.slug, token)
        await wait_for(target, 3)
        assert sorted(kinds(target)) == ["member.joined", "room.occupied", "user.online"]
        # Drop the connection and come back at once: within the grace, nothing is emitted.
        await first.disconnect()
        second = await joined(node, tenant.slug, token)
        await second.disconnect()
        await wait_for(target, 6)
        events = target.events()
        assert collections.Counter(e["type"] for e in events) == {t: 1 for t in PRESENCE}
        ada = {"id": "ada", "name": "Ada"}
        data = {e["type"]: e["data"] for e in events}
        assert data == {
            "user.online": {"user": ada}, "user.offline": {"user": ada},
            "member.joined": {"room": "lobby", "member": ada},
            "member.left": {"room": "lobby", "member": ada},
            "room.occupied": {"room": "lobby"}, "room.vacated": {"room": "lobby"},
        }  # fmt: skip
        assert all(e["tenant"] == tenant.slug and e["id"].startswith("evt_") for e in events)
        # The room's events keep their order: joined before left.
        order = kinds(target)
        assert order.index("member.joined") < order.index("member.left")


async def test_a_second_member_neither_occupies_nor_vacates_the_room(
    database_url: str, tmp_path: Path, target: Receiver
) -> None:
    async with start_server(node_settings(database_url, tmp_path, webhooks=FAST)) as node:
        tenant = await node.create_tenant()
        await add_endpoint(node, tenant, target.url, ["member.joined", "member.left",
                                                      "room.occupied", "room.vacated"])  # fmt: skip
        ada = await joined(node, tenant.slug, await node.token(tenant.slug, "ada"))
        bob = await joined(node, tenant.slug, await node.token(tenant.slug, "bob"))
        await wait_for(target, 3)
        await bob.disconnect()
        await wait_for(target, 4)
        await ada.disconnect()
        await wait_for(target, 6)
        assert kinds(target) == ["member.joined", "room.occupied", "member.joined", "member.left",
                                 "member.left", "room.vacated"]  # fmt: skip
        assert [e["data"].get("member", {}).get("id") for e in target.events()] == [
            "ada",
            None,
            "bob",
            "bob",
            "ada",
            None,
        ]


@pytest.fixture
async def pair(
    database_url: str, tmp_path: Path, redis_url: str, redis_channel: str
) -> AsyncIterator[tuple[Server, Server]]:
    redis = RedisSettings(url=redis_url, channel=redis_channel)
    async with contextlib.AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                start_server(
                    node_settings(database_url, tmp_path / str(i), redis=redis, webhooks=FAST)
                )
            )
            for i in range(2)
        ]
        yield nodes[0], nodes[1]


@pytest.mark.redis
async def test_a_user_on_two_nodes_is_online_once_and_offline_only_when_gone_from_both(
    pair: tuple[Server, Server], target: Receiver
) -> None:
    one, two = pair
    tenant = await one.create_tenant()
    await add_endpoint(one, tenant, target.url, PRESENCE)
    token = await one.token(tenant.slug, "ada")
    on_one = await joined(one, tenant.slug, token)
    await wait_for(target, 3)
    on_two = await joined(two, tenant.slug, token)
    await on_one.disconnect()  # still on the other node: not offline, not left
    bob = await joined(two, tenant.slug, await one.token(tenant.slug, "bob"), room="elsewhere")
    await wait_for(target, 6)
    await bob.disconnect()
    await wait_for(target, 9)
    await on_two.disconnect()
    await wait_for(target, 12)
    by_user = collections.Counter(
        (e["type"], (e["data"].get("user") or e["data"].get("member") or {}).get("id"))
        for e in target.events()
    )
    assert by_user == {
        ("user.online", "ada"): 1, ("member.joined", "ada"): 1, ("room.occupied", None): 2,
        ("user.online", "bob"): 1, ("member.joined", "bob"): 1,
        ("member.left", "bob"): 1, ("user.offline", "bob"): 1, ("room.vacated", None): 2,
        ("member.left", "ada"): 1, ("user.offline", "ada"): 1,
    }  # fmt: skip
    # ada's offline came after bob's: leaving node one while on node two emitted nothing.
    order = [(e["type"], (e["data"].get("user") or {}).get("id")) for e in target.events()]
    assert order.index(("user.offline", "bob")) < order.index(("user.offline", "ada"))


async def test_a_leave_decided_while_the_database_is_down_is_delivered_once_it_is_back(
    pg_server: str, pg_database: str, tmp_path: Path, target: Receiver
) -> None:
    async with start_server(node_settings(pg_database, tmp_path, webhooks=FAST)) as node:
        tenant = await node.create_tenant()
        await add_endpoint(node, tenant, target.url, PRESENCE)
        token = await node.token(tenant.slug, "ada", name="Ada")
        client = await joined(node, tenant.slug, token)
        await wait_for(target, 3)
        database = make_url(pg_database).database
        assert database is not None
        await allow_connections(pg_server, database, False)
        try:
            await client.disconnect()
            # The grace (0.5 s) runs out and the leave is decided while nothing can be written:
            # its three events are kept, none delivered.
            presence = node.app[PRESENCE_WEBHOOKS]

            async def kept() -> bool:
                return presence.kept == 3

            await eventually(kept, within=10)
            assert len(target.events()) == 3
        finally:
            await allow_connections(pg_server, database, True)
        await wait_for(target, 6)
        events = target.events()
        assert collections.Counter(e["type"] for e in events) == {t: 1 for t in PRESENCE}
        assert len({e["id"] for e in events}) == 6


async def test_users_already_connected_when_an_endpoint_subscribes_are_announced_and_leave(
    database_url: str, tmp_path: Path, target: Receiver
) -> None:
    async with start_server(node_settings(database_url, tmp_path, webhooks=FAST)) as node:
        tenant = await node.create_tenant()
        token = await node.token(tenant.slug, "ada", name="Ada")
        client = await joined(node, tenant.slug, token)
        await add_endpoint(node, tenant, target.url, PRESENCE)
        await wait_for(target, 1)
        ada = {"id": "ada", "name": "Ada"}
        assert [(e["type"], e["data"]) for e in target.events()] == [("user.online", {"user": ada})]
        await client.disconnect()
        await wait_for(target, 2)
        # She was in "lobby" before the subscription: member and room events start at a join.
        assert kinds(target) == ["user.online", "user.offline"]
