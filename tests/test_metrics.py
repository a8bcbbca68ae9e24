"""``GET /metrics`` (DESIGN §6): Prometheus text when ``metrics.enabled``, a JSON 404 otherwise.
Each app has its own registry, so several apps in one process count independently."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from orgcast.settings import MetricsSettings
from tests.support import (
    Server,
    create_pg_database,
    drop_pg_database,
    node_settings,
    pg_admin_url,
    start_server,
)

TENANTS = "/api/v1/tenants"


@asynccontextmanager
async def metrics_node(database_url: str, directory: Path) -> AsyncIterator[Server]:
    """A node with metrics on, on an empty database of its own, so counts are exact."""
    on = MetricsSettings(enabled=True)
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


async def scrape(server: Server) -> dict[str, float]:
    """Every sample as ``name{label=value}`` -> value."""
    async with server.http.get(server.url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def orgcast(samples: dict[str, float]) -> dict[str, float]:
    """The orgcast samples, without the _created timestamps counters carry."""
    return {k: v for k, v in samples.items() if k.startswith("orgcast_") and "_created" not in k}


async def test_metrics_count_connections_messages_batches_and_tenants(
    database_url: str, tmp_path: Path
) -> None:
    async with metrics_node(database_url, tmp_path) as server:
        assert orgcast(await scrape(server)) == {
            "orgcast_connections": 0,
            "orgcast_tenants_connected": 0,
            "orgcast_messages_stored_total": 0,
            "orgcast_message_batches_total": 0,
            "orgcast_database_up": 1,
            "orgcast_tenants{status=active}": 0,
            "orgcast_tenants{status=suspended}": 0,
        }

        first, second = await server.create_tenant(), await server.create_tenant()
        await server.create_tenant()
        status, _ = await server.request(
            "PATCH", f"{TENANTS}/{second.slug}", json={"status": "suspended"}
        )
        assert status == 200
        client = await server.connect(first.slug, await server.token(first.slug))
        await server.connect(first.slug, await server.token(first.slug, "bob"))
        namespace = f"/{first.slug}"
        assert (await client.call("join", {"room": "r"}, namespace=namespace, timeout=5))["ok"]
        for i in range(3):
            status, _ = await server.request(
                "POST", f"{TENANTS}/{first.slug}/rooms/r/messages", json={"body": i}
            )
            assert status == 201
        ack = await client.call("message", {"room": "r", "body": "x"}, namespace=namespace)
        assert ack["ok"] is True

        samples = orgcast(await scrape(server))
        batches = samples.pop("orgcast_message_batches_total")
        assert 1 <= batches <= 4  # group commit may merge writes that arrive together
        assert samples == {
            "orgcast_connections": 2,
            "orgcast_tenants_connected": 1,
            "orgcast_messages_stored_total": 4,
            "orgcast_database_up": 1,
            "orgcast_tenants{status=active}": 2,
            "orgcast_tenants{status=suspended}": 1,
        }


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
        assert (await scrape(one))["orgcast_messages_stored_total"] == 1
        assert (await scrape(two))["orgcast_messages_stored_total"] == 0
        assert (await scrape(two))["orgcast_tenants{status=active}"] == 0


async def test_metrics_disabled_is_a_json_404(server: Server) -> None:
    assert not server.settings.metrics.enabled
    assert await server.request("GET", "/metrics", token=None) == (
        404,
        {"error": {"code": "not_found", "message": "no such route: /metrics"}},
    )


async def test_metrics_negotiate_openmetrics_when_asked(database_url: str, tmp_path: Path) -> None:
    async with metrics_node(database_url, tmp_path) as server:
        async with server.http.get(
            server.url + "/metrics", headers={"Accept": "application/openmetrics-text"}
        ) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith(
                "application/openmetrics-text; version=1.0.0"
            )
            text = await response.text()
    assert "orgcast_messages_stored_total 0.0" in text
    assert text.endswith("# EOF\n")


@pytest.mark.postgres
async def test_metrics_still_answer_with_database_up_0_while_the_database_refuses(
    pg_database: str, pg_server: str, tmp_path: Path
) -> None:
    settings = node_settings(pg_database, tmp_path, metrics=MetricsSettings(enabled=True))
    database = make_url(pg_database).database
    admin_dsn = make_url(pg_server).set(drivername="postgresql").render_as_string(False)
    async with start_server(settings) as server:
        assert orgcast(await scrape(server))["orgcast_database_up"] == 1
        connection = await asyncpg.connect(admin_dsn)
        try:
            await connection.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
            await connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                database,
            )
            assert orgcast(await scrape(server)) == {
                "orgcast_connections": 0,
                "orgcast_tenants_connected": 0,
                "orgcast_messages_stored_total": 0,
                "orgcast_message_batches_total": 0,
                "orgcast_database_up": 0,
            }
        finally:
            await connection.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
            await connection.close()
