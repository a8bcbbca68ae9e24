"""HTTP API: admin and tenant routes, OpenAPI, health, metrics.

Every route comes from a ``Route`` table (``routes.py``); the same table feeds the router and the
OpenAPI document, so what is served is what is documented.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware

from ..state import SETTINGS
from . import access, health, metrics, openapi, tenants, webhooks
from .errors import error_middleware
from .routes import add_routes


def middlewares() -> list[Middleware]:
    return [error_middleware]


def setup_routes(app: web.Application) -> None:
    table = [
        *health.routes(),
        *openapi.routes(),
        *tenants.routes(),
        *access.routes(),
        *webhooks.routes(),
    ]
    if app[SETTINGS].metrics.enabled:
        metrics.setup(app)
        table += metrics.routes()
    add_routes(app, table)
    openapi.setup(app)
