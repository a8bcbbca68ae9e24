"""The route table: one ``Route`` per operation, read by both the router and the OpenAPI builder.

Registering routes and documenting them from the same list is what keeps the two from drifting:
a route cannot be served without a summary, its auth rule, its inputs and its responses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Auth = Literal["none", "admin", "tenant"]


@dataclass(frozen=True)
class Response:
    """One documented outcome: a description and the body model, or for bodies that are not a
    model (Prometheus text, the OpenAPI document) their content type; neither: no body."""

    description: str
    model: type[BaseModel] | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class Route:
    """An HTTP operation. ``auth``: ``none``; ``admin`` (admin token only); ``tenant`` (the admin
    token or an API key of the tenant named by ``{slug}``)."""

    method: str
    path: str
    handler: Handler
    summary: str
    auth: Auth
    responses: dict[int, Response]
    tag: str
    description: str = ""
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_example: dict[str, Any] | None = None
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


ROUTES: web.AppKey[list[Route]] = web.AppKey("routes")


def add_routes(app: web.Application, routes: list[Route]) -> None:
    """Register ``routes`` on the router and remember them for the OpenAPI document."""
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
    app.setdefault(ROUTES, []).extend(routes)
