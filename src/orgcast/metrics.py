"""Every Prometheus series of a node, defined once; counted with plain integers, rendered at
scrape time.

The hot path never touches ``prometheus_client``: a call site adds to an ``int`` in a dict or a
slot (``Metrics.stored(slug)``, ``Metrics.event(...)``), and ``MetricsCollector`` turns those
numbers into metric families only when ``/metrics`` is scraped. Each application has its own
``Metrics`` and its own ``CollectorRegistry`` (never the process-global one), so several servers
in one process count apart. With ``metrics.enabled = false`` the app holds a ``NullMetrics``,
whose methods do nothing, and ``/metrics`` does not exist.

Tenant labels are bounded: per-tenant series carry ``tenant="<slug>"`` for the
``metrics.max_tenant_labels`` busiest tenants (ranked at each scrape by everything counted for
them: connects, events, messages, deliveries, webhook deliveries, plus live connections) and
sum every other tenant under ``tenant="_other"``, which is always present (0 when nobody is
left over). Nothing is registered per tenant, so the registry never grows; the only per-tenant
state is one small ``TenantStats`` per tenant this node has seen. When a tenant enters the
top N its series appears, and ``_other`` drops by what it had counted (Prometheus reads that as
a counter reset of ``_other``: ``rate()`` stays right for the named series).

Series (``orgcast_`` prefix; T = has the ``tenant`` label):

=============================================  ========  ===========================================
``connections`` T                              gauge     live sockets on this node
``tenants_connected``                          gauge     tenants with at least one live socket here
``connects_total`` T                           counter   sockets admitted
``connect_refusals_total{code}``               counter   refused connects by wire code
``events_total{event,result}`` T               counter   client events; ``event`` is join, leave,
                                                         message, history, presence, refresh,
                                                         ``ephemeral`` (a tenant's ephemeral events)
                                                         or ``other``; ``result`` is ``ok`` or the
                                                         error code of the ack
``ack_latency_seconds{event}``                 histo     event received -> ack sent
``messages_stored_total`` T                    counter   messages committed (socket and REST)
``message_batches_total``                      counter   group-commit transactions
``message_batch_size``                         histo     messages per group-commit transaction
``message_queue_depth``                        gauge     messages waiting for the writer
``deliveries_total`` T                         counter   ``message`` packets handed to sockets here
``database_up``                                gauge     the scrape's query answered (1) or not (0)
``database_errors_total``                      counter   operations failed on a database error
``redis_up``                                   gauge     Redis answered the scrape's PING; 0 when
                                                         down or when no Redis is configured
                                                         (``node_info{redis="false"}`` says which)
``redis_errors_total``                         counter   operations failed on a Redis error
``gap_repairs_total``                          counter   gap repairs (reads of missed seqs) run
``gap_repaired_messages_total``                counter   messages delivered by gap repairs
``webhook_deliveries_total{result}`` T         counter   webhook POSTs by outcome: ``delivered``,
                                                         ``retry``, ``failed``, ``disabled``
``webhook_delivery_latency_seconds``           histo     webhook POST -> response
``webhook_backlog``                            gauge     events waiting for delivery
``webhook_oldest_pending_seconds``             gauge     age of the oldest undelivered event
``event_loop_lag_seconds``                     histo     how late the loop woke a sampler task
``tenants{status}``                            gauge     tenants by status (database query)
``node_info{version,database,redis}``          gauge     always 1; what this node runs on
=============================================  ========  ===========================================

plus ``process_*`` (CPU seconds, resident memory, open fds, start time) and ``python_gc_*``
(collections, collected and uncollectable objects per generation) from ``prometheus_client``.

How other code counts. The app's instance is ``app[orgcast.state.METRICS]``, built by
``create_app`` before anything else: pass it to your service's constructor (as ``MessageService``
and ``Realtime`` get it). Each call below is a method of ``Metrics``, a no-op on ``NullMetrics``:

- webhook worker: ``metrics.webhook_delivery(slug, result, seconds)`` after each POST (``result``
  one of ``WEBHOOK_RESULTS``), and ``metrics.webhook_queue(backlog, oldest_pending_seconds)`` each
  time it reads the outbox (or ``metrics.webhook_source = callable`` returning that pair, called
  at scrape time).
- gap repair: ``metrics.gap_repair(messages)`` once per repair, with how many it delivered.
- Redis or database failure: ``metrics.redis_error()`` / ``metrics.database_error()``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import __version__
from .settings import MetricsSettings

OTHER = "_other"
STANDARD_EVENTS = frozenset({"join", "leave", "message", "history", "presence", "refresh"})
WEBHOOK_RESULTS = ("delivered", "retry", "failed", "disabled")

# Seconds. Ack latency spans a cached read (~0.2 ms) to a stalled database (command_timeout).
ACK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
WEBHOOK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """A cumulative-at-render histogram: ``observe`` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def merge(self, other: Histogram) -> None:
        for i, count in enumerate(other.counts):
            self.counts[i] += count
        self.total += other.total

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else _number(bound), running))
        return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(slots=True)
class TenantStats:
    """What this node counted for one tenant."""

    connects: int = 0
    messages: int = 0
    events: dict[tuple[str, str], int] = field(default_factory=dict)
    webhooks: dict[str, int] = field(default_factory=dict)

    def activity(self) -> int:
        return (
            self.connects + self.messages + sum(self.events.values()) + sum(self.webhooks.values())
        )


@dataclass
class Snapshot:
    """What is read at scrape time, not counted: filled by the ``/metrics`` handler."""

    connections: dict[str, int] = field(default_factory=dict)
    queue_depth: int = 0
    tenants: dict[str, int] | None = None  # by status; None: the database did not answer
    redis_configured: bool = False
    redis_up: bool = False
    redis_errors: int = 0  # counted by the presence client, added to Metrics.redis_errors
    database: str = "sqlite"


class Metrics:
    """The counters of one node. Every method is cheap enough for the message path."""

    enabled = True

    def __init__(self, max_tenant_labels: int = 100) -> None:
        self.max_tenant_labels = max_tenant_labels
        self.tenants: dict[str, TenantStats] = {}
        # "/<slug>" -> message packets handed to sockets; the fan-out adds to it directly.
        self.delivered: dict[str, int] = {}
        self.refusals: dict[str, int] = {}
        self.ack_latency: dict[str, Histogram] = {}
        self.batches = 0
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.database_errors = 0
        self.redis_errors = 0
        self.gap_repairs = 0
        self.gap_repaired_messages = 0
        self.webhook_latency = Histogram(WEBHOOK_BUCKETS)
        self.webhook_backlog = 0
        self.webhook_oldest_pending_seconds = 0.0
        self.webhook_source: Callable[[], tuple[int, float]] | None = None
        self.loop_lag = Histogram(LAG_BUCKETS)

    def tenant(self, slug: str) -> TenantStats:
        stats = self.tenants.get(slug)
        if stats is None:
            stats = self.tenants[slug] = TenantStats()
        return stats

    # -- counted on the request and message paths --------------------------------------------

    def connected(self, slug: str) -> None:
        self.tenant(slug).connects += 1

    def refused(self, code: str) -> None:
        self.refusals[code] = self.refusals.get(code, 0) + 1

    def event(self, slug: str | None, event: str, result: str, seconds: float) -> None:
        """One client event answered: ``event`` a bounded label (the table above), ``result``
        ``ok`` or the ack's error code; ``slug`` None for a socket that was never admitted."""
        if slug is not None:
            events = self.tenant(slug).events
            key = (event, result)
            events[key] = events.get(key, 0) + 1
        histogram = self.ack_latency.get(event)
        if histogram is None:
            histogram = self.ack_latency[event] = Histogram(ACK_BUCKETS)
        histogram.observe(seconds)

    def stored(self, slug: str, count: int = 1) -> None:
        self.tenant(slug).messages += count

    def batch(self, size: int) -> None:
        self.batches += 1
        self.batch_size.observe(size)

    def database_error(self) -> None:
        self.database_errors += 1

    def redis_error(self) -> None:
        self.redis_errors += 1

    def gap_repair(self, messages: int) -> None:
        self.gap_repairs += 1
        self.gap_repaired_messages += messages

    def webhook_delivery(self, slug: str, result: str, seconds: float | None) -> None:
        webhooks = self.tenant(slug).webhooks
        webhooks[result] = webhooks.get(result, 0) + 1
        if seconds is not None:
            self.webhook_latency.observe(seconds)

    def webhook_queue(self, backlog: int, oldest_pending_seconds: float) -> None:
        self.webhook_backlog = backlog
        self.webhook_oldest_pending_seconds = oldest_pending_seconds

    def loop_lag_sample(self, seconds: float) -> None:
        self.loop_lag.observe(seconds)

    # -- tenant labels --------------------------------------------------------------------------

    def labelled(self, connections: dict[str, int], deliveries: dict[str, int]) -> dict[str, str]:
        """slug -> label: the busiest ``max_tenant_labels`` keep their slug, others ``_other``."""
        slugs = set(self.tenants) | set(connections) | set(deliveries)
        if len(slugs) <= self.max_tenant_labels:
            return {slug: slug for slug in slugs}

        def activity(slug: str) -> int:
            stats = self.tenants.get(slug)
            own = stats.activity() if stats is not None else 0
            return own + connections.get(slug, 0) + deliveries.get(slug, 0)

        ranked = sorted(slugs, key=lambda slug: (-activity(slug), slug))
        top = set(ranked[: self.max_tenant_labels])
        return {slug: slug if slug in top else OTHER for slug in slugs}


class NullMetrics(Metrics):
    """``metrics.enabled = false``: the same interface, counting nothing."""

    enabled = False

    def connected(self, slug: str) -> None:
        pass

    def refused(self, code: str) -> None:
        pass

    def event(self, slug: str | None, event: str, result: str, seconds: float) -> None:
        pass

    def stored(self, slug: str, count: int = 1) -> None:
        pass

    def batch(self, size: int) -> None:
        pass

    def database_error(self) -> None:
        pass

    def redis_error(self) -> None:
        pass

    def gap_repair(self, messages: int) -> None:
        pass

    def webhook_delivery(self, slug: str, result: str, seconds: float | None) -> None:
        pass

    def webhook_queue(self, backlog: int, oldest_pending_seconds: float) -> None:
        pass

    def loop_lag_sample(self, seconds: float) -> None:
        pass


def create_metrics(settings: MetricsSettings) -> Metrics:
    return Metrics(settings.max_tenant_labels) if settings.enabled else NullMetrics()


def _per_tenant(values: Mapping[str, float], labels: dict[str, str]) -> dict[str, float]:
    """Sum ``values`` by tenant label; ``_other`` is always present."""
    out: dict[str, float] = {OTHER: 0}
    for slug, value in values.items():
        label = labels.get(slug, OTHER)
        out[label] = out.get(label, 0) + value
    return out


class MetricsCollector(Collector):
    """Renders a ``Metrics`` and the latest ``Snapshot`` (set by the handler right before each
    render, with no await in between, so concurrent scrapes never mix snapshots)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[Metric]:
        m, snap = self.metrics, self.snapshot
        deliveries = {namespace[1:]: count for namespace, count in m.delivered.items()}
        labels = m.labelled(snap.connections, deliveries)
        stats = m.tenants

        connections = GaugeMetricFamily(
            "orgcast_connections", "Live Socket.IO connections on this node.", labels=["tenant"]
        )
        for label, value in sorted(_per_tenant(snap.connections, labels).items()):
            connections.add_metric([label], value)
        yield connections
        yield GaugeMetricFamily(
            "orgcast_tenants_connected",
            "Tenants with at least one live connection on this node.",
            value=sum(1 for count in snap.connections.values() if count),
        )
        yield _tenant_counter(
            "orgcast_connects", "Sockets admitted.",
            {slug: s.connects for slug, s in stats.items()}, labels,
        )  # fmt: skip
        refusals = CounterMetricFamily(
            "orgcast_connect_refusals", "Connections refused, by wire code.", labels=["code"]
        )
        for code, count in sorted(m.refusals.items()):
            refusals.add_metric([code], count)
        yield refusals

        events = CounterMetricFamily(
            "orgcast_events",
            "Client events answered, by event and result (ok or the ack's error code).",
            labels=["tenant", "event", "result"],
        )
        merged: dict[tuple[str, str, str], int] = {}
        for slug, s in stats.items():
            label = labels.get(slug, OTHER)
            for (event, result), count in s.events.items():
                key = (label, event, result)
                merged[key] = merged.get(key, 0) + count
        for (label, event, result), count in sorted(merged.items()):
            events.add_metric([label, event, result], count)
        yield events

        ack = HistogramMetricFamily(
            "orgcast_ack_latency_seconds",
            "Time from receiving a client event to sending its ack.",
            labels=["event"],
        )
        for event in sorted({"message", *m.ack_latency}):
            histogram = m.ack_latency.get(event) or Histogram(ACK_BUCKETS)
            ack.add_metric([event], histogram.buckets(), histogram.total)
        yield ack

        yield _tenant_counter(
            "orgcast_messages_stored", "Messages committed to the database by this node.",
            {slug: s.messages for slug, s in stats.items()}, labels,
        )  # fmt: skip
        yield CounterMetricFamily(
            "orgcast_message_batches",
            "Group-commit write transactions committed by this node.",
            value=m.batches,
        )
        yield _histogram(
            "orgcast_message_batch_size", "Messages per group-commit transaction.", m.batch_size
        )
        yield GaugeMetricFamily(
            "orgcast_message_queue_depth",
            "Messages waiting for the group-commit writer.",
            value=snap.queue_depth,
        )
        yield _tenant_counter(
            "orgcast_deliveries", "Message packets handed to sockets on this node.",
            deliveries, labels,
        )  # fmt: skip

        yield GaugeMetricFamily(
            "orgcast_database_up",
            "1 when the database answered this scrape's query, else 0.",
            value=0 if snap.tenants is None else 1,
        )
        yield CounterMetricFamily(
            "orgcast_database_errors",
            "Operations that failed on a database error.",
            value=m.database_errors,
        )
        yield GaugeMetricFamily(
            "orgcast_redis_up",
            "1 when Redis answered this scrape's PING; 0 when it did not or none is configured.",
            value=1 if snap.redis_up else 0,
        )
        yield CounterMetricFamily(
            "orgcast_redis_errors",
            "Operations that failed on a Redis error.",
            value=m.redis_errors + snap.redis_errors,
        )
        yield CounterMetricFamily(
            "orgcast_gap_repairs",
            "Gap repairs run (missed sequence numbers read from the database).",
            value=m.gap_repairs,
        )
        yield CounterMetricFamily(
            "orgcast_gap_repaired_messages",
            "Messages delivered by gap repairs.",
            value=m.gap_repaired_messages,
        )

        webhooks = CounterMetricFamily(
            "orgcast_webhook_deliveries",
            "Webhook POSTs by outcome.",
            labels=["tenant", "result"],
        )
        by_label: dict[tuple[str, str], int] = {(OTHER, result): 0 for result in WEBHOOK_RESULTS}
        for slug, s in stats.items():
            label = labels.get(slug, OTHER)
            for result, count in s.webhooks.items():
                by_label[(label, result)] = by_label.get((label, result), 0) + count
        for (label, result), count in sorted(by_label.items()):
            webhooks.add_metric([label, result], count)
        yield webhooks
        yield _histogram(
            "orgcast_webhook_delivery_latency_seconds",
            "Webhook POST to response.",
            m.webhook_latency,
        )
        backlog, oldest = m.webhook_backlog, m.webhook_oldest_pending_seconds
        if m.webhook_source is not None:
            with contextlib.suppress(Exception):  # a broken source must not break the scrape
                backlog, oldest = m.webhook_source()
        yield GaugeMetricFamily(
            "orgcast_webhook_backlog", "Webhook events waiting for delivery.", value=backlog
        )
        yield GaugeMetricFamily(
            "orgcast_webhook_oldest_pending_seconds",
            "Age of the oldest undelivered webhook event.",
            value=oldest,
        )
        yield _histogram(
            "orgcast_event_loop_lag_seconds",
            "How late the event loop woke a sampler task (time blocked by other work).",
            m.loop_lag,
        )
        if snap.tenants is not None:
            tenants = GaugeMetricFamily("orgcast_tenants", "Tenants by status.", labels=["status"])
            for status in sorted({"active", "suspended", *snap.tenants}):
                tenants.add_metric([status], snap.tenants.get(status, 0))
            yield tenants
        info = GaugeMetricFamily(
            "orgcast_node_info",
            "Always 1: the version, database kind and whether Redis is configured.",
            labels=["version", "database", "redis"],
        )
        redis = "true" if snap.redis_configured else "false"
        info.add_metric([__version__, snap.database, redis], 1)
        yield info


def _tenant_counter(
    name: str, documentation: str, values: dict[str, int], labels: dict[str, str]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=["tenant"])
    for label, value in sorted(_per_tenant(values, labels).items()):
        family.add_metric([label], value)
    return family


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(
        name, documentation, buckets=histogram.buckets(), sum_value=histogram.total
    )


def create_registry(metrics: Metrics) -> tuple[CollectorRegistry, MetricsCollector]:
    """A registry of this app's own: the orgcast series plus process, platform and GC."""
    registry = CollectorRegistry(auto_describe=True)
    collector = MetricsCollector(metrics)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry, collector


async def sample_loop_lag(metrics: Metrics, interval: float) -> None:
    """Until cancelled: sleep ``interval`` and record how much later than asked it woke."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval)
        metrics.loop_lag_sample(max(0.0, loop.time() - start - interval))
