"""Who may call what (DESIGN §6): the admin token opens every route; a tenant API key opens only
its own tenant's token, rooms and messages routes. Every other combination is refused, and a
refused call changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import Server, Tenant

TENANTS = "/api/v1/tenants"


def admin_routes(slug: str, kid: str, key_id: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every admin-only route, with a valid body where one is needed."""
    one = f"{TENANTS}/{slug}"
    return [
        ("POST", TENANTS, {"slug": "would-be-new", "name": "X"}),
        ("GET", TENANTS, None),
        ("GET", one, None),
        ("PATCH", one, {"status": "suspended"}),
        ("DELETE", one, None),
        ("POST", f"{one}/keys", None),
        ("DELETE", f"{one}/keys/{kid}", None),
        ("POST", f"{one}/api-keys", None),
        ("DELETE", f"{one}/api-keys/{key_id}", None),
    ]


def tenant_routes(slug: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every route a tenant's own API key may use."""
    one = f"{TENANTS}/{slug}"
    return [
        ("POST", f"{one}/tokens", {"sub": "mallory"}),
        ("GET", f"{one}/rooms", None),
        ("GET", f"{one}/rooms/general/messages", None),
        ("POST", f"{one}/rooms/general/messages", {"body": "from mallory"}),
    ]


def all_routes(tenant: Tenant) -> list[tuple[str, str, dict[str, Any] | None]]:
    return admin_routes(tenant.slug, tenant.kid, tenant.api_key_id) + tenant_routes(tenant.slug)


async def call(
    server: Server, route: tuple[str, str, dict[str, Any] | None], **kwargs: Any
) -> tuple[int, Any]:
    method, path, body = route
    if body is not None:
        kwargs["json"] = body
    return await server.request(method, path, **kwargs)


async def assert_untouched(server: Server, tenant: Tenant) -> None:
    """Nothing a refused call could have done happened to ``tenant``."""
    status, detail = await server.request("GET", f"{TENANTS}/{tenant.slug}")
    assert status == 200
    assert detail["status"] == "active"
    assert [(k["kid"], k["revoked_at"]) for k in detail["signing_keys"]] == [(tenant.kid, None)]
    assert [(k["id"], k["revoked_at"]) for k in detail["api_keys"]] == [(tenant.api_key_id, None)]
    assert await server.request("GET", f"{TENANTS}/{tenant.slug}/rooms") == (
        200,
        {"rooms": [], "next_cursor": None},
    )
    status, _ = await server.request("GET", f"{TENANTS}/would-be-new")
    assert status == 404


async def test_every_route_without_a_token_is_401_auth_required(server: Server) -> None:
    tenant = await server.create_tenant()
    for route in all_routes(tenant):
        assert await call(server, route, token=None) == (
            401,
            {"error": {"code": "auth_required", "message": "send Authorization: Bearer <token>"}},
        ), route
    await assert_untouched(server, tenant)


@pytest.mark.parametrize(
    "header", ["Bearer not-a-real-token", "Bearer oc_forged", "Token abc", "Bearer", "Basic x:y"]
)
async def test_every_route_with_a_wrong_token_is_401_auth_invalid(
    server: Server, header: str
) -> None:
    tenant = await server.create_tenant()
    for route in all_routes(tenant):
        status, body = await call(server, route, token=None, headers={"Authorization": header})
        assert (status, body["error"]["code"]) == (401, "auth_invalid"), route
    await assert_untouched(server, tenant)


async def test_a_tenant_api_key_on_any_admin_only_route_is_403(server: Server) -> None:
    tenant = await server.create_tenant()
    for route in admin_routes(tenant.slug, tenant.kid, tenant.api_key_id):
        assert await call(server, route, token=tenant.api_key) == (
            403,
            {"error": {"code": "forbidden", "message": "this route needs the admin token"}},
        ), route
    await assert_untouched(server, tenant)


async def test_a_tenant_api_key_on_another_tenants_routes_is_403(server: Server) -> None:
    mine, theirs = await server.create_tenant(), await server.create_tenant()
    for route in tenant_routes(theirs.slug):
        assert await call(server, route, token=mine.api_key) == (
            403,
            {"error": {"code": "forbidden", "message": "this API key belongs to another tenant"}},
        ), route
    for route in admin_routes(theirs.slug, theirs.kid, theirs.api_key_id):
        status, body = await call(server, route, token=mine.api_key)
        assert (status, body["error"]["code"]) == (403, "forbidden"), route
    await assert_untouched(server, theirs)


async def test_a_tenant_api_key_on_a_slug_that_does_not_exist_is_403_not_404(
    server: Server,
) -> None:
    """The key learns nothing about other slugs, not even whether they exist."""
    tenant = await server.create_tenant()
    for route in tenant_routes("nobody-here"):
        status, body = await call(server, route, token=tenant.api_key)
        assert (status, body["error"]["code"]) == (403, "forbidden"), route


async def test_a_tenant_api_key_opens_its_own_tenant_routes(server: Server) -> None:
    tenant = await server.create_tenant()
    expected = [200, 200, 200, 201]
    for route, status_expected in zip(tenant_routes(tenant.slug), expected, strict=True):
        status, body = await call(server, route, token=tenant.api_key)
        assert status == status_expected, (route, body)


async def test_the_admin_token_opens_tenant_routes_and_unknown_tenants_are_404(
    server: Server,
) -> None:
    for route in tenant_routes("nobody-here"):
        assert await call(server, route) == (
            404,
            {"error": {"code": "tenant_not_found", "message": "tenant 'nobody-here' not found"}},
        ), route
