"""The per-node tenant directory (a cache of ``TenantKeys`` dropped the moment a tenant changes)
and the watcher that finds changes made by other processes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import Unavailable
from .control import ControlBus
from .tenant_models import TenantKeys, now_ms

if TYPE_CHECKING:
    from .tenants import TenantService

log = logging.getLogger(__name__)


class TenantDirectory:
    """A per-node cache of ``TenantKeys`` by slug, dropped the moment a tenant changes."""

    def __init__(self, service: TenantService, control: ControlBus) -> None:
        self._service = service
        self._cache: dict[str, TenantKeys] = {}
        self._loading: dict[str, asyncio.Future[TenantKeys | None]] = {}
        # Unknown slugs, remembered briefly (monotonic expiry) and in bounded number, so a probe
        # of one name is one query per MISSING_TTL, and a probe of many cannot grow memory.
        self._missing: dict[str, float] = {}
        self._generation = 0
        control.subscribe(self.invalidate)

    MISSING_TTL = 1.0
    MISSING_MAX = 10_000

    async def invalidate(self, slug: str) -> None:
        """Drop a cached tenant ("*": all of them); the next lookup reads the database."""
        self._generation += 1
        # A load already under way may predate the change: later lookups start a new one.
        if slug == "*":
            self._cache.clear()
            self._loading.clear()
            self._missing.clear()
        else:
            self._cache.pop(slug, None)
            self._loading.pop(slug, None)
            self._missing.pop(slug, None)

    def cached_slugs(self) -> set[str]:
        return set(self._cache)

    def cached(self, slug: str) -> TenantKeys | None:
        return self._cache.get(slug)

    async def lookup(self, slug: str) -> TenantKeys | None:
        if slug in self._cache:
            return self._cache[slug]
        missing_until = self._missing.get(slug)
        if missing_until is not None:
            if time.monotonic() < missing_until:
                return None
            del self._missing[slug]
        # One query per slug at a time: a connect storm on a cold cache waits for one load
        # instead of sending a thousand identical queries (and growing the pool to match).
        pending = self._loading.get(slug)
        if pending is None:
            pending = asyncio.ensure_future(self._load(slug))
            self._loading[slug] = pending
            pending.add_done_callback(lambda done: self._forget_load(slug, done))
        return await asyncio.shield(pending)

    def _forget_load(self, slug: str, done: asyncio.Future[TenantKeys | None]) -> None:
        if self._loading.get(slug) is done:
            del self._loading[slug]

    async def _load(self, slug: str) -> TenantKeys | None:
        generation = self._generation
        keys = await self._service.load_keys(slug)
        # A record loaded while a change was announced is not trusted.
        if generation != self._generation:
            return keys
        if keys is not None:
            self._cache[slug] = keys
        else:
            if len(self._missing) >= self.MISSING_MAX:
                self._missing.clear()
            self._missing[slug] = time.monotonic() + self.MISSING_TTL
        return keys


class TenantWatcher:
    """Finds tenant changes made by any process, Redis or not, by reading the tenant table.

    The control bus announces a change at once when it is made through this node or (with Redis)
    any node. A change made elsewhere (the CLI against the database, a node without Redis, an
    operator's SQL) is found here within ``interval`` seconds: tenants whose ``updated_at``
    moved, and watched tenants (cached, or with live sockets) that no longer exist, are announced
    to this node's subscribers, which drop caches and disconnect suspended or deleted tenants.
    """

    OVERLAP_MS = 2000  # re-read recent changes: a transaction may commit after a later one

    def __init__(
        self,
        service: TenantService,
        control: ControlBus,
        watched: Callable[[], set[str]],
        interval: float,
    ) -> None:
        self._service = service
        self._control = control
        self._watched = watched
        self._interval = interval
        self._seen: dict[str, int] = {}
        self._since = now_ms()

    async def check(self) -> set[str]:
        """One pass; returns the slugs announced."""
        changed: set[str] = set()
        newest = self._since
        for slug, updated in await self._service.changed_since(self._since - self.OVERLAP_MS):
            newest = max(newest, updated)
            if self._seen.get(slug) != updated:
                self._seen[slug] = updated
                changed.add(slug)
        self._since = newest
        self._seen = {s: t for s, t in self._seen.items() if t >= newest - self.OVERLAP_MS}
        watched = self._watched()
        changed |= watched - await self._service.existing(watched)
        for slug in sorted(changed):
            await self._control.deliver_local(slug)
        return changed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except Unavailable:
                log.warning("tenant watcher: database unavailable; retrying")
            except Exception:
                log.exception("tenant watcher failed; retrying")
