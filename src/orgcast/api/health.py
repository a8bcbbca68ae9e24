"""Liveness (the process answers) and readiness (the database answers, schema at head)."""

from __future__ import annotations

from aiohttp import web

from ..state import SERVICES
from . import schemas as s
from .errors import error_response
from .routes import Response, Route


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    services = request.app.get(SERVICES)
    if services is None:
        return error_response(503, "unavailable", "the node is starting")
    ready, reason = await services.health.readiness()
    if not ready:
        return error_response(503, "unavailable", reason)
    return web.json_response({"status": "ready"})


def routes() -> list[Route]:
    return [
        Route(
            "GET", "/healthz", healthz, "Liveness", "none", tag="health",
            description="200 while the process serves requests; never touches the database.",
            responses={200: Response('Always {"status": "ok"}.', s.Status)},
        ),
        Route(
            "GET", "/readyz", readyz, "Readiness", "none", tag="health",
            description="200 only when the database answers and its schema is at the head "
            "revision; a load balancer should route traffic only to ready nodes.",
            responses={
                200: Response('{"status": "ready"}.', s.Status),
                503: Response("Not ready; the message says why (unavailable).", s.ErrorResponse),
            },
        ),
    ]  # fmt: skip
