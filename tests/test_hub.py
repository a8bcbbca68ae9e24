"""The Hub's listener hooks (services/hub.py): every transport's use case reports through them,
so features that react to admissions, stored messages and presence attach in one place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orgcast.services.hub import Connection, HubListener
from orgcast.services.messages import StoredRow
from orgcast.state import SERVICES
from tests.support import Server, eventually

WITHIN = 5.0


class Recorder(HubListener):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    async def on_admitted(self, conn: Connection) -> None:
        self.events.append(("admitted", conn.slug, conn.principal.user_id))

    async def on_disconnected(self, conn: Connection) -> None:
        self.events.append(("disconnected", conn.slug, conn.principal.user_id))

    async def on_stored(self, slug: str, rows: Sequence[StoredRow]) -> None:
        self.events.extend(("stored", slug, row.room, row.seq, row.sender_id) for row in rows)

    async def on_member_joined(self, slug: str, room: str, member: dict[str, str]) -> None:
        self.events.append(("joined", slug, room, member["id"]))

    async def on_member_left(self, slug: str, room: str, member: dict[str, str]) -> None:
        self.events.append(("left", slug, room, member["id"]))


async def test_listeners_hear_admission_presence_transitions_and_stores_from_socket_and_rest(
    server: Server,
) -> None:
    recorder = Recorder()
    server.app[SERVICES].hub.add_listener(recorder)
    tenant = await server.create_tenant()
    ns = f"/{tenant.slug}"
    tab1 = await server.connect(tenant.slug, await server.token(tenant.slug, "ann"))
    tab2 = await server.connect(tenant.slug, await server.token(tenant.slug, "ann"))
    for tab in (tab1, tab2):
        ack = await tab.call("join", {"room": "lobby"}, namespace=ns, timeout=WITHIN)
        assert ack["ok"] is True, ack
    ack = await tab1.call("message", {"room": "lobby", "body": "hi"}, namespace=ns, timeout=WITHIN)
    assert ack["ok"] is True, ack
    status, _ = await server.request(
        "POST", f"/api/v1/tenants/{tenant.slug}/rooms/lobby/messages", json={"body": "deploy"}
    )
    assert status == 201
    ack = await tab1.call("leave", {"room": "lobby"}, namespace=ns, timeout=WITHIN)
    assert ack["ok"] is True, ack
    await tab1.disconnect()
    await tab2.disconnect()

    async def both_gone() -> bool:
        return sum(e[0] == "disconnected" for e in recorder.events) == 2

    await eventually(both_gone)
    slug = tenant.slug
    assert recorder.events == [
        ("admitted", slug, "ann"),
        ("admitted", slug, "ann"),
        ("joined", slug, "lobby", "ann"),  # once: the second tab is the same member
        ("stored", slug, "lobby", 1, "ann"),
        ("stored", slug, "lobby", 2, "system"),
        ("disconnected", slug, "ann"),  # tab1 left the room first: ann is still in via tab2
        ("left", slug, "lobby", "ann"),
        ("disconnected", slug, "ann"),
    ]
