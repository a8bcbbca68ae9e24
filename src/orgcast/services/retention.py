"""Retention: every ``messages.retention_interval_seconds``, delete each tenant's messages older
than its ``history_retention_days``, in bounded batches that leave room for the message path."""

from __future__ import annotations

import asyncio
import logging

from ..errors import Unavailable
from ..settings import Settings
from .messages import MessageService
from .tenants import TenantService

log = logging.getLogger(__name__)


class RetentionTask:
    def __init__(
        self, tenants: TenantService, messages: MessageService, settings: Settings
    ) -> None:
        self._tenants = tenants
        self._messages = messages
        self._interval = settings.messages.retention_interval_seconds

    async def sweep(self) -> int:
        """One pass over every tenant; returns how many messages were deleted."""
        total, cursor = 0, 0
        while True:
            page, next_cursor = await self._tenants.list_page(cursor=cursor, limit=200)
            for tenant in page:
                days = self._tenants.limits_for(tenant).history_retention_days
                total += await self._messages.delete_expired(tenant.id, days)
            if next_cursor is None:
                return total
            cursor = next_cursor

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                deleted = await self.sweep()
            except Unavailable:
                log.warning("retention sweep skipped: database unavailable")
                continue
            except Exception:  # never let one bad sweep end retention for the process's life
                log.exception("retention sweep failed")
                continue
            if deleted:
                log.info("retention deleted %d expired messages", deleted)
