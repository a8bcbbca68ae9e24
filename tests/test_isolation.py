"""Tenant isolation (DESIGN §4): two tenants with the same room names and user ids never see each
other's messages, presence, ephemeral events, history or tokens; a room named like a socket id
reaches nobody's private channel."""

from __future__ import annotations

from dataclasses import dataclass

import socketio

from tests.support import Inbox, Server, Tenant, call

EVENTS = ("message", "presence", "typing")


@dataclass
class Side:
    """One tenant with alice and bob in room ``lobby``, and inboxes for every event."""

    tenant: Tenant
    alice: socketio.AsyncClient
    bob: socketio.AsyncClient
    inboxes: dict[tuple[str, str], Inbox]

    @property
    def slug(self) -> str:
        return self.tenant.slug

    async def expect_nothing(self) -> None:
        for inbox in self.inboxes.values():
            await inbox.expect_nothing(0.1)


async def side(server: Server) -> Side:
    tenant = await server.create_tenant(ephemeral_events=["typing"])
    clients = {}
    for user in ("alice", "bob"):
        client = await server.connect(tenant.slug, await server.token(tenant.slug, user))
        ack = await call(client, tenant.slug, "join", {"room": "lobby"})
        assert ack["ok"] is True
        clients[user] = client
    inboxes = {
        (user, event): Inbox(client, event, f"/{tenant.slug}")
        for user, client in clients.items()
        for event in EVENTS
    }
    return Side(tenant, clients["alice"], clients["bob"], inboxes)


async def test_messages_presence_and_ephemeral_events_stay_in_their_tenant(
    server: Server,
) -> None:
    a, b = await side(server), await side(server)

    ack = await call(
        a.alice, a.slug, "message", {"room": "lobby", "body": "for A", "client_id": "k"}
    )
    assert ack["seq"] == 1
    assert (await a.inboxes[("bob", "message")].get())["body"] == "for A"
    assert await call(a.alice, a.slug, "typing", {"room": "lobby", "data": "A"}) == {"ok": True}
    assert (await a.inboxes[("bob", "typing")].get())["data"] == "A"
    carol = await server.connect(a.slug, await server.token(a.slug, "carol"))
    await call(carol, a.slug, "join", {"room": "lobby"})
    assert (await a.inboxes[("bob", "presence")].get())["member"]["id"] == "carol"
    await carol.disconnect()
    assert (await a.inboxes[("bob", "presence")].get())["action"] == "leave"
    assert (await a.inboxes[("alice", "presence")].get())["action"] == "join"
    assert (await a.inboxes[("alice", "presence")].get())["action"] == "leave"
    await b.expect_nothing()

    # Tenant B's room of the same name starts at seq 1, with B's own members and history.
    ack = await call(
        b.alice, b.slug, "message", {"room": "lobby", "body": "for B", "client_id": "k"}
    )
    assert ack["seq"] == 1
    assert (await b.inboxes[("bob", "message")].get())["body"] == "for B"
    await a.expect_nothing()
    history = await call(b.bob, b.slug, "history", {"room": "lobby"})
    assert [m["body"] for m in history["messages"]] == ["for B"]
    presence = await call(b.bob, b.slug, "presence", {"room": "lobby"})
    assert sorted(m["id"] for m in presence["members"]) == ["alice", "bob"]
    rejoin = await call(b.bob, b.slug, "join", {"room": "lobby", "since": 0})
    assert [m["body"] for m in rejoin["missed"]] == ["for B"]


async def test_rest_publish_reaches_only_its_own_tenant(server: Server) -> None:
    a, b = await side(server), await side(server)
    status, body = await server.request(
        "POST",
        f"/api/v1/tenants/{a.slug}/rooms/lobby/messages",
        token=a.tenant.api_key,
        json={"body": "from A's backend"},
    )
    assert status == 201, body
    assert (await a.inboxes[("alice", "message")].get())["body"] == "from A's backend"
    assert (await a.inboxes[("bob", "message")].get())["body"] == "from A's backend"
    await b.expect_nothing()


async def test_token_of_one_tenant_is_refused_by_another(server: Server) -> None:
    from tests.test_realtime_connect import assert_refused, refusal, sign

    a = await server.create_tenant()
    b = await server.create_tenant()
    minted = await server.token(a.slug, "alice")
    assert_refused(await refusal(server, f"/{b.slug}", auth={"token": minted}), "auth_invalid")
    # A's secret under B's kid, and without any aud claim: the signature does not verify.
    forged = sign(a, kid=b.kid)
    assert_refused(await refusal(server, f"/{b.slug}", auth={"token": forged}), "auth_invalid")


async def test_rest_api_key_of_one_tenant_is_forbidden_on_another(server: Server) -> None:
    a, b = await server.create_tenant(), await server.create_tenant()
    routes = [
        ("GET", f"/api/v1/tenants/{a.slug}/rooms/lobby/messages", None),
        ("POST", f"/api/v1/tenants/{a.slug}/rooms/lobby/messages", {"body": "x"}),
        ("GET", f"/api/v1/tenants/{a.slug}/rooms", None),
        ("POST", f"/api/v1/tenants/{a.slug}/tokens", {"sub": "alice"}),
    ]
    for method, path, payload in routes:
        status, body = await server.request(method, path, token=b.api_key, json=payload)
        assert status == 403, (method, path, body)
        assert body["error"]["code"] == "forbidden", body
    status, body = await server.request(
        "GET", f"/api/v1/tenants/{a.slug}/rooms/lobby/messages", token=a.api_key
    )
    assert status == 200 and body["messages"] == [], body


async def test_room_named_like_a_sid_reaches_no_private_channel(server: Server) -> None:
    a, b = await side(server), await side(server)
    victim_sid = a.alice.get_sid(f"/{a.slug}")
    engine_sid = a.alice.eio.sid
    assert victim_sid and engine_sid
    for attacker, slug in ((a.bob, a.slug), (b.bob, b.slug)):
        for room in (victim_sid, engine_sid):
            ack = await call(attacker, slug, "join", {"room": room})
            assert ack["ok"] is True and ack["members"] == [{"id": "bob", "name": "bob"}]
            sent = await call(attacker, slug, "message", {"room": room, "body": "psst"})
            assert sent["ok"] is True
            assert (await call(attacker, slug, "typing", {"room": room, "data": 1})) == {"ok": True}
    await a.inboxes[("alice", "message")].expect_nothing()
    await a.inboxes[("alice", "typing")].expect_nothing(0.05)
    await a.inboxes[("alice", "presence")].expect_nothing(0.05)
    # The victim's own traffic does not reach the attacker's sid-named room either.
    await call(a.alice, a.slug, "message", {"room": "lobby", "body": "private to lobby"})
    assert (await a.inboxes[("bob", "message")].get())["room"] == "lobby"
    await b.expect_nothing()


async def test_same_user_and_client_id_in_two_tenants_are_two_messages(server: Server) -> None:
    a, b = await side(server), await side(server)
    payload = {"room": "lobby", "body": "same", "client_id": "retry-1"}
    first = await call(a.alice, a.slug, "message", payload)
    second = await call(b.alice, b.slug, "message", payload)
    assert first["ok"] and second["ok"]
    assert first["id"] != second["id"]
    assert (first["seq"], second["seq"]) == (1, 1)


async def test_ephemeral_event_of_one_tenant_is_unknown_to_another(server: Server) -> None:
    a = await side(server)
    plain = await server.create_tenant()
    client = await server.connect(plain.slug, await server.token(plain.slug, "alice"))
    await call(client, plain.slug, "join", {"room": "lobby"})
    ack = await call(client, plain.slug, "typing", {"room": "lobby", "data": 1})
    assert ack["ok"] is False and ack["error"]["code"] == "unknown_event"
    await a.expect_nothing()
