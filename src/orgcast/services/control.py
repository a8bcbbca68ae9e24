"""The control bus: "tenant X changed" reaches every node within a second.

Local subscribers (the directory cache, the realtime layer) are called directly. With Redis
configured, each announcement is also published on ``<channel>:control`` and every other node
delivers it to its own subscribers. Redis is chosen over PostgreSQL LISTEN/NOTIFY because scale-out
needs Redis anyway and the embedded SQLite default has no NOTIFY; a node that misses a message
while Redis is down still reloads a tenant at the next cache miss, and the directory cache is
emptied when the connection to Redis comes back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from ..logs import Repeated

log = logging.getLogger(__name__)

Subscriber = Callable[[str], Awaitable[None]]


class ControlBus:
    def __init__(self) -> None:
        self.node_id = uuid.uuid4().hex
        self._subscribers: list[Subscriber] = []
        self._redis: Any = None
        self._channel = ""
        self._failures = Repeated(log, interval=10.0)

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    async def tenant_changed(self, slug: str) -> None:
        await self.deliver_local(slug)
        if self._redis is not None:
            message = json.dumps({"node": self.node_id, "slug": slug})
            try:
                await self._redis.publish(self._channel, message)
            except Exception:  # Redis down: local nodes are served, others reload on a miss.
                log.warning("control bus: could not publish the change of %s", slug)

    async def deliver_local(self, slug: str) -> None:
        """Tell this node's subscribers only (for a change another process made)."""
        for subscriber in self._subscribers:
            try:
                await subscriber(slug)
            except Exception:
                log.exception("control bus subscriber failed for %s", slug)

    async def run(self, redis: Any, channel: str, ready: asyncio.Event | None = None) -> None:
        """Relay other nodes' announcements until cancelled; reconnects after Redis failures."""
        self._redis = redis
        self._channel = f"{channel}:control"
        while True:
            try:
                async with redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    if ready is not None:
                        ready.set()
                    self._failures.recovered("control bus: subscribed to Redis again")
                    await self.deliver_local("*")  # anything may have changed while we were away
                    async for message in pubsub.listen():
                        await self._on_message(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Retried every second, logged once per interval.
                self._failures.warning("control bus: Redis connection lost: %s", exc)
                await asyncio.sleep(1)

    async def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        try:
            data = json.loads(message["data"])
            node, slug = data["node"], data["slug"]
        except (ValueError, KeyError, TypeError):
            return
        if node != self.node_id and isinstance(slug, str):
            await self.deliver_local(slug)
