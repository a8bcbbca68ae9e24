"""``GET /metrics``: the Prometheus text (or OpenMetrics, when asked) of this node, behind a
bearer token: the admin token or ``metrics.token`` (``auth="metrics"``, checked by
``api/auth.py``). Without a valid one the answer is the usual 401 JSON error, so a scrape never
shows tenant names to an unauthenticated caller.

The series are defined in ``orgcast.metrics``. The handler reads what is not counted (live
connections, the writer's queue, tenants by status, database and Redis reachability) into a
``Snapshot``, then renders synchronously, with no await in between, so concurrent scrapes never
see each other's snapshot.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from ..errors import Unavailable
from ..metrics import MetricsCollector, Snapshot, create_registry
from ..state import METRICS, SERVICES, SETTINGS
from .routes import Response, Route

PATH = "/metrics"
REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
COLLECTOR = web.AppKey("metrics_collector", MetricsCollector)


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    services, settings = app[SERVICES], app[SETTINGS]
    snapshot = Snapshot(
        connections=services.hub.local_connections(),
        queue_depth=services.messages.queue_depth(),
        database="sqlite" if settings.is_sqlite else "postgresql",
        redis_configured=bool(settings.redis.url),
    )
    try:
        snapshot.tenants = await services.tenants.count_by_status()
    except Unavailable:
        snapshot.tenants = None  # still serve the node's own numbers while the database is down
    snapshot.redis_up, snapshot.redis_errors = await services.hub.redis_health()
    # The text format Prometheus asks for in Accept (OpenMetrics or plain); plain 0.0.4 if none.
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    app[COLLECTOR].snapshot = snapshot
    return web.Response(body=encode(app[REGISTRY]), headers={"Content-Type": content_type})


def routes() -> list[Route]:
    return [
        Route(
            "GET", PATH, metrics, "Prometheus metrics", "metrics", tag="meta",
            description="On unless metrics.enabled = false (then this route does not exist: "
            "404). Needs the admin token or metrics.token as a bearer token.",
            responses={
                200: Response("Prometheus text, or OpenMetrics.", content_type="text/plain"),
            },
        ),
    ]  # fmt: skip


def setup(app: web.Application) -> None:
    registry, collector = create_registry(app[METRICS])
    app[REGISTRY] = registry
    app[COLLECTOR] = collector
