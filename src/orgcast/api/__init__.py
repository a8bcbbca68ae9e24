"""HTTP API: admin and tenant routes, OpenAPI, health, metrics."""

from __future__ import annotations

from aiohttp import web

from . import health, tenants
from .errors import error_middleware


def middlewares() -> list[web.typedefs.Middleware]:
    return [error_middleware]


def setup_routes(app: web.Application) -> None:
    health.setup(app)
    tenants.setup(app)
