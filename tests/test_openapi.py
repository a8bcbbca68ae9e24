"""The OpenAPI document (DESIGN §6) describes exactly the routes the app serves, and what they
answer: every documented operation is called once with the admin token, its status must be one the
document lists, and its body must match the documented schema."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from orgcast.api import schemas
from orgcast.api.routes import ROUTES, Route
from orgcast.settings import MetricsSettings
from orgcast.web import load_assets
from tests.support import Server, eventually, node_settings, start_server, unique_slug
from tests.webhooks_support import FAST, quiet_endpoints, receiver

OPENAPI = "/api/v1/openapi.json"


@pytest.fixture
async def metrics_server(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    settings = node_settings(
        database_url, tmp_path, metrics=MetricsSettings(enabled=True), webhooks=FAST
    )
    async with start_server(settings) as node:
        yield node


@pytest.fixture(autouse=True)
async def _quiet_endpoints(database_url: str) -> AsyncIterator[None]:
    yield
    await quiet_endpoints(database_url)


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


def served(server: Server) -> set[tuple[str, str]]:
    """(method, path template) of every route the router serves, the Engine.IO endpoint and the
    browser pages' static files aside."""
    pages = {*load_assets(), "/console", "/chat"}
    routes = set()
    for route in server.app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        if not canonical.startswith("/socket.io") and canonical not in pages:
            routes.add((route.method, canonical))
    return routes


def refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


async def document(server: Server) -> dict[str, Any]:
    status, body = await server.request("GET", OPENAPI, token=None)
    assert status == 200
    return dict(body)


async def test_document_is_openapi_3_served_without_a_token(server: Server) -> None:
    doc = await document(server)
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] == "orgcast HTTP API"
    assert set(doc["components"]["securitySchemes"]) == {
        "adminToken",
        "tenantApiKey",
        "metricsToken",
    }


@pytest.mark.parametrize("enabled", [False, True])
async def test_document_lists_exactly_the_routes_the_router_serves(
    database_url: str, tmp_path: Path, enabled: bool
) -> None:
    settings = node_settings(database_url, tmp_path, metrics=MetricsSettings(enabled=enabled))
    async with start_server(settings) as server:
        doc = await document(server)
        documented = {(method, path) for method, path, _ in operations(doc)}
        assert documented == served(server)
    api_routes = {(m, p) for m, p in documented if p.startswith("/api/v1")}
    assert len(api_routes) == 25
    assert (("GET", "/metrics") in documented) is enabled


async def test_every_reference_resolves_and_every_operation_is_complete(server: Server) -> None:
    doc = await document(server)
    schemas_defined = doc["components"]["schemas"]
    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas_defined, ref
    ids = [op["operationId"] for _, _, op in operations(doc)]
    assert len(ids) == len(set(ids))
    for method, path, op in operations(doc):
        assert op["summary"] and op["responses"], (method, path)
        in_path = set(re.findall(r"{(\w+)}", path))
        params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert params == in_path, (method, path)
        if op["security"]:
            for status in ("401", "403", "503"):
                assert op["responses"][status]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorResponse"
                }
        if "requestBody" in op:
            assert {"400", "413", "422"} <= set(op["responses"]), (method, path)
            assert "example" in op["requestBody"]["content"]["application/json"], (method, path)
    error = schemas_defined["ErrorDetail"]
    assert set(error["required"]) == {"code", "message"}
    assert {"code", "message", "details"} <= set(error["properties"])


async def test_query_parameters_of_the_tenant_list_are_documented(server: Server) -> None:
    doc = await document(server)
    params = {p["name"]: p for p in doc["paths"]["/api/v1/tenants"]["get"]["parameters"]}
    assert set(params) == {"limit", "cursor", "status"}
    assert params["limit"]["schema"]["maximum"] == 200
    assert params["status"]["schema"]["anyOf"][0]["enum"] == ["active", "suspended"]


async def _webhook_with_a_delivery(server: Server, slug: str, url: str) -> dict[str, str]:
    """An endpoint of the tenant and one delivery of it, for the routes that name them."""
    base = f"/api/v1/tenants/{slug}"
    _, endpoint = await server.request(
        "POST", base + "/webhooks", json={"url": url, "events": ["*"]}
    )
    await server.request("POST", base + "/rooms/lobby/messages", json={"body": "hi"})
    log = f"{base}/webhooks/{endpoint['id']}/deliveries"

    async def delivered() -> bool:
        _, body = await server.request("GET", log)
        return bool(body["deliveries"]) and body["deliveries"][0]["status"] == "delivered"

    await eventually(delivered)
    _, body = await server.request("GET", log)
    return {"webhook_id": endpoint["id"], "delivery_id": body["deliveries"][0]["id"]}


def _order(item: tuple[str, str, dict[str, Any]]) -> tuple[int, int]:
    """Everything but DELETE first; then deletes of keys before the tenant itself."""
    method, path, _ = item
    return (1, -len(path)) if method == "DELETE" else (0, 0)


async def test_each_documented_operation_answers_a_documented_status_and_schema(
    metrics_server: Server,
) -> None:
    server = metrics_server
    doc = await document(server)
    tenant = await server.create_tenant()
    values = {
        "slug": tenant.slug,
        "kid": tenant.kid,
        "key_id": tenant.api_key_id,
        "room": "lobby",
        "sub": "alice",
    }
    async with receiver() as target:
        values.update(await _webhook_with_a_delivery(server, tenant.slug, target.url))
    table: dict[tuple[str, str], Route] = {(r.method, r.path): r for r in server.app[ROUTES]}
    called = []
    for method, path, op in sorted(operations(doc), key=_order):
        kwargs: dict[str, Any] = {}
        if "requestBody" in op:
            example = dict(op["requestBody"]["content"]["application/json"]["example"])
            if path == "/api/v1/tenants":
                example["slug"] = unique_slug()
            kwargs["json"] = example
        status, body = await server.request(method, path.format(**values), **kwargs)
        assert str(status) in op["responses"], (method, path, status, body)
        response = table[(method, path)].responses.get(status)
        model = response.model if response is not None else schemas.ErrorResponse
        if model is not None:
            model.model_validate(body, strict=True)
        content = op["responses"][str(status)].get("content")
        if content is None:
            assert body == "", (method, path)
        called.append((method, path, status))
    assert [c for c in called if c[2] >= 400] == []
    assert len(called) == len(table)
