"""Liveness and readiness."""

from __future__ import annotations

from aiohttp import web

from ..state import SERVICES


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    services = request.app.get(SERVICES)
    if services is None:
        return web.json_response(
            {"error": {"code": "unavailable", "message": "starting"}}, status=503
        )
    ready, reason = await services.health.readiness()
    if not ready:
        return web.json_response({"error": {"code": "unavailable", "message": reason}}, status=503)
    return web.json_response({"status": "ready"})


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
