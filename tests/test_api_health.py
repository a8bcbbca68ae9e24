"""Liveness and readiness (DESIGN §6): ``/readyz`` is 200 only while the database answers and its
schema is at head. The failures are real: connections to a throwaway PostgreSQL database are
refused and terminated, and its schema is downgraded, under a running node."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from orgcast.store import schema
from tests.support import Server, allow_connections, eventually, node_settings, start_server

NOT_REACHABLE = {"error": {"code": "unavailable", "message": "database unreachable"}}


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
async def pg_node(pg_database: str, tmp_path: Path) -> AsyncIterator[Server]:
    """A node on a PostgreSQL database of this test's own."""
    async with start_server(node_settings(pg_database, tmp_path)) as node:
        yield node


async def _wait_ready(node: Server, within: float = 10.0) -> tuple[int, object]:
    """Poll /readyz until 200 or the deadline; returns the last answer."""
    last: tuple[int, object] = (0, None)

    async def ready() -> bool:
        nonlocal last
        last = await node.request("GET", "/readyz", token=None)
        return last[0] == 200

    with contextlib.suppress(AssertionError):
        await eventually(ready, within)
    return last


async def test_healthz_answers_ok_without_a_token(server: Server) -> None:
    assert await server.request("GET", "/healthz", token=None) == (200, {"status": "ok"})


async def test_readyz_is_200_when_the_database_answers_at_head(server: Server) -> None:
    assert await server.request("GET", "/readyz", token=None) == (200, {"status": "ready"})


@pytest.mark.postgres
async def test_readyz_is_503_json_while_the_database_refuses_connections_and_recovers(
    pg_node: Server, pg_server: str, pg_database: str
) -> None:
    database = make_url(pg_database).database
    assert database is not None
    assert await pg_node.request("GET", "/readyz", token=None) == (200, {"status": "ready"})

    await allow_connections(pg_server, database, allowed=False)
    try:
        assert await pg_node.request("GET", "/readyz", token=None) == (503, NOT_REACHABLE)
        # The API answers the same way instead of hanging or failing with a 500.
        status, body = await pg_node.request("GET", "/api/v1/tenants")
        assert status == 503
        assert body["error"]["code"] == "unavailable"
        # Liveness does not depend on the database.
        assert await pg_node.request("GET", "/healthz", token=None) == (200, {"status": "ok"})
    finally:
        await allow_connections(pg_server, database, allowed=True)

    assert await _wait_ready(pg_node) == (200, {"status": "ready"})


@pytest.mark.postgres
async def test_readyz_is_503_json_when_the_database_is_dropped(
    pg_node: Server, pg_server: str, pg_database: str
) -> None:
    assert await pg_node.request("GET", "/readyz", token=None) == (200, {"status": "ready"})
    connection = await asyncpg.connect(_dsn(pg_server))
    try:
        await connection.execute(f'DROP DATABASE "{make_url(pg_database).database}" WITH (FORCE)')
    finally:
        await connection.close()
    assert await pg_node.request("GET", "/readyz", token=None) == (503, NOT_REACHABLE)


@pytest.mark.postgres
async def test_readyz_is_503_json_when_the_schema_is_not_at_head(
    pg_node: Server, pg_database: str
) -> None:
    assert await pg_node.request("GET", "/readyz", token=None) == (200, {"status": "ready"})
    head = schema.head_revision()
    await schema.downgrade(pg_database, "base")
    try:
        assert await pg_node.request("GET", "/readyz", token=None) == (
            503,
            {
                "error": {
                    "code": "unavailable",
                    "message": f"database schema at empty, expected {head}",
                }
            },
        )
    finally:
        await schema.upgrade(pg_database)
    assert await pg_node.request("GET", "/readyz", token=None) == (200, {"status": "ready"})
