"""The route table: one ``Route`` per operation, read by the router, the auth check and the
OpenAPI builder.

Registering routes and documenting them from the same list is what keeps the three from drifting:
a route cannot be served without a summary, its auth rule, its inputs and its responses, and
its ``auth`` is both what the document says and what ``add_routes`` enforces before the view.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from .auth import Auth, authorize

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    token or an API key of the tenant named by ``{slug}``); ``metrics`` (the admin token or
    ``metrics.token``)."""

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
        app.router.add_route(route.method, route.path, _guarded(route))
    app.setdefault(ROUTES, []).extend(routes)


def _guarded(route: Route) -> Handler:
    """The view behind its route's auth check (none: the view itself)."""
    if route.auth == "none":
        return route.handler
    handler, auth = route.handler, route.auth

    async def guarded(request: web.Request) -> web.StreamResponse:
        await authorize(request, auth)
        return await handler(request)

    guarded.__name__ = handler.__name__
    return guarded
