"""Presence by user, not by socket (DESIGN §5): a user with two tabs is one member, announced once
when the first socket joins and once when the last one leaves or disconnects."""

from __future__ import annotations

from typing import Any

import socketio

from tests.support import Inbox, Server, Tenant, call, connect

# The presence events a passing "marker" user causes in the lobby (see ``pass_marker``).
MARKER = [
    {"room": "lobby", "action": "join", "member": {"id": "marker", "name": "marker"}},
    {"room": "lobby", "action": "leave", "member": {"id": "marker", "name": "marker"}},
]


async def pass_marker(server: Server, tenant: Tenant) -> None:
    """A "marker" user joins and leaves the lobby: every lobby member then sees ``MARKER``, after
    any presence event queued before (the member list is as it was)."""
    marker = await connect(server, tenant, "marker")
    await join(marker, tenant)
    await call(marker, tenant.slug, "leave", {"room": "lobby"})
    await marker.disconnect()


async def join(client: socketio.AsyncClient, tenant: Tenant, room: str = "lobby") -> Any:
    ack = await call(client, tenant.slug, "join", {"room": room})
    assert ack["ok"] is True, ack
    return ack


def ids(members: list[dict[str, str]]) -> list[str]:
    return sorted(m["id"] for m in members)


async def test_first_socket_of_a_user_announces_join_exactly_once(server: Server) -> None:
    tenant = await server.create_tenant()
    observer = await connect(server, tenant, "obs")
    await join(observer, tenant)
    events = Inbox(observer, "presence", f"/{tenant.slug}")
    tab1 = await connect(server, tenant, "ann", name="Ann")
    own = Inbox(tab1, "presence", f"/{tenant.slug}")
    await join(tab1, tenant)
    assert await events.get() == {
        "room": "lobby",
        "action": "join",
        "member": {"id": "ann", "name": "Ann"},
    }
    tab2 = await connect(server, tenant, "ann", name="Ann")
    ack = await join(tab2, tenant)
    assert ids(ack["members"]) == ["ann", "obs"]
    await pass_marker(server, tenant)
    await events.expect_next(*MARKER)
    await own.expect_next(*MARKER)


async def test_two_sockets_of_one_user_are_one_member(server: Server) -> None:
    tenant = await server.create_tenant()
    tabs = [await connect(server, tenant, "ann", name="Ann") for _ in range(3)]
    for tab in tabs:
        await join(tab, tenant)
    other = await connect(server, tenant, "bob")
    ack = await join(other, tenant)
    assert sorted(ack["members"], key=lambda m: m["id"]) == [
        {"id": "ann", "name": "Ann"},
        {"id": "bob", "name": "bob"},
    ]
    presence = await call(tabs[0], tenant.slug, "presence", {"room": "lobby"})
    assert ids(presence["members"]) == ["ann", "bob"]


async def test_leave_is_announced_only_when_the_last_socket_leaves(server: Server) -> None:
    tenant = await server.create_tenant()
    observer = await connect(server, tenant, "obs")
    await join(observer, tenant)
    tab1, tab2 = await connect(server, tenant, "ann"), await connect(server, tenant, "ann")
    await join(tab1, tenant)
    await join(tab2, tenant)
    events = Inbox(observer, "presence", f"/{tenant.slug}")
    assert await call(tab1, tenant.slug, "leave", {"room": "lobby"}) == {
        "ok": True,
        "room": "lobby",
    }
    await pass_marker(server, tenant)
    await events.expect_next(*MARKER)
    members = (await call(observer, tenant.slug, "presence", {"room": "lobby"}))["members"]
    assert ids(members) == ["ann", "obs"]
    await call(tab2, tenant.slug, "leave", {"room": "lobby"})
    assert await events.get() == {
        "room": "lobby",
        "action": "leave",
        "member": {"id": "ann", "name": "ann"},
    }
    await pass_marker(server, tenant)
    await events.expect_next(*MARKER)
    members = (await call(observer, tenant.slug, "presence", {"room": "lobby"}))["members"]
    assert ids(members) == ["obs"]


async def test_disconnect_of_the_last_socket_announces_leave_once(server: Server) -> None:
    tenant = await server.create_tenant()
    observer = await connect(server, tenant, "obs")
    await join(observer, tenant)
    await join(observer, tenant, "side")
    tab1, tab2 = await connect(server, tenant, "ann"), await connect(server, tenant, "ann")
    for tab in (tab1, tab2):
        await join(tab, tenant)
        await join(tab, tenant, "side")
    events = Inbox(observer, "presence", f"/{tenant.slug}")
    await tab1.disconnect()
    await events.expect_nothing()
    await tab2.disconnect()
    received = [await events.get(), await events.get()]
    assert sorted(received, key=lambda e: e["room"]) == [
        {"room": "lobby", "action": "leave", "member": {"id": "ann", "name": "ann"}},
        {"room": "side", "action": "leave", "member": {"id": "ann", "name": "ann"}},
    ]
    await pass_marker(server, tenant)
    await events.expect_next(*MARKER)
    for room in ("lobby", "side"):
        members = (await call(observer, tenant.slug, "presence", {"room": room}))["members"]
        assert ids(members) == ["obs"]


async def test_presence_events_stay_in_their_room(server: Server) -> None:
    tenant = await server.create_tenant()
    in_lobby = await connect(server, tenant, "obs")
    await join(in_lobby, tenant)
    events = Inbox(in_lobby, "presence", f"/{tenant.slug}")
    newcomer = await connect(server, tenant, "ann")
    await join(newcomer, tenant, "elsewhere")
    await call(newcomer, tenant.slug, "leave", {"room": "elsewhere"})
    await pass_marker(server, tenant)
    await events.expect_next(*MARKER)


async def test_rejoining_after_leave_announces_join_again(server: Server) -> None:
    tenant = await server.create_tenant()
    observer = await connect(server, tenant, "obs")
    await join(observer, tenant)
    events = Inbox(observer, "presence", f"/{tenant.slug}")
    ann = await connect(server, tenant, "ann")
    await join(ann, tenant)
    await call(ann, tenant.slug, "leave", {"room": "lobby"})
    await join(ann, tenant)
    actions = [(await events.get())["action"] for _ in range(3)]
    assert actions == ["join", "leave", "join"]
    await pass_marker(server, tenant)
    await events.expect_next(*MARKER)
