"""The OpenAPI 3.1 document at ``/api/v1/openapi.json``, generated from the route table.

Schemas come from the pydantic request and response models (``models_json_schema``), hoisted into
``components/schemas``. Error responses every route shares are added from what the route needs:
authentication brings 401/403/503 (a tenant route also 429, its API rate), a JSON body
400/413/422, a query 422, a ``{room}`` 400.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from . import schemas as s
from .routes import ROUTES, Response, Route

PATH = "/api/v1/openapi.json"
REF = "#/components/schemas/{model}"
DOCUMENT: web.AppKey[dict[str, Any]] = web.AppKey("openapi")

_COMMON_ERRORS = {
    400: "Malformed request: the body is not a JSON object (invalid_json) or a path parameter "
    "is malformed (bad_request).",
    401: "No token (auth_required) or an unknown/revoked one (auth_invalid).",
    403: "The token may not use this route: an API key on an admin route or on another "
    "tenant's route (forbidden), or the tenant is suspended (tenant_suspended).",
    413: "The body is too large (too_large).",
    422: "The body or query does not match the schema (validation_failed); details lists each "
    "offending field.",
    429: "More calls than the tenant's api_requests_per_second (rate_limited); Retry-After "
    "says when to retry, in seconds, and retry_after_ms in milliseconds.",
    503: "The database is unreachable (unavailable); retry.",
}
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "admin": [{"adminToken": []}],
    "tenant": [{"adminToken": []}, {"tenantApiKey": []}],
    "metrics": [{"adminToken": []}, {"metricsToken": []}],
    "none": [],
}


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[DOCUMENT])


def routes() -> list[Route]:
    return [
        Route(
            "GET", PATH, openapi, "This document", "none", tag="meta",
            responses={200: Response("The OpenAPI 3.1 document.", content_type="application/json")},
        ),
    ]  # fmt: skip


def _error_statuses(route: Route) -> dict[int, str]:
    statuses: set[int] = set()
    if route.auth != "none":
        statuses |= {401, 403, 503}
    if route.auth == "tenant":
        statuses.add(429)
    if route.body is not None:
        statuses |= {400, 413, 422}
    if route.query is not None:
        statuses.add(422)
    if "{room}" in route.path:
        statuses.add(400)
    return {status: _COMMON_ERRORS[status] for status in sorted(statuses)}


def _models(routes: list[Route]) -> list[type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {"ErrorResponse": s.ErrorResponse}
    for route in routes:
        for model in (route.body, *(r.model for r in route.responses.values())):
            if model is not None:
                found[f"{model.__module__}.{model.__qualname__}"] = model
    return list(found.values())


def _content(response: Response, refs: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    if response.model is not None:
        return {"application/json": {"schema": refs[response.model]}}
    if response.content_type is None:
        return {}
    kind = "object" if response.content_type == "application/json" else "string"
    return {response.content_type: {"schema": {"type": kind}}}


def _parameters(route: Route) -> list[dict[str, Any]]:
    parameters = [
        {"name": name, "in": "path", "required": True,
         "schema": route.path_params.get(name, {"type": "string"})}
        for name in re.findall(r"{(\w+)}", route.path)
    ]  # fmt: skip
    if route.query is not None:
        schema = route.query.model_json_schema()
        required = set(schema.get("required", ()))
        for name, prop in schema["properties"].items():
            prop = dict(prop)
            description = prop.pop("description", None)
            parameter = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if description:
                parameter["description"] = description
            parameters.append(parameter)
    return parameters


def _operation(route: Route, refs: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, description in _error_statuses(route).items():
        responses[str(status)] = {
            "description": description,
            "content": {"application/json": {"schema": refs[s.ErrorResponse]}},
        }
    for status, response in route.responses.items():
        entry: dict[str, Any] = {"description": response.description}
        content = _content(response, refs)
        if content:
            entry["content"] = content
        responses[str(status)] = entry
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
        "security": _SECURITY[route.auth],
        "responses": dict(sorted(responses.items())),
    }
    if route.description:
        operation["description"] = route.description
    parameters = _parameters(route)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        media: dict[str, Any] = {"schema": refs[route.body]}
        if route.body_example is not None:
            media["example"] = route.body_example
        operation["requestBody"] = {"required": True, "content": {"application/json": media}}
    return operation


def build_document(routes: list[Route]) -> dict[str, Any]:
    """The OpenAPI document describing exactly ``routes``."""
    models = _models(routes)
    mapping, definitions = models_json_schema(
        [(model, "validation") for model in models], ref_template=REF
    )
    refs = {model: mapping[(model, "validation")] for model in models}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "orgcast HTTP API",
            "version": __version__,
            "description": "Tenant administration and the tenant backend API. Errors are "
            '{"error": {"code", "message", "details"?}}. Timestamps are Unix milliseconds '
            "unless stated otherwise.",
        },
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The admin token (admin.token, or the generated file under "
                    "data_dir): every route.",
                },
                "tenantApiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A tenant API key: only its own tenant's token, rooms and "
                    "messages routes.",
                },
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "metrics.token: GET /metrics only.",
                },
            },
        },
    }


def setup(app: web.Application) -> None:
    """Build the document once, after every other route is registered."""
    app[DOCUMENT] = build_document(app[ROUTES])
