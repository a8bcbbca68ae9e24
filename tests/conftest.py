"""Shared fixtures: a throwaway database, real servers on 127.0.0.1:0, real Socket.IO clients.

The suite runs against PostgreSQL when it answers on 127.0.0.1 (``ORGCAST_TEST_POSTGRES_URL``
overrides where), else against a SQLite file; with ``CI=true`` a missing PostgreSQL or Redis is a
failure, never a skip. ``ORGCAST_TEST_DATABASE=sqlite`` forces the embedded default.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.browser import Pages, chromium, open_pages
from tests.support import (
    ADMIN_TOKEN,
    Server,
    create_pg_database,
    drop_pg_database,
    node_settings,
    pg_admin_url,
    postgres_available,
    redis_available,
    start_server,
)

IN_CI = os.environ.get("CI", "").lower() == "true"


def _need(service: str, ok: bool) -> None:
    if ok:
        return
    message = f"{service} is not reachable on 127.0.0.1"
    if IN_CI:
        pytest.fail(f"{message}: CI requires it", pytrace=False)
    pytest.skip(f"{message}; start it to run this test")


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL server URL (to the maintenance database); fails in CI, skips locally."""
    url = pg_admin_url()
    _need("PostgreSQL", postgres_available(url))
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("ORGCAST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    _need("Redis", redis_available(url))
    return url


@pytest.fixture
def redis_channel() -> str:
    """A channel prefix of this test's own, so concurrent runs never hear each other."""
    return f"orgcast-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pg_database(pg_server: str) -> Iterator[str]:
    """An empty PostgreSQL database of this test's own, dropped afterwards."""
    url = asyncio.run(create_pg_database(pg_server))
    yield url
    asyncio.run(drop_pg_database(pg_server, url))


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The database most tests share (migrated by the first server); tenants keep tests apart."""
    forced = os.environ.get("ORGCAST_TEST_DATABASE", "")
    admin = pg_admin_url()
    if forced == "sqlite" or (forced != "postgres" and not IN_CI and not postgres_available(admin)):
        path = tmp_path_factory.mktemp("db") / "orgcast.sqlite3"
        yield f"sqlite+aiosqlite:///{path}"
        return
    if not postgres_available(admin):
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1: CI requires it", pytrace=False)
    url = asyncio.run(create_pg_database(admin))
    yield url
    asyncio.run(drop_pg_database(admin, url))


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    """A real orgcast node on 127.0.0.1:<free port>."""
    async with start_server(node_settings(database_url, tmp_path)) as node:
        yield node


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    """One headless Chromium for a browser test module (skips locally without it, fails in CI)."""
    async with chromium() as instance:
        yield instance


@pytest_asyncio.fixture(loop_scope="module")
async def pages(browser: Any) -> AsyncIterator[Pages]:
    """The pages of one browser test, closed at its end so their sockets leave first."""
    async with open_pages(browser) as opened:
        yield opened


__all__ = ["ADMIN_TOKEN"]
