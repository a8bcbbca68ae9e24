"""``GET /metrics`` in the Prometheus text format, served only when ``metrics.enabled``.

Each application has its own ``CollectorRegistry`` (never the process-global one), so any number
of apps can live in one process. Values are collected at scrape time: the handler gathers what
needs the event loop (the tenant count is a query) into a snapshot, then renders synchronously,
with no await in between, so concurrent scrapes never see each other's snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ..errors import Unavailable
from ..state import SERVICES
from .routes import Response, Route

PATH = "/metrics"
TENANT_STATUSES = ("active", "suspended")


@dataclass
class Snapshot:
    connections: dict[str, int] = field(default_factory=dict)
    stored: int = 0
    batches: int = 0
    tenants: dict[str, int] | None = None


class OrgcastCollector(Collector):
    """Renders the latest ``Snapshot``; the handler refreshes it right before each render."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        yield GaugeMetricFamily(
            "orgcast_connections",
            "Live Socket.IO connections on this node.",
            value=sum(snap.connections.values()),
        )
        yield GaugeMetricFamily(
            "orgcast_tenants_connected",
            "Tenants with at least one live connection on this node.",
            value=sum(1 for count in snap.connections.values() if count),
        )
        yield CounterMetricFamily(
            "orgcast_messages_stored",
            "Messages committed to the database by this node since it started.",
            value=snap.stored,
        )
        yield CounterMetricFamily(
            "orgcast_message_batches",
            "Group-commit write batches committed by this node since it started.",
            value=snap.batches,
        )
        yield GaugeMetricFamily(
            "orgcast_database_up",
            "1 when the database answered this scrape's query, else 0.",
            value=0 if snap.tenants is None else 1,
        )
        if snap.tenants is not None:
            tenants = GaugeMetricFamily("orgcast_tenants", "Tenants by status.", labels=["status"])
            for status in sorted({*TENANT_STATUSES, *snap.tenants}):
                tenants.add_metric([status], snap.tenants.get(status, 0))
            yield tenants


METRICS = web.AppKey("metrics", CollectorRegistry)
COLLECTOR = web.AppKey("metrics_collector", OrgcastCollector)


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    services = app[SERVICES]
    snapshot = Snapshot(
        connections=services.hub.local_connections(),
        stored=services.messages.stored,
        batches=services.messages.batches,
    )
    try:
        snapshot.tenants = await services.tenants.count_by_status()
    except Unavailable:
        snapshot.tenants = None  # still serve the node's own numbers while the database is down
    # The text format Prometheus asks for in Accept (OpenMetrics or plain); plain 0.0.4 if none.
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    app[COLLECTOR].snapshot = snapshot
    return web.Response(body=encode(app[METRICS]), headers={"Content-Type": content_type})


def routes() -> list[Route]:
    return [
        Route(
            "GET", PATH, metrics, "Prometheus metrics", "none", tag="meta",
            description="Only when metrics.enabled; otherwise this route does not exist (404).",
            responses={
                200: Response("Prometheus text, or OpenMetrics.", content_type="text/plain"),
            },
        ),
    ]  # fmt: skip


def setup(app: web.Application) -> None:
    registry = CollectorRegistry(auto_describe=True)
    collector = OrgcastCollector()
    registry.register(collector)
    app[METRICS] = registry
    app[COLLECTOR] = collector
