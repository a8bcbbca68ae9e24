"""Access for the life of a connection (DESIGN §10), one node, python-socketio: tokens expire on
live sockets and are refreshed, revoked keys and kicks close sockets with ``closing``, suspend,
delete and shutdown say ``closing`` first, REST presence and batch publish, the API rate limit.

Expiry tests use tokens a few seconds long and a short refresh window, and wait on the events
themselves (``token_expiring``, ``closing``, ``disconnect``), never on a fixed delay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import socketio

from orgcast.settings import AuthSettings
from tests.support import Inbox, Server, Tenant, node_settings, start_server
from tests.test_realtime_connect import sign

WINDOW = 2  # auth.refresh_window_seconds on these nodes


@pytest.fixture
async def node(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    settings = node_settings(
        database_url, tmp_path, auth=AuthSettings(refresh_window_seconds=WINDOW)
    )
    async with start_server(settings) as server:
        yield server


class Watched:
    """A connected client with inboxes for what the server may say before it lets go."""

    def __init__(self, client: socketio.AsyncClient, ns: str) -> None:
        self.client = client
        self.ns = ns
        self.expiring = Inbox(client, "token_expiring", ns)
        self.closing = Inbox(client, "closing", ns)
        self.gone = asyncio.Event()
        client.on("disconnect", lambda *_: self.gone.set(), namespace=ns)

    async def call(self, event: str, data: Any) -> Any:
        return await self.client.call(event, data, namespace=self.ns, timeout=5)

    async def closed_with(self, code: str, within: float = 5.0) -> dict[str, Any]:
        """The ``closing`` payload, once the socket is also disconnected."""
        closing = await self.closing.get(within)
        await asyncio.wait_for(self.gone.wait(), within)
        assert closing["code"] == code, closing
        assert set(closing) == {"code", "message"} and closing["message"], closing
        return dict(closing)


async def watch(server: Server, tenant: Tenant, token: str) -> Watched:
    return Watched(await server.connect(tenant.slug, token), f"/{tenant.slug}")


def api(tenant: Tenant, path: str = "") -> str:
    return f"/api/v1/tenants/{tenant.slug}{path}"


# -- expiry and refresh ---------------------------------------------------------------------------


async def test_a_socket_that_does_not_refresh_is_warned_then_closed_with_auth_expired(
    node: Server,
) -> None:
    tenant = await node.create_tenant()
    exp = int(time.time()) + 3
    alice = await watch(node, tenant, sign(tenant, sub="alice", exp=exp))
    assert await alice.expiring.get() == {"exp": exp}
    await alice.closed_with("auth_expired")
    assert time.time() >= exp


async def test_a_socket_that_refreshes_outlives_its_first_token(node: Server) -> None:
    tenant = await node.create_tenant()
    exp = int(time.time()) + 3
    alice = await watch(node, tenant, sign(tenant, sub="alice", exp=exp))
    witness = await watch(node, tenant, sign(tenant, sub="witness", exp=exp))
    assert (await alice.call("join", {"room": "r"}))["ok"] is True

    assert await alice.expiring.get() == {"exp": exp}
    later = int(time.time()) + 3600
    ack = await alice.call("refresh", {"token": sign(tenant, sub="alice", exp=later)})
    assert ack == {"ok": True, "exp": later}

    # The witness had the same exp and did not refresh: once it is closed, alice's old token is
    # past too, and alice is still there, in her room.
    await witness.closed_with("auth_expired")
    assert alice.client.connected
    sent = await alice.call("message", {"room": "r", "body": "still here"})
    assert sent["ok"] is True
    await alice.closing.expect_nothing()


async def test_refresh_with_narrower_rooms_leaves_the_rooms_no_longer_allowed(
    node: Server,
) -> None:
    tenant = await node.create_tenant()
    alice = await watch(node, tenant, sign(tenant, sub="alice", name="Alice"))
    bob = await watch(node, tenant, sign(tenant, sub="bob"))
    for room in ("keep", "drop"):
        assert (await alice.call("join", {"room": room}))["ok"] is True
    assert (await bob.call("join", {"room": "drop"}))["ok"] is True
    presence = Inbox(bob.client, "presence", bob.ns)

    narrower = sign(tenant, sub="alice", name="Alice", rooms=["keep", "k*"])
    ack = await alice.call("refresh", {"token": narrower})
    assert ack["ok"] is True
    assert await presence.get() == {
        "room": "drop",
        "action": "leave",
        "member": {"id": "alice", "name": "Alice"},
    }
    assert (await alice.call("message", {"room": "drop", "body": 1}))["error"]["code"] in (
        "not_joined",
        "room_forbidden",
    )
    assert (await alice.call("message", {"room": "keep", "body": 1}))["ok"] is True
    assert (await alice.call("join", {"room": "drop"}))["error"]["code"] == "room_forbidden"
    members = await bob.call("presence", {"room": "drop"})
    assert members["members"] == [{"id": "bob", "name": "bob"}]


async def test_bad_refresh_tokens_get_error_acks_and_change_nothing(node: Server) -> None:
    tenant = await node.create_tenant()
    other = await node.create_tenant()
    exp = int(time.time()) + 600
    alice = await watch(node, tenant, sign(tenant, sub="alice", exp=exp))
    assert (await alice.call("join", {"room": "r"}))["ok"] is True
    cases = {
        "another sub": (sign(tenant, sub="mallory"), "auth_invalid"),
        "another tenant": (sign(other, sub="alice"), "auth_invalid"),
        "another tenant's key, our aud": (
            sign(other, sub="alice", aud=tenant.slug),
            "auth_invalid",
        ),
        "our key, another aud": (sign(tenant, sub="alice", aud=other.slug), "auth_invalid"),
        "expired": (sign(tenant, sub="alice", exp=int(time.time()) - 1), "auth_expired"),
        "malformed": ("not.a.jwt", "auth_invalid"),
        "not a string": (42, "auth_invalid"),
        "missing": (None, "auth_invalid"),
    }
    for label, (token, code) in cases.items():
        data = {} if token is None else {"token": token}
        ack = await alice.call("refresh", data)
        assert ack["ok"] is False and ack["error"]["code"] == code, (label, ack)
    ack = await alice.call("refresh", "not an object")
    assert ack["error"]["code"] == "bad_request"
    # Unchanged: still connected, still in the room, same user.
    assert (await alice.call("message", {"room": "r", "body": "ok"}))["ok"] is True
    members = await alice.call("presence", {"room": "r"})
    assert members["members"] == [{"id": "alice", "name": "alice"}]
    await alice.closing.expect_nothing()


# -- server-initiated disconnects ---------------------------------------------------------------


async def test_revoking_a_key_closes_the_sockets_it_signed_and_only_those(node: Server) -> None:
    tenant = await node.create_tenant()
    status, second = await node.request("POST", api(tenant, "/keys"))
    assert status == 201
    old = await watch(node, tenant, sign(tenant, sub="old"))
    new = await watch(
        node, tenant, sign(tenant, sub="new", kid=second["kid"], secret=second["secret"])
    )
    status, _ = await node.request("DELETE", api(tenant, f"/keys/{tenant.kid}"))
    assert status == 204
    await old.closed_with("key_revoked", within=1.0)
    await new.closing.expect_nothing()
    assert new.client.connected
    refused = await node.refusal(tenant.slug, {"token": sign(tenant, sub="old")})
    assert refused["code"] == "auth_invalid"


async def test_kick_closes_every_socket_of_the_user_and_answers_the_count(node: Server) -> None:
    tenant = await node.create_tenant()
    tabs = [await watch(node, tenant, sign(tenant, sub="alice")) for _ in range(2)]
    bob = await watch(node, tenant, sign(tenant, sub="bob"))
    status, body = await node.request(
        "POST",
        api(tenant, "/users/alice/disconnect"),
        json={"reason": "banned for spam"},
        token=tenant.api_key,
    )
    assert (status, body) == (200, {"disconnected": 2})
    for tab in tabs:
        closing = await tab.closed_with("kicked")
        assert closing["message"] == "banned for spam"
    await bob.closing.expect_nothing()
    assert bob.client.connected


async def test_kick_of_an_unknown_user_answers_zero(node: Server) -> None:
    tenant = await node.create_tenant()
    status, body = await node.request("POST", api(tenant, "/users/nobody/disconnect"))
    assert (status, body) == (200, {"disconnected": 0})


async def test_kick_is_refused_to_another_tenants_key(node: Server) -> None:
    tenant = await node.create_tenant()
    other = await node.create_tenant()
    alice = await watch(node, tenant, sign(tenant, sub="alice"))
    status, body = await node.request(
        "POST", api(tenant, "/users/alice/disconnect"), token=other.api_key
    )
    assert status == 403 and body["error"]["code"] == "forbidden"
    await alice.closing.expect_nothing()


@pytest.mark.parametrize(
    ("method", "change", "code"),
    [("PATCH", {"status": "suspended"}, "tenant_suspended"), ("DELETE", None, "tenant_deleted")],
)
async def test_suspend_and_delete_say_closing_before_the_disconnect(
    node: Server, method: str, change: dict[str, str] | None, code: str
) -> None:
    tenant = await node.create_tenant()
    alice = await watch(node, tenant, sign(tenant, sub="alice"))
    kwargs = {} if change is None else {"json": change}
    status, _ = await node.request(method, api(tenant), **kwargs)
    assert status in (200, 204)
    await alice.closed_with(code, within=1.0)


async def test_shutdown_says_closing_shutdown(database_url: str, tmp_path: Path) -> None:
    async with start_server(node_settings(database_url, tmp_path)) as server:
        tenant = await server.create_tenant()
        alice = await watch(server, tenant, sign(tenant, sub="alice"))
        server.clients.clear()  # leave alice connected until the node stops
    await alice.closed_with("shutdown")
    await alice.client.disconnect()


# -- REST presence and batch publish ------------------------------------------------------------


async def test_rest_presence_equals_socket_presence(node: Server) -> None:
    tenant = await node.create_tenant()
    alice = await watch(node, tenant, sign(tenant, sub="alice", name="Alice"))
    second_tab = await watch(node, tenant, sign(tenant, sub="alice", name="Alice"))
    bob = await watch(node, tenant, sign(tenant, sub="bob"))
    for member in (alice, second_tab, bob):
        assert (await member.call("join", {"room": "lobby"}))["ok"] is True
    socket_view = await bob.call("presence", {"room": "lobby"})
    status, body = await node.request(
        "GET", api(tenant, "/rooms/lobby/presence"), token=tenant.api_key
    )
    assert status == 200
    assert body == {"room": "lobby", "members": body["members"]}
    key = lambda m: m["id"]  # noqa: E731
    assert sorted(body["members"], key=key) == sorted(socket_view["members"], key=key)
    assert sorted(body["members"], key=key) == [
        {"id": "alice", "name": "Alice"},
        {"id": "bob", "name": "bob"},
    ]
    status, empty = await node.request("GET", api(tenant, "/rooms/empty/presence"))
    assert (status, empty) == (200, {"room": "empty", "members": []})
    status, bad = await node.request("GET", api(tenant, "/rooms/bad%20room/presence"))
    assert status == 400 and bad["error"]["code"] == "bad_request"


async def test_batch_publish_stores_good_items_in_order_and_reports_bad_ones(
    node: Server,
) -> None:
    tenant = await node.create_tenant(limits={"max_message_bytes": 64})
    listener = await watch(node, tenant, sign(tenant, sub="listener"))
    assert (await listener.call("join", {"room": "a"}))["ok"] is True
    inbox = Inbox(listener.client, "message", listener.ns)
    items = [
        {"room": "a", "body": {"n": 1}},
        {"room": "bad room", "body": 2},
        {"room": "b", "body": 3, "sender": {"id": "bot", "name": "Bot"}},
        {"room": "a", "body": "x" * 100},
        {"room": "a", "body": 5, "client_id": "c-5"},
        "not an object",
        {"room": "a"},
    ]
    status, body = await node.request(
        "POST", api(tenant, "/messages"), json={"messages": items}, token=tenant.api_key
    )
    assert status == 200, body
    results = body["results"]
    assert [r["ok"] for r in results] == [True, False, True, False, True, False, False]
    assert [r.get("error", {}).get("code") for r in results] == [
        None, "validation_failed", None, "too_large", None, "validation_failed",
        "validation_failed",
    ]  # fmt: skip
    ok = [r for r in results if r["ok"]]
    assert all(set(r) == {"ok", "id", "room", "seq", "ts"} for r in ok), ok
    assert [(r["room"], r["seq"]) for r in ok] == [("a", 1), ("b", 1), ("a", 2)]
    assert len({r["ts"] for r in ok}) == 1  # one transaction, one commit time
    got = [await inbox.get(), await inbox.get()]
    assert [(m["seq"], m["body"], m["sender"]["id"]) for m in got] == [
        (1, {"n": 1}, "system"),
        (2, 5, "system"),
    ]
    # A resend of the batch's client_id stores nothing new.
    status, again = await node.request(
        "POST", api(tenant, "/messages"), json={"messages": [items[4]]}
    )
    assert again["results"][0]["seq"] == 2
    status, history = await node.request("GET", api(tenant, "/rooms/a/messages"))
    assert [m["seq"] for m in history["messages"]] == [1, 2]


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"messages": [{"room": "a", "body": i} for i in range(101)]}, 413, "too_large"),
        ({"messages": []}, 422, "validation_failed"),
        ({"messages": {"room": "a"}}, 422, "validation_failed"),
        ({}, 422, "validation_failed"),
    ],
)
async def test_batch_publish_refuses_a_bad_batch_whole(
    node: Server, payload: dict[str, Any], status: int, code: str
) -> None:
    tenant = await node.create_tenant()
    got, body = await node.request("POST", api(tenant, "/messages"), json=payload)
    assert (got, body["error"]["code"]) == (status, code)
    got, history = await node.request("GET", api(tenant, "/rooms/a/messages"))
    assert history["messages"] == []


# -- the API rate limit ---------------------------------------------------------------------------


async def test_the_tenants_api_calls_beyond_its_rate_get_429_with_retry_after(
    node: Server,
) -> None:
    tenant = await node.create_tenant(limits={"api_requests_per_second": 0.1})
    other = await node.create_tenant(limits={"api_requests_per_second": 0.1})
    path = api(tenant, "/rooms/r/messages")
    status, _ = await node.request("POST", path, json={"body": 1}, token=tenant.api_key)
    assert status == 201
    async with node.http.post(
        node.url + path, json={"body": 2}, headers={"Authorization": f"Bearer {tenant.api_key}"}
    ) as response:
        assert response.status == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 10
        error = (await response.json())["error"]
    assert error["code"] == "rate_limited"
    assert error["message"] == "more than 0.1 API requests per second for this tenant"
    assert 0 < error["retry_after_ms"] <= 10_000
    # Another tenant has its own budget; admin routes of the tenant are not counted.
    status, _ = await node.request("GET", api(other, "/rooms"), token=other.api_key)
    assert status == 200
    status, _ = await node.request("GET", api(tenant))
    assert status == 200
