"""Connecting to a tenant namespace (DESIGN §4): every refusal code, exactly, and never a hang.

python-socketio hands a ``connect_error`` handler the whole error object the server sent:
``{"message": <code>, "data": {"code": <code>, "message": <text>}}``; ``connect`` itself raises
``ConnectionError``. Each refusal is awaited with a bound, so a hanging handshake fails the test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import socketio

from orgcast.settings import ServerSettings
from tests.support import Server, Tenant, eventually, node_settings, start_server

WITHIN = 5.0


@pytest.fixture
async def polling_server(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    """A node with a short ping interval, for long-polling clients.

    python-engineio answers a pending long-poll GET only when the ping interval elapses, and its
    client waits for that GET when it disconnects (also after a refusal): with the default 25 s
    every polling client would take that long to close.
    """
    settings = node_settings(
        database_url, tmp_path, server=ServerSettings(port=0, ping_interval=1, ping_timeout=2)
    )
    async with start_server(settings) as node:
        yield node


def sign(
    tenant: Tenant, *, kid: str | None = None, secret: str | None = None, **claims: Any
) -> str:
    """A client token signed like a tenant backend would, with claims of the test's choosing."""
    claims.setdefault("sub", "alice")
    claims.setdefault("exp", int(time.time()) + 600)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(
        claims, secret or tenant.secret, algorithm="HS256", headers={"kid": kid or tenant.kid}
    )


async def refusal(
    server: Server,
    namespace: str,
    *,
    auth: Any = None,
    headers: dict[str, str] | None = None,
    transports: list[str] | None = None,
) -> Any:
    """Connect expecting a refusal; returns what the ``connect_error`` handler received."""
    client = socketio.AsyncClient(reconnection=False)
    received: asyncio.Queue[Any] = asyncio.Queue()

    async def on_error(*args: Any) -> None:
        received.put_nowait(args[0] if len(args) == 1 else args)

    client.on("connect_error", on_error, namespace=namespace)
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await asyncio.wait_for(
                client.connect(
                    server.url,
                    namespaces=[namespace],
                    auth=auth,
                    headers=headers or {},
                    transports=transports or ["websocket"],
                    wait_timeout=WITHIN,
                ),
                2 * WITHIN,
            )
        return await asyncio.wait_for(received.get(), WITHIN)
    finally:
        await client.disconnect()


def assert_refused(error: Any, code: str) -> None:
    """The exact error shape: ``message`` is the code, ``data`` is ``{code, message}``."""
    assert isinstance(error, dict), error
    assert set(error) == {"message", "data"}, error
    assert error["message"] == code
    assert set(error["data"]) == {"code", "message"}, error
    assert error["data"]["code"] == code
    assert isinstance(error["data"]["message"], str) and error["data"]["message"]


async def test_connect_to_bare_namespace_is_refused_with_namespace_required(
    server: Server,
) -> None:
    tenant = await server.create_tenant()
    error = await refusal(server, "/", auth={"token": await server.token(tenant.slug)})
    assert_refused(error, "namespace_required")


@pytest.mark.parametrize("namespace", ["/no-such-tenant-x1", "/Bad_Slug", "/a", "/admin"])
async def test_connect_to_unknown_or_invalid_slug_is_refused_with_tenant_not_found(
    server: Server, namespace: str
) -> None:
    error = await refusal(server, namespace, auth={"token": "whatever"})
    assert_refused(error, "tenant_not_found")


async def test_connect_to_suspended_tenant_is_refused_with_tenant_suspended(
    server: Server,
) -> None:
    tenant = await server.create_tenant()
    token = await server.token(tenant.slug)
    status, body = await server.request(
        "PATCH", f"/api/v1/tenants/{tenant.slug}", json={"status": "suspended"}
    )
    assert status == 200, body
    error = await refusal(server, f"/{tenant.slug}", auth={"token": token})
    assert_refused(error, "tenant_suspended")


@pytest.mark.parametrize("auth", [None, {}, {"token": None}, {"token": ""}, "not-an-object"])
async def test_connect_without_token_is_refused_with_auth_required(
    server: Server, auth: Any
) -> None:
    tenant = await server.create_tenant()
    error = await refusal(server, f"/{tenant.slug}", auth=auth)
    assert_refused(error, "auth_required")


async def test_connect_with_bad_tokens_is_refused_with_auth_invalid(server: Server) -> None:
    tenant = await server.create_tenant()
    other = await server.create_tenant()
    tokens = {
        "garbage": "not.a.jwt",
        "not a string": 12345,
        "wrong signature": sign(tenant, secret="s" * 43),
        "unknown kid": sign(tenant, kid="no-such-kid"),
        "aud of another tenant": sign(tenant, aud=other.slug),
        "sub missing": sign(tenant, sub=None),
        "sub empty": sign(tenant, sub=""),
        "sub too long": sign(tenant, sub="u" * 129),
        "sub not a string": sign(tenant, sub=["x"]),
        "exp missing": sign(tenant, exp=None),
        "rooms not a list": sign(tenant, rooms="team-*"),
        "other tenant's key": sign(other),
    }
    results = {}
    for what, token in tokens.items():
        error = await refusal(server, f"/{tenant.slug}", auth={"token": token})
        results[what] = error["message"] if isinstance(error, dict) else error
    assert results == {what: "auth_invalid" for what in tokens}


async def test_connect_with_sub_of_128_chars_and_matching_aud_is_admitted(
    server: Server,
) -> None:
    tenant = await server.create_tenant()
    client = await server.connect(tenant.slug, sign(tenant, sub="u" * 128, aud=tenant.slug))
    assert client.connected
    assert f"/{tenant.slug}" in client.namespaces


async def test_connect_with_revoked_kid_is_refused_with_auth_invalid(server: Server) -> None:
    tenant = await server.create_tenant()
    token = sign(tenant)
    first = await server.connect(tenant.slug, token)
    assert first.connected
    status, body = await server.request("POST", f"/api/v1/tenants/{tenant.slug}/keys")
    assert status == 201, body
    status, body = await server.request(
        "DELETE", f"/api/v1/tenants/{tenant.slug}/keys/{tenant.kid}"
    )
    assert status == 204, body
    error = await refusal(server, f"/{tenant.slug}", auth={"token": token})
    assert_refused(error, "auth_invalid")

    # The socket it admitted is closed too (key_revoked: tests/test_access.py).
    async def closed() -> bool:
        return not first.connected

    await eventually(closed, within=2)


async def test_connect_with_rotated_key_is_admitted(server: Server) -> None:
    tenant = await server.create_tenant()
    status, key = await server.request("POST", f"/api/v1/tenants/{tenant.slug}/keys")
    assert status == 201, key
    client = await server.connect(tenant.slug, sign(tenant, kid=key["kid"], secret=key["secret"]))
    assert client.connected


async def test_connect_with_expired_token_is_refused_with_auth_expired(server: Server) -> None:
    tenant = await server.create_tenant()
    error = await refusal(
        server, f"/{tenant.slug}", auth={"token": sign(tenant, exp=int(time.time()) - 60)}
    )
    assert_refused(error, "auth_expired")


async def test_connect_from_origin_outside_allow_list_is_refused_with_origin_forbidden(
    server: Server,
) -> None:
    tenant = await server.create_tenant(allowed_origins=["https://app.example.com"])
    token = await server.token(tenant.slug)
    error = await refusal(
        server,
        f"/{tenant.slug}",
        auth={"token": token},
        headers={"Origin": "https://evil.example.com"},
    )
    assert_refused(error, "origin_forbidden")


async def test_connect_from_allowed_origin_or_without_origin_is_admitted(server: Server) -> None:
    tenant = await server.create_tenant(allowed_origins=["https://app.example.com"])
    token = await server.token(tenant.slug)
    browser = await server.connect(
        tenant.slug, token, headers={"Origin": "https://app.example.com"}
    )
    backend = await server.connect(tenant.slug, token)
    assert browser.connected and backend.connected


async def test_connect_beyond_max_connections_is_refused_with_connection_limit(
    server: Server,
) -> None:
    tenant = await server.create_tenant(limits={"max_connections": 2})
    token = await server.token(tenant.slug)
    first = await server.connect(tenant.slug, token)
    await server.connect(tenant.slug, token)
    error = await refusal(server, f"/{tenant.slug}", auth={"token": token})
    assert_refused(error, "connection_limit")
    # A freed slot is usable again.
    await first.disconnect()

    async def slot_released() -> bool:
        return await server.try_connect(tenant.slug, {"token": token}) is None

    await eventually(slot_released, within=WITHIN)


async def test_refusal_reaches_a_long_polling_client_too(polling_server: Server) -> None:
    server = polling_server
    tenant = await server.create_tenant()
    error = await refusal(
        server, f"/{tenant.slug}", auth={"token": "garbage"}, transports=["polling"]
    )
    assert_refused(error, "auth_invalid")


async def test_connect_over_long_polling_is_admitted_and_acks(polling_server: Server) -> None:
    server = polling_server
    tenant = await server.create_tenant()
    client = await server.connect(
        tenant.slug, await server.token(tenant.slug, "poller"), transports=["polling"]
    )
    assert client.transport() == "polling"
    ack = await client.call("join", {"room": "lobby"}, namespace=f"/{tenant.slug}", timeout=5)
    assert ack == {
        "ok": True,
        "room": "lobby",
        "seq": 0,
        "members": [{"id": "poller", "name": "poller"}],
    }


async def test_many_refused_clients_in_parallel_all_get_an_answer(server: Server) -> None:
    tenant = await server.create_tenant()
    errors = await asyncio.gather(
        *(refusal(server, f"/{tenant.slug}", auth={"token": f"bad-{i}"}) for i in range(10))
    )
    assert [e["message"] for e in errors] == ["auth_invalid"] * 10


async def test_suspend_disconnects_a_long_polling_client_within_a_second(
    polling_server: Server,
) -> None:
    server = polling_server
    tenant = await server.create_tenant()
    client = await server.connect(
        tenant.slug, await server.token(tenant.slug), transports=["polling"]
    )
    gone = asyncio.Event()
    client.on("disconnect", lambda *args: gone.set(), namespace=f"/{tenant.slug}")
    status, body = await server.request(
        "PATCH", f"/api/v1/tenants/{tenant.slug}", json={"status": "suspended"}
    )
    assert status == 200, body
    await asyncio.wait_for(gone.wait(), 1.0)

    # Let the client's engine.io layer finish its own close (its last long-poll returns within
    # the ping interval) so no half-closed HTTP connection outlives the test.
    async def engine_closed() -> bool:
        return bool(client.eio.state == "disconnected")

    await eventually(engine_closed, within=10)


async def test_a_node_with_a_long_polling_client_shuts_down_without_waiting_for_a_ping(
    database_url: str, tmp_path: Path
) -> None:
    # Default ping interval (25 s): a pending long-poll used to hold shutdown that long.
    context = start_server(node_settings(database_url, tmp_path))
    node = await context.__aenter__()
    try:
        tenant = await node.create_tenant()
        await node.connect(tenant.slug, await node.token(tenant.slug), transports=["polling"])
        node.clients.clear()  # the node goes away first, as when an operator stops it
    finally:
        await asyncio.wait_for(context.__aexit__(None, None, None), 10)
