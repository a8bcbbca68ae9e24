"""The tenant admin API (DESIGN §3, §6) driven as an operator would: create, list, get, patch,
delete, signing keys and API keys, with exact statuses and bodies."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import socketio

from orgcast.api import schemas
from orgcast.services.tenants import TenantLimits
from tests.support import (
    Server,
    create_pg_database,
    drop_pg_database,
    node_settings,
    start_server,
    unique_slug,
)
from tests.support import pg_admin_url as pg_url

TENANTS = "/api/v1/tenants"
WITHIN = 5.0


@pytest.fixture
async def fresh_server(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    """A node on an empty database of its own (same engine as the suite), for exact counts."""
    if database_url.startswith("sqlite"):
        async with start_server(
            node_settings(f"sqlite+aiosqlite:///{tmp_path / 'fresh.sqlite3'}", tmp_path)
        ) as node:
            yield node
        return
    url = await create_pg_database(pg_url())
    try:
        async with start_server(node_settings(url, tmp_path)) as node:
            yield node
    finally:
        await drop_pg_database(pg_url(), url)


async def refused_code(server: Server, slug: str, token: str) -> str:
    """Connect expecting a refusal; returns the connect_error code."""
    client = socketio.AsyncClient(reconnection=False)
    errors: asyncio.Queue[Any] = asyncio.Queue()
    client.on("connect_error", errors.put_nowait, namespace=f"/{slug}")
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(
                server.url,
                namespaces=[f"/{slug}"],
                auth={"token": token},
                transports=["websocket"],
                wait_timeout=WITHIN,
            )
        error = await asyncio.wait_for(errors.get(), WITHIN)
    finally:
        await client.disconnect()
    return str(error["message"])


def validation_fields(body: Any) -> list[str]:
    assert body["error"]["code"] == "validation_failed", body
    return [d["field"] for d in body["error"]["details"]]


# -- create ---------------------------------------------------------------------------------------


async def test_create_returns_201_with_tenant_signing_key_and_api_key_shown_once(
    server: Server,
) -> None:
    slug = unique_slug()
    before = int(time.time() * 1000)
    async with server.http.post(
        server.url + TENANTS,
        json={
            "slug": slug,
            "name": "  Acme Inc.  ",
            "limits": {"max_connections": 5},
            "ephemeral_events": ["typing", "cursor", "typing"],
            "allowed_origins": ["https://acme.example"],
        },
        headers={"Authorization": f"Bearer {server.settings.admin.token}"},
    ) as response:
        assert response.status == 201
        assert response.headers["Location"] == f"{TENANTS}/{slug}"
        created = await response.json()
    schemas.CreatedTenant.model_validate(created, strict=True)
    assert created["slug"] == slug
    assert created["name"] == "Acme Inc."
    assert created["status"] == "active"
    assert created["limits"] == {"max_connections": 5}
    assert created["ephemeral_events"] == ["cursor", "typing"]
    assert created["allowed_origins"] == ["https://acme.example"]
    assert created["created_at"] == created["updated_at"] >= before
    assert created["signing_key"]["revoked_at"] is None
    assert len(created["signing_key"]["secret"]) >= 40
    api_key = created["api_key"]
    assert api_key["key"].startswith(api_key["prefix"])
    assert api_key["revoked_at"] is None

    status, detail = await server.request("GET", f"{TENANTS}/{slug}")
    assert status == 200
    schemas.TenantDetail.model_validate(detail, strict=True)
    text = json.dumps(detail)
    assert created["signing_key"]["secret"] not in text
    assert api_key["key"] not in text
    assert "hash" not in text
    assert detail["signing_keys"] == [
        {k: created["signing_key"][k] for k in ("kid", "created_at", "revoked_at")}
    ]
    assert detail["api_keys"] == [
        {k: api_key[k] for k in ("id", "prefix", "created_at", "revoked_at")}
    ]
    assert detail["effective_limits"] == {
        "max_connections": 5,
        "max_message_bytes": 65_536,
        "max_rooms_per_connection": 100,
        "messages_per_second": 50,
        "history_retention_days": 30,
        "connection_rate": 10,
        "api_requests_per_second": 100,
    }
    status, page = await server.request("GET", TENANTS, params={"limit": 200})
    assert created["signing_key"]["secret"] not in json.dumps(page)
    assert api_key["key"] not in json.dumps(page)


@pytest.mark.parametrize(
    "slug",
    ["ab", "a" * 41, "Acme", "acme-", "1acme", "ac_me", "admin", "socket.io", "metrics", "healthz"],
)
async def test_create_refuses_a_slug_that_breaks_the_rules_with_422(
    server: Server, slug: str
) -> None:
    status, body = await server.request("POST", TENANTS, json={"slug": slug, "name": "X"})
    assert status == 422
    assert validation_fields(body) == ["slug"]


async def test_create_refuses_a_reserved_slug_naming_it(server: Server) -> None:
    status, body = await server.request("POST", TENANTS, json={"slug": "admin", "name": "X"})
    assert status == 422
    assert body["error"]["details"] == [
        {"field": "slug", "message": "Value error, 'admin' is reserved"}
    ]


@pytest.mark.parametrize(
    "event",
    [
        "message",
        "connect",
        "join",
        "disconnect",
        "presence",
        "refresh",
        "token_expiring",
        "closing",
    ],
)
async def test_create_refuses_ephemeral_events_that_shadow_standard_ones_with_422(
    server: Server, event: str
) -> None:
    status, body = await server.request(
        "POST",
        TENANTS,
        json={"slug": unique_slug(), "name": "X", "ephemeral_events": ["typing", event]},
    )
    assert status == 422
    assert body["error"]["details"] == [
        {
            "field": "ephemeral_events",
            "message": f"Value error, {event!r} is reserved and cannot be an ephemeral event",
        }
    ]


async def test_create_with_a_taken_slug_is_409_tenant_exists(server: Server) -> None:
    tenant = await server.create_tenant()
    status, body = await server.request(
        "POST", TENANTS, json={"slug": tenant.slug, "name": "Again"}
    )
    assert (status, body) == (
        409,
        {"error": {"code": "tenant_exists", "message": f"tenant {tenant.slug!r} already exists"}},
    )


async def test_create_refuses_bad_limits_and_origins_with_422(server: Server) -> None:
    status, body = await server.request(
        "POST",
        TENANTS,
        json={
            "slug": unique_slug(),
            "name": "X",
            "limits": {"max_connections": 0, "burst": 3},
            "allowed_origins": ["acme.example"],
        },
    )
    assert status == 422
    assert validation_fields(body) == [
        "limits.max_connections",
        "limits.burst",
        "allowed_origins.0",
    ]


# -- get / patch / delete -----------------------------------------------------------------------


async def test_get_shows_live_connection_and_room_counts(server: Server) -> None:
    tenant = await server.create_tenant()
    status, detail = await server.request("GET", f"{TENANTS}/{tenant.slug}")
    assert (status, detail["connections"], detail["rooms"]) == (200, 0, 0)

    client = await server.connect(tenant.slug, await server.token(tenant.slug))
    ack = await client.call("join", {"room": "general"}, namespace=f"/{tenant.slug}", timeout=5)
    assert ack["ok"] is True
    status, detail = await server.request("GET", f"{TENANTS}/{tenant.slug}")
    assert (status, detail["connections"], detail["rooms"]) == (200, 1, 1)


async def test_get_unknown_tenant_is_404_tenant_not_found(server: Server) -> None:
    assert await server.request("GET", f"{TENANTS}/no-such-tenant") == (
        404,
        {"error": {"code": "tenant_not_found", "message": "tenant 'no-such-tenant' not found"}},
    )


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"name": "Renamed"}, {"name": "Renamed"}),
        ({"status": "suspended"}, {"status": "suspended"}),
        ({"limits": {"messages_per_second": 2.5}}, {"limits": {"messages_per_second": 2.5}}),
        ({"ephemeral_events": ["cursor"]}, {"ephemeral_events": ["cursor"]}),
        ({"allowed_origins": ["https://a.example"]}, {"allowed_origins": ["https://a.example"]}),
        ({"ephemeral_events": None}, {"ephemeral_events": []}),
    ],
)
async def test_patch_changes_exactly_the_given_field(
    server: Server, patch: dict[str, Any], expected: dict[str, Any]
) -> None:
    tenant = await server.create_tenant(limits={"max_connections": 7}, ephemeral_events=["typing"])
    original = {k: v for k, v in tenant.body.items() if k not in ("signing_key", "api_key")}
    status, body = await server.request("PATCH", f"{TENANTS}/{tenant.slug}", json=patch)
    assert status == 200
    schemas.Tenant.model_validate(body, strict=True)
    assert body["updated_at"] >= original["updated_at"]
    assert {k: v for k, v in body.items() if k != "updated_at"} == {
        **{k: v for k, v in original.items() if k != "updated_at"},
        **expected,
    }
    status, detail = await server.request("GET", f"{TENANTS}/{tenant.slug}")
    assert {k: detail[k] for k in body} == body


async def test_patch_limits_replaces_the_overrides_and_changes_effective_limits(
    server: Server,
) -> None:
    tenant = await server.create_tenant(limits={"max_connections": 7})
    status, body = await server.request(
        "PATCH", f"{TENANTS}/{tenant.slug}", json={"limits": {"max_message_bytes": 10}}
    )
    assert (status, body["limits"]) == (200, {"max_message_bytes": 10})
    status, detail = await server.request("GET", f"{TENANTS}/{tenant.slug}")
    assert detail["effective_limits"]["max_message_bytes"] == 10
    assert detail["effective_limits"]["max_connections"] == 10_000


async def test_patch_refuses_bad_values_with_422_and_unknown_tenant_with_404(
    server: Server,
) -> None:
    tenant = await server.create_tenant()
    status, body = await server.request(
        "PATCH", f"{TENANTS}/{tenant.slug}", json={"status": "deleted", "slug": "other"}
    )
    assert status == 422
    assert validation_fields(body) == ["status", "slug"]
    status, body = await server.request(
        "PATCH", f"{TENANTS}/{tenant.slug}", json={"ephemeral_events": ["message"]}
    )
    assert (status, validation_fields(body)) == (422, ["ephemeral_events"])
    status, body = await server.request("PATCH", f"{TENANTS}/nobody-here", json={"name": "X"})
    assert (status, body["error"]["code"]) == (404, "tenant_not_found")


async def test_suspending_disconnects_live_sockets_and_refuses_new_ones(server: Server) -> None:
    tenant = await server.create_tenant()
    token = await server.token(tenant.slug)
    client = await server.connect(tenant.slug, token)
    gone = asyncio.Event()
    client.on("disconnect", lambda *args: gone.set(), namespace=f"/{tenant.slug}")
    status, _ = await server.request(
        "PATCH", f"{TENANTS}/{tenant.slug}", json={"status": "suspended"}
    )
    assert status == 200
    await asyncio.wait_for(gone.wait(), WITHIN)
    assert await refused_code(server, tenant.slug, token) == "tenant_suspended"


async def test_delete_is_204_then_the_tenant_is_404_everywhere(server: Server) -> None:
    tenant = await server.create_tenant()
    status, _ = await server.request(
        "POST", f"{TENANTS}/{tenant.slug}/rooms/general/messages", json={"body": "hi"}
    )
    assert status == 201
    assert await server.request("DELETE", f"{TENANTS}/{tenant.slug}") == (204, "")
    not_found = {
        "error": {"code": "tenant_not_found", "message": f"tenant {tenant.slug!r} not found"}
    }
    assert await server.request("GET", f"{TENANTS}/{tenant.slug}") == (404, not_found)
    assert await server.request("DELETE", f"{TENANTS}/{tenant.slug}") == (404, not_found)
    assert await server.request("GET", f"{TENANTS}/{tenant.slug}/rooms/general/messages") == (
        404,
        not_found,
    )
    # Its API key died with it.
    status, body = await server.request(
        "GET", f"{TENANTS}/{tenant.slug}/rooms", token=tenant.api_key
    )
    assert (status, body["error"]["code"]) == (401, "auth_invalid")
    # The slug is free again, with an empty history.
    again = await server.create_tenant(tenant.slug)
    assert await server.request("GET", f"{TENANTS}/{again.slug}/rooms/general/messages") == (
        200,
        {"room": "general", "messages": [], "has_more": False},
    )


# -- list ---------------------------------------------------------------------------------------


async def test_list_pages_through_every_tenant_in_creation_order(fresh_server: Server) -> None:
    server = fresh_server
    slugs = [f"page-{i}" for i in range(5)]
    for slug in slugs:
        await server.create_tenant(slug)
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2"} if cursor is None else {"limit": "2", "cursor": cursor}
        status, body = await server.request("GET", TENANTS, params=params)
        assert status == 200
        schemas.TenantPage.model_validate(body, strict=True)
        pages.append([t["slug"] for t in body["tenants"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 10
    assert pages == [["page-0", "page-1"], ["page-2", "page-3"], ["page-4"]]

    status, body = await server.request("GET", TENANTS)
    assert [t["slug"] for t in body["tenants"]] == slugs
    assert body["next_cursor"] is None


async def test_list_filters_by_status_across_pages(fresh_server: Server) -> None:
    server = fresh_server
    for i in range(6):
        await server.create_tenant(f"filter-{i}")
    for i in (1, 2, 4):
        status, _ = await server.request(
            "PATCH", f"{TENANTS}/filter-{i}", json={"status": "suspended"}
        )
        assert status == 200

    async def all_pages(status_filter: str) -> list[list[str]]:
        pages, cursor = [], None
        for _ in range(10):
            params = {"limit": "2", "status": status_filter}
            if cursor is not None:
                params["cursor"] = cursor
            status, body = await server.request("GET", TENANTS, params=params)
            assert status == 200
            assert {t["status"] for t in body["tenants"]} <= {status_filter}
            pages.append([t["slug"] for t in body["tenants"]])
            cursor = body["next_cursor"]
            if cursor is None:
                return pages
        raise AssertionError("pagination did not end")

    assert await all_pages("suspended") == [["filter-1", "filter-2"], ["filter-4"]]
    assert await all_pages("active") == [["filter-0", "filter-3"], ["filter-5"]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "-1"}, "cursor"),
        ({"status": "deleted"}, "status"),
        ({"sort": "name"}, "sort"),
    ],
)
async def test_list_refuses_bad_query_parameters_with_422(
    server: Server, params: dict[str, str], field: str
) -> None:
    status, body = await server.request("GET", TENANTS, params=params)
    assert (status, validation_fields(body)) == (422, [field])


# -- signing keys -------------------------------------------------------------------------------


async def test_signing_key_rotation_and_revocation(server: Server) -> None:
    tenant = await server.create_tenant()
    keys = f"{TENANTS}/{tenant.slug}/keys"
    old_token = await server.token(tenant.slug)

    status, new_key = await server.request("POST", keys)
    assert status == 201
    schemas.NewSigningKey.model_validate(new_key, strict=True)
    assert new_key["kid"] != tenant.kid and new_key["revoked_at"] is None
    # New tokens are signed with the newest key; tokens of the older key still verify.
    new_token = await server.token(tenant.slug)
    assert jwt.get_unverified_header(new_token)["kid"] == new_key["kid"]
    jwt.decode(new_token, new_key["secret"], algorithms=["HS256"], audience=tenant.slug)
    await server.connect(tenant.slug, old_token)
    await server.connect(tenant.slug, new_token)

    assert await server.request("DELETE", f"{keys}/{new_key['kid']}") == (204, "")
    # The revoked kid no longer mints and no longer verifies.
    minted = await server.token(tenant.slug)
    assert jwt.get_unverified_header(minted)["kid"] == tenant.kid
    assert await refused_code(server, tenant.slug, new_token) == "auth_invalid"
    await server.connect(tenant.slug, minted)
    assert await server.request("DELETE", f"{keys}/{new_key['kid']}") == (
        404,
        {
            "error": {
                "code": "key_not_found",
                "message": f"no active signing key {new_key['kid']!r}",
            }
        },
    )
    status, detail = await server.request("GET", f"{TENANTS}/{tenant.slug}")
    revoked = {k["kid"]: k["revoked_at"] for k in detail["signing_keys"]}
    assert revoked[tenant.kid] is None
    assert isinstance(revoked[new_key["kid"]], int)
    assert new_key["secret"] not in json.dumps(detail)


async def test_revoking_the_last_signing_key_stops_minting_with_404(server: Server) -> None:
    tenant = await server.create_tenant()
    assert await server.request("DELETE", f"{TENANTS}/{tenant.slug}/keys/{tenant.kid}") == (
        204,
        "",
    )
    status, body = await server.request(
        "POST", f"{TENANTS}/{tenant.slug}/tokens", json={"sub": "alice"}
    )
    assert (status, body["error"]["code"]) == (404, "key_not_found")


async def test_key_routes_on_unknown_tenant_or_key_are_404(server: Server) -> None:
    tenant = await server.create_tenant()
    for method, path, code in [
        ("POST", f"{TENANTS}/nobody-here/keys", "tenant_not_found"),
        ("DELETE", f"{TENANTS}/nobody-here/keys/k1", "tenant_not_found"),
        ("DELETE", f"{TENANTS}/{tenant.slug}/keys/k-unknown", "key_not_found"),
        ("POST", f"{TENANTS}/nobody-here/api-keys", "tenant_not_found"),
        ("DELETE", f"{TENANTS}/nobody-here/api-keys/ak_1", "tenant_not_found"),
        ("DELETE", f"{TENANTS}/{tenant.slug}/api-keys/ak_unknown", "key_not_found"),
    ]:
        status, body = await server.request(method, path)
        assert (status, body["error"]["code"]) == (404, code), (method, path)


# -- API keys -----------------------------------------------------------------------------------


async def test_api_key_add_then_revoke_makes_it_401(server: Server) -> None:
    tenant = await server.create_tenant()
    rooms = f"{TENANTS}/{tenant.slug}/rooms"
    status, added = await server.request("POST", f"{TENANTS}/{tenant.slug}/api-keys")
    assert status == 201
    schemas.NewApiKey.model_validate(added, strict=True)
    assert added["key"] != tenant.api_key
    assert await server.request("GET", rooms, token=added["key"]) == (
        200,
        {"rooms": [], "next_cursor": None},
    )

    path = f"{TENANTS}/{tenant.slug}/api-keys/{added['id']}"
    assert await server.request("DELETE", path) == (204, "")
    assert await server.request("GET", rooms, token=added["key"]) == (
        401,
        {"error": {"code": "auth_invalid", "message": "invalid token"}},
    )
    # The other key is untouched; revoking twice is 404.
    status, _ = await server.request("GET", rooms, token=tenant.api_key)
    assert status == 200
    assert await server.request("DELETE", path) == (
        404,
        {"error": {"code": "key_not_found", "message": f"no active API key {added['id']!r}"}},
    )
    status, detail = await server.request("GET", f"{TENANTS}/{tenant.slug}")
    listed = {k["id"]: k for k in detail["api_keys"]}
    assert set(listed) == {tenant.api_key_id, added["id"]}
    assert isinstance(listed[added["id"]]["revoked_at"], int)
    assert added["key"] not in json.dumps(detail)


# -- tokens -------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["admin", "api_key"])
async def test_token_minting_by_admin_and_by_the_tenants_own_api_key(
    server: Server, who: str
) -> None:
    tenant = await server.create_tenant()
    token = server.settings.admin.token if who == "admin" else tenant.api_key
    before = int(time.time())
    status, minted = await server.request(
        "POST",
        f"{TENANTS}/{tenant.slug}/tokens",
        json={"sub": "bob", "name": "Bob", "rooms": ["team-*"], "ttl_seconds": 120},
        token=token,
    )
    assert status == 200
    schemas.Token.model_validate(minted, strict=True)
    assert minted["kid"] == tenant.kid
    claims = jwt.decode(minted["token"], tenant.secret, algorithms=["HS256"], audience=tenant.slug)
    assert claims == {
        "sub": "bob",
        "name": "Bob",
        "rooms": ["team-*"],
        "aud": tenant.slug,
        "exp": minted["expires_at"],
    }
    assert before + 120 <= minted["expires_at"] <= int(time.time()) + 120
    client = await server.connect(tenant.slug, minted["token"])
    ack = await client.call("join", {"room": "team-a"}, namespace=f"/{tenant.slug}", timeout=5)
    assert ack["ok"] is True
    ack = await client.call("join", {"room": "lobby"}, namespace=f"/{tenant.slug}", timeout=5)
    assert ack["ok"] is False and ack["error"]["code"] == "room_forbidden"


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, ["sub"]),
        ({"sub": ""}, ["sub"]),
        ({"sub": "x" * 129}, ["sub"]),
        ({"sub": "a", "ttl_seconds": 0}, ["ttl_seconds"]),
        ({"sub": "a", "rooms": "general"}, ["rooms"]),
        ({"sub": "a", "admin": True}, ["admin"]),
    ],
)
async def test_token_request_is_validated_with_422(
    server: Server, body: dict[str, Any], fields: list[str]
) -> None:
    tenant = await server.create_tenant()
    status, answer = await server.request("POST", f"{TENANTS}/{tenant.slug}/tokens", json=body)
    assert (status, validation_fields(answer)) == (422, fields)


def test_documented_effective_limits_name_every_tenant_limit() -> None:
    assert set(TenantLimits.model_fields) == set(schemas.EffectiveLimits.model_fields)
