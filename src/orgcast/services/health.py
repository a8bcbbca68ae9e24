"""Readiness: the database answers and its schema is at the Alembic head."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from ..store import schema
from ..store.engine import DB_ERRORS


class HealthService:
    def __init__(self, engine: AsyncEngine, timeout: float = 2.0) -> None:
        self._engine = engine
        self._timeout = timeout

    async def readiness(self) -> tuple[bool, str]:
        """(ready, reason)."""
        try:
            async with asyncio.timeout(self._timeout):
                current = await schema.current_revision(self._engine)
        except DB_ERRORS:  # includes TimeoutError
            return False, "database unreachable"
        head = schema.head_revision()
        if current != head:
            return False, f"database schema at {current or 'empty'}, expected {head}"
        return True, "ok"
