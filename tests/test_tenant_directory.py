"""The per-node tenant cache: one database load per slug at a time, and never a stale record
after a change is announced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from orgcast.services.control import ControlBus
from orgcast.services.tenants import (
    TenantCreate,
    TenantDirectory,
    TenantKeys,
    TenantPatch,
    TenantService,
)
from orgcast.settings import LimitsSettings
from orgcast.store import schema
from orgcast.store.engine import create_engine, create_sessions
from tests.support import node_settings, unique_slug


@pytest.fixture
async def engine(database_url: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    await schema.upgrade(database_url)
    engine = create_engine(node_settings(database_url, tmp_path))
    yield engine
    await engine.dispose()


def count_statements(engine: AsyncEngine) -> list[str]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    return seen


async def test_a_burst_of_lookups_on_a_cold_cache_loads_the_tenant_once(
    engine: AsyncEngine,
) -> None:
    control = ControlBus()
    service = TenantService(create_sessions(engine), LimitsSettings(), control)
    tenant, _, _ = await service.create(TenantCreate(slug=unique_slug(), name="Burst"))
    directory = TenantDirectory(service, control)
    statements = count_statements(engine)

    results = await asyncio.gather(*(directory.lookup(tenant.slug) for _ in range(50)))

    assert all(r is results[0] and r is not None for r in results)
    assert len([s for s in statements if "FROM tenants" in s]) == 1
    await directory.lookup(tenant.slug)  # now cached: no query at all
    assert len([s for s in statements if "FROM tenants" in s]) == 1


class FirstLoadHeld(TenantService):
    """The real service, whose first load waits for the test to release it: a load that is still
    under way when a change is announced, on demand."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.release = asyncio.Event()
        self.holding = asyncio.Event()
        self.loads = 0

    async def load_keys(self, slug: str) -> TenantKeys | None:
        self.loads += 1
        keys = await super().load_keys(slug)
        if self.loads == 1:
            self.holding.set()
            await self.release.wait()
        return keys


async def test_a_lookup_after_a_change_never_joins_a_load_that_started_before_it(
    engine: AsyncEngine,
) -> None:
    control = ControlBus()
    service = FirstLoadHeld(create_sessions(engine), LimitsSettings(), control)
    tenant, _, _ = await service.create(TenantCreate(slug=unique_slug(), name="Race"))
    directory = TenantDirectory(service, control)

    stale = asyncio.ensure_future(directory.lookup(tenant.slug))
    await asyncio.wait_for(service.holding.wait(), 5)  # it has read the active record
    await service.update(tenant.slug, TenantPatch(status="suspended"))  # announces the change
    # Must neither wait for nor return the stale load.
    after = await asyncio.wait_for(directory.lookup(tenant.slug), 5)
    assert after is not None and after.tenant.status == "suspended"
    assert service.loads == 2

    service.release.set()
    old = await stale
    assert old is not None and old.tenant.status == "active"
    cached = await directory.lookup(tenant.slug)  # the stale record was not cached
    assert cached is not None and cached.tenant.status == "suspended"
