"""Counts the Hub's use cases into ``Metrics``: admissions and stored messages, for every
transport alike (socket ``message`` and REST publish both pass ``Hub.publish``)."""

from __future__ import annotations

from collections.abc import Sequence

from ..metrics import Metrics
from .hub import Connection, HubListener
from .messages import StoredRow


class HubMetrics(HubListener):
    """``orgcast_connects_total`` and ``orgcast_messages_stored_total``, per tenant."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def on_admitted(self, conn: Connection) -> None:
        self._metrics.connected(conn.slug)

    async def on_stored(self, slug: str, rows: Sequence[StoredRow]) -> None:
        self._metrics.stored(slug, len(rows))
