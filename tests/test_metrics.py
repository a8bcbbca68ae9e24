"""``GET /metrics`` (DESIGN §13): on by default, behind the admin token or ``metrics.token``, the
series of ``orgcast.metrics`` with bounded tenant labels. Each app has its own registry, so
several apps in one process count independently."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from orgcast.metrics import OTHER, Metrics, MetricsCollector, Snapshot, create_registry
from orgcast.settings import MetricsSettings, Settings
from tests.support import (
    ADMIN_TOKEN,
    Inbox,
    Server,
    allow_connections,
    create_pg_database,
    drop_pg_database,
    eventually,
    node_settings,
    pg_admin_url,
    start_server,
)

TENANTS = "/api/v1/tenants"
METRICS_TOKEN = "scrape-only-token-0123456789"


@asynccontextmanager
async def metrics_node(database_url: str, directory: Path, **metrics: Any) -> AsyncIterator[Server]:
    """A node with metrics on, on an empty database of its own, so counts are exact."""
    on = MetricsSettings(token=METRICS_TOKEN, **metrics)
    if database_url.startswith("sqlite"):
        url = f"sqlite+aiosqlite:///{directory / 'metrics.sqlite3'}"
        async with start_server(node_settings(url, directory, metrics=on)) as node:
            yield node
        return
    url = await create_pg_database(pg_admin_url())
    try:
        async with start_server(node_settings(url, directory, metrics=on)) as node:
            yield node
    finally:
        await drop_pg_database(pg_admin_url(), url)


async def scrape_text(server: Server, token: str = ADMIN_TOKEN) -> str:
    headers = {"Authorization": f"Bearer {token}"}
    async with server.http.get(server.url + "/metrics", headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return await response.text()


def samples_of(text: str) -> dict[str, float]:
    """Every sample as ``name{label=value,...}`` -> value."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def scrape(server: Server, token: str = ADMIN_TOKEN) -> dict[str, float]:
    return samples_of(await scrape_text(server, token))


def orgcast(samples: dict[str, float], *prefixes: str) -> dict[str, float]:
    """The orgcast samples (or those of the given series), without ``_created`` timestamps."""
    wanted = prefixes or ("orgcast_",)
    return {k: v for k, v in samples.items() if k.startswith(wanted) and "_created" not in k}


# -- access ------------------------------------------------------------------------------------


async def test_metrics_are_on_by_default() -> None:
    assert Settings().metrics.enabled is True
    assert Settings().metrics.max_tenant_labels == 100


async def test_metrics_answer_401_without_a_valid_token_and_200_with_admin_or_metrics_token(
    database_url: str, tmp_path: Path
) -> None:
    async with metrics_node(database_url, tmp_path) as server:
        tenant = await server.create_tenant()
        assert await server.request("GET", "/metrics", token=None) == (
            401,
            {
                "error": {
                    "code": "auth_required",
                    "message": "send Authorization: Bearer <token>",
                }
            },
        )
        for wrong in ("not-the-token-at-all-0123", tenant.api_key, METRICS_TOKEN + "x"):
            assert await server.request("GET", "/metrics", token=wrong) == (
                401,
                {"error": {"code": "auth_invalid", "message": "invalid token"}},
            )
        status, body = await server.request(
            "GET", "/metrics", token=None, headers={"Authorization": "Basic abc"}
        )
        assert (status, body["error"]["code"]) == (401, "auth_invalid")
        for token in (ADMIN_TOKEN, METRICS_TOKEN):
            assert "orgcast_connections" in await scrape_text(server, token)


async def test_metrics_disabled_is_a_json_404(database_url: str, tmp_path: Path) -> None:
    settings = node_settings(database_url, tmp_path, metrics=MetricsSettings(enabled=False))
    async with start_server(settings) as server:
        assert await server.request("GET", "/metrics") == (
            404,
            {"error": {"code": "not_found", "message": "no such route: /metrics"}},
        )


# -- series ------------------------------------------------------------------------------------


async def test_metrics_start_at_zero_with_every_series_present(
    database_url: str, tmp_path: Path
) -> None:
    async with metrics_node(database_url, tmp_path) as server:
        samples = await scrape(server)
    values = orgcast(samples)
    assert {k: v for k, v in values.items() if "_bucket" not in k} == {
        "orgcast_connections{tenant=_other}": 0,
        "orgcast_tenants_connected": 0,
        "orgcast_connects_total{tenant=_other}": 0,
        "orgcast_ack_latency_seconds_count{event=message}": 0,
        "orgcast_ack_latency_seconds_sum{event=message}": 0,
        "orgcast_messages_stored_total{tenant=_other}": 0,
        "orgcast_message_batches_total": 0,
        "orgcast_message_batch_size_count": 0,
        "orgcast_message_batch_size_sum": 0,
        "orgcast_message_queue_depth": 0,
        "orgcast_deliveries_total{tenant=_other}": 0,
        "orgcast_database_up": 1,
        "orgcast_database_errors_total": 0,
        "orgcast_redis_up": 0,
        "orgcast_redis_errors_total": 0,
        "orgcast_gap_repairs_total": 0,
        "orgcast_gap_repaired_messages_total": 0,
        "orgcast_webhook_deliveries_total{result=delivered,tenant=_other}": 0,
        "orgcast_webhook_deliveries_total{result=disabled,tenant=_other}": 0,
        "orgcast_webhook_deliveries_total{result=failed,tenant=_other}": 0,
        "orgcast_webhook_deliveries_total{result=retry,tenant=_other}": 0,
        "orgcast_webhook_delivery_latency_seconds_count": 0,
        "orgcast_webhook_delivery_latency_seconds_sum": 0,
        "orgcast_webhook_backlog": 0,
        "orgcast_webhook_oldest_pending_seconds": 0,
        "orgcast_event_loop_lag_seconds_count": values["orgcast_event_loop_lag_seconds_count"],
        "orgcast_event_loop_lag_seconds_sum": values["orgcast_event_loop_lag_seconds_sum"],
        "orgcast_tenants{status=active}": 0,
        "orgcast_tenants{status=suspended}": 0,
        "orgcast_node_info{database=%s,redis=false,version=0.1.0}"
        % ("sqlite" if database_url.startswith("sqlite") else "postgresql"): 1,
    }
    buckets = [k for k in values if k.startswith("orgcast_ack_latency_seconds_bucket")]
    assert sorted(float(k.split("le=")[1].rstrip("}")) for k in buckets) == [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        float("inf"),
    ]  # fmt: skip
    # Process and garbage-collector collectors of this app's own registry.
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "python_gc_collections_total{generation=0}",
        "python_info{implementation=CPython",
    ):
        assert any(k.startswith(name) for k in samples), name


async def test_metrics_count_connects_events_messages_deliveries_and_acks(
    database_url: str, tmp_path: Path
) -> None:
    async with metrics_node(database_url, tmp_path) as server:
        first, second = await server.create_tenant(), await server.create_tenant()
        await server.create_tenant()
        status, _ = await server.request(
            "PATCH", f"{TENANTS}/{second.slug}", json={"status": "suspended"}
        )
        assert status == 200
        alice = await server.connect(first.slug, await server.token(first.slug))
        bob = await server.connect(first.slug, await server.token(first.slug, "bob"))
        ns = f"/{first.slug}"
        inbox = Inbox(bob, "message", ns)
        for client in (alice, bob):
            assert (await client.call("join", {"room": "r"}, namespace=ns, timeout=5))["ok"]
        for i in range(3):
            status, _ = await server.request(
                "POST", f"{TENANTS}/{first.slug}/rooms/r/messages", json={"body": i}
            )
            assert status == 201
        ack = await alice.call("message", {"room": "r", "body": "x"}, namespace=ns, timeout=5)
        assert ack["ok"] is True
        ack = await alice.call("message", {"room": "nope", "body": "x"}, namespace=ns, timeout=5)
        assert ack["error"]["code"] == "not_joined"
        ack = await alice.call("no-such-event", {}, namespace=ns, timeout=5)
        assert ack["error"]["code"] == "unknown_event"
        assert [(await inbox.get())["body"] for _ in range(4)] == [0, 1, 2, "x"]
        refused = await server.try_connect(second.slug, {"token": "x"})
        assert refused is not None and refused["code"] == "tenant_suspended"

        samples = orgcast(await scrape(server))
        batches = samples.pop("orgcast_message_batches_total")
        assert 1 <= batches <= 4  # group commit may merge writes that arrive together
        assert samples["orgcast_message_batch_size_count"] == batches
        assert samples["orgcast_message_batch_size_sum"] == 4
        a = first.slug
        assert {
            k: v
            for k, v in samples.items()
            if k.startswith(
                (
                    "orgcast_connections",
                    "orgcast_tenants",
                    "orgcast_connects",
                    "orgcast_connect_refusals",
                    "orgcast_events",
                    "orgcast_messages_stored",
                    "orgcast_deliveries",
                    "orgcast_ack_latency_seconds_count",
                )
            )
        } == {
            f"orgcast_connections{{tenant={a}}}": 2,
            "orgcast_connections{tenant=_other}": 0,
            "orgcast_tenants_connected": 1,
            "orgcast_tenants{status=active}": 2,
            "orgcast_tenants{status=suspended}": 1,
            f"orgcast_connects_total{{tenant={a}}}": 2,
            "orgcast_connects_total{tenant=_other}": 0,
            "orgcast_connect_refusals_total{code=tenant_suspended}": 1,
            f"orgcast_events_total{{event=join,result=ok,tenant={a}}}": 2,
            f"orgcast_events_total{{event=message,result=ok,tenant={a}}}": 1,
            f"orgcast_events_total{{event=message,result=not_joined,tenant={a}}}": 1,
            f"orgcast_events_total{{event=other,result=unknown_event,tenant={a}}}": 1,
            f"orgcast_messages_stored_total{{tenant={a}}}": 4,
            "orgcast_messages_stored_total{tenant=_other}": 0,
            # Three REST messages to both sockets, the socket's message to bob only.
            f"orgcast_deliveries_total{{tenant={a}}}": 7,
            "orgcast_deliveries_total{tenant=_other}": 0,
            "orgcast_ack_latency_seconds_count{event=join}": 2,
            "orgcast_ack_latency_seconds_count{event=message}": 2,
            "orgcast_ack_latency_seconds_count{event=other}": 1,
        }


async def test_tenant_labels_are_bounded_to_the_busiest_and_the_rest_summed_as_other(
    database_url: str, tmp_path: Path
) -> None:
    async with metrics_node(database_url, tmp_path, max_tenant_labels=2) as server:
        tenants = [await server.create_tenant() for _ in range(5)]
        # Tenant i gets i + 1 sockets: the two busiest are the last two.
        for i, tenant in enumerate(tenants):
            for n in range(i + 1):
                await server.connect(tenant.slug, await server.token(tenant.slug, f"u{n}"))
        samples = orgcast(await scrape(server), "orgcast_connections", "orgcast_connects_total")
    expected = {}
    for name in ("orgcast_connections", "orgcast_connects_total"):
        expected[f"{name}{{tenant={tenants[3].slug}}}"] = 4
        expected[f"{name}{{tenant={tenants[4].slug}}}"] = 5
        expected[f"{name}{{tenant=_other}}"] = 1 + 2 + 3
    assert samples == expected


def test_a_thousand_tenants_render_max_tenant_labels_plus_other_and_register_nothing() -> None:
    metrics = Metrics(max_tenant_labels=10)
    registry, collector = create_registry(metrics)
    collectors_before = len(registry._collector_to_names)
    for round_ in range(3):  # the busiest set changes between scrapes
        for i in range(1000):
            slug = f"t{i:04d}"
            for _ in range((i + round_ * 500) % 1000 // 100):
                metrics.stored(slug)
            metrics.event(slug, "message", "ok", 0.001)
            metrics.webhook_delivery(slug, "delivered", 0.05)
        collector.snapshot = Snapshot(connections={f"t{i:04d}": 1 for i in range(1000)})
        samples = samples_of(_render(registry))
        for name in ("orgcast_messages_stored_total", "orgcast_connections"):
            labels = [k for k in samples if k.startswith(name + "{")]
            assert len(labels) == 11, (name, labels)
            assert f"{name}{{tenant={OTHER}}}" in labels
        events = [k for k in samples if k.startswith("orgcast_events_total{")]
        assert len(events) == 11
        webhooks = [k for k in samples if k.startswith("orgcast_webhook_deliveries_total{")]
        assert len(webhooks) == 11 + 3  # + the other results of _other, at zero
        total = sum(v for k, v in samples.items() if k.startswith("orgcast_messages_stored_total"))
        assert total == sum(s.messages for s in metrics.tenants.values())
        assert len(registry._collector_to_names) == collectors_before
    assert len(metrics.tenants) == 1000


def _render(registry: Any) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def test_the_collector_keeps_no_state_between_scrapes() -> None:
    metrics = Metrics(max_tenant_labels=1)
    registry, collector = create_registry(metrics)
    assert isinstance(collector, MetricsCollector)
    metrics.stored("a", 5)
    metrics.stored("b", 1)
    first = samples_of(_render(registry))
    assert first["orgcast_messages_stored_total{tenant=a}"] == 5
    assert first["orgcast_messages_stored_total{tenant=_other}"] == 1
    metrics.stored("b", 10)  # b overtakes a
    second = samples_of(_render(registry))
    assert "orgcast_messages_stored_total{tenant=a}" not in second
    assert second["orgcast_messages_stored_total{tenant=b}"] == 11
    assert second["orgcast_messages_stored_total{tenant=_other}"] == 5


async def test_event_loop_lag_is_sampled_while_the_node_runs(
    database_url: str, tmp_path: Path
) -> None:
    async with metrics_node(database_url, tmp_path, loop_lag_interval_seconds=0.01) as server:

        async def sampled() -> bool:
            return (await scrape(server))["orgcast_event_loop_lag_seconds_count"] >= 3

        await eventually(sampled)


async def test_two_apps_in_one_process_keep_their_own_metrics(
    database_url: str, tmp_path: Path
) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    async with (
        metrics_node(database_url, tmp_path / "a") as one,
        metrics_node(database_url, tmp_path / "b") as two,
    ):
        tenant = await one.create_tenant()
        status, _ = await one.request(
            "POST", f"{TENANTS}/{tenant.slug}/rooms/r/messages", json={"body": 1}
        )
        assert status == 201
        assert (await scrape(one))[f"orgcast_messages_stored_total{{tenant={tenant.slug}}}"] == 1
        two_samples = orgcast(await scrape(two), "orgcast_messages_stored_total")
        assert two_samples == {"orgcast_messages_stored_total{tenant=_other}": 0}
        assert (await scrape(two))["orgcast_tenants{status=active}"] == 0


async def test_metrics_negotiate_openmetrics_when_asked(database_url: str, tmp_path: Path) -> None:
    async with metrics_node(database_url, tmp_path) as server:
        headers = {
            "Accept": "application/openmetrics-text",
            "Authorization": f"Bearer {METRICS_TOKEN}",
        }
        async with server.http.get(server.url + "/metrics", headers=headers) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith(
                "application/openmetrics-text; version=1.0.0"
            )
            text = await response.text()
    assert 'orgcast_messages_stored_total{tenant="_other"} 0.0' in text
    assert text.endswith("# EOF\n")


@pytest.mark.redis
async def test_redis_up_is_1_on_a_node_with_redis(
    database_url: str, tmp_path: Path, redis_url: str, redis_channel: str
) -> None:
    from orgcast.settings import RedisSettings

    settings = node_settings(
        database_url,
        tmp_path,
        metrics=MetricsSettings(),
        redis=RedisSettings(url=redis_url, channel=redis_channel),
    )
    async with start_server(settings) as server:
        samples = await scrape(server)
    assert samples["orgcast_redis_up"] == 1
    assert next(k for k in samples if k.startswith("orgcast_node_info")).endswith(
        "redis=true,version=0.1.0}"
    )


@pytest.mark.postgres
async def test_metrics_answer_with_database_up_0_and_count_errors_while_the_database_refuses(
    pg_database: str, pg_server: str, tmp_path: Path
) -> None:
    settings = node_settings(pg_database, tmp_path, metrics=MetricsSettings())
    database = make_url(pg_database).database
    async with start_server(settings) as server:
        assert orgcast(await scrape(server))["orgcast_database_up"] == 1
        try:
            await allow_connections(pg_server, database, False)
            samples = orgcast(await scrape(server))
            assert samples["orgcast_database_up"] == 0
            assert "orgcast_tenants{status=active}" not in samples
            assert samples["orgcast_connections{tenant=_other}"] == 0
            assert samples["orgcast_database_errors_total"] == 0
            status, body = await server.request("GET", TENANTS)
            assert (status, body["error"]["code"]) == (503, "unavailable")
            assert orgcast(await scrape(server))["orgcast_database_errors_total"] == 1
        finally:
            await allow_connections(pg_server, database, True)
