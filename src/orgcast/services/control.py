"""The control bus: "tenant X changed" reaches every node within a second, and commands
("disconnect this user") run on every node with their answers summed.

Local subscribers (the directory cache, the realtime layer) are called directly. With Redis
configured, each announcement is also published on ``<channel>:control`` and every other node
delivers it to its own subscribers. Redis is chosen over PostgreSQL LISTEN/NOTIFY because scale-out
needs Redis anyway and the embedded SQLite default has no NOTIFY; a node that misses a message
while Redis is down still reloads a tenant at the next cache miss, and the directory cache is
emptied when the connection to Redis comes back.

Commands are the one thing that needs an answer from other nodes. ``command(kind, args)`` runs the
local handler, publishes the command, and reads the number of receivers from ``PUBLISH``'s own
reply: every node holds exactly one subscription to ``<channel>:control``, so that number is the
number of live nodes that will run it. Each of them publishes ``{reply, count}`` back; the caller
sums what arrives within ``within`` (one second), so a node dying mid-command delays the answer
by at most that, and a node that is not subscribed at that moment is neither waited for nor
counted (it ran nothing). Without Redis there is one node and the local count is the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from ..logs import Repeated

log = logging.getLogger(__name__)

Subscriber = Callable[[str], Awaitable[None]]
CommandHandler = Callable[[dict[str, Any]], Awaitable[int]]
COMMAND_WAIT = 1.0


class ControlBus:
    def __init__(self) -> None:
        self.node_id = uuid.uuid4().hex
        self._subscribers: list[Subscriber] = []
        self._redis: Any = None
        self._channel = ""
        self._failures = Repeated(log, interval=10.0)
        self._subscribed = False
        self._handlers: dict[str, CommandHandler] = {}
        self._waiting: dict[str, tuple[list[int], asyncio.Event]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def on_command(self, kind: str, handler: CommandHandler) -> None:
        """Run ``handler(args)`` for every ``command(kind, args)`` made on any node; it returns
        this node's count (e.g. sockets disconnected)."""
        self._handlers[kind] = handler

    async def command(self, kind: str, args: dict[str, Any], within: float = COMMAND_WAIT) -> int:
        """Run a command on every node; the sum of the counts of this node and of every other
        node that answered within ``within`` seconds."""
        total = await self._run_local(kind, args)
        if self._redis is None:
            return total
        request = uuid.uuid4().hex
        counts: list[int] = []
        arrived = asyncio.Event()
        self._waiting[request] = (counts, arrived)
        try:
            message = {"node": self.node_id, "kind": kind, "args": args, "id": request}
            try:
                receivers = int(await self._redis.publish(self._channel, json.dumps(message)))
            except Exception:
                log.warning("control bus: could not publish the %s command", kind)
                return total
            others = receivers - (1 if self._subscribed else 0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    while len(counts) < others:
                        arrived.clear()
                        await arrived.wait()
            return total + sum(counts)
        finally:
            del self._waiting[request]

    async def _run_local(self, kind: str, args: dict[str, Any]) -> int:
        handler = self._handlers.get(kind)
        if handler is None:
            return 0
        try:
            return await handler(args)
        except Exception:
            log.exception("control bus: the %s command failed", kind)
            return 0

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
                    self._subscribed = True
                    if ready is not None:
                        ready.set()
                    self._failures.recovered("control bus: subscribed to Redis again")
                    await self.deliver_local("*")  # anything may have changed while we were away
                    async for message in pubsub.listen():
                        await self._on_message(message)
            except asyncio.CancelledError:
                for task in self._tasks:
                    task.cancel()
                raise
            except Exception as exc:
                # Retried every second, logged once per interval.
                self._failures.warning("control bus: Redis connection lost: %s", exc)
                self._subscribed = False
                await asyncio.sleep(1)

    async def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        try:
            data = json.loads(message["data"])
            node = data["node"]
        except (ValueError, KeyError, TypeError):
            return
        if node == self.node_id or not isinstance(data, dict):
            return
        kind = data.get("kind")
        if kind is None:
            slug = data.get("slug")
            if isinstance(slug, str):
                await self.deliver_local(slug)
        elif kind == "reply":
            waiting = self._waiting.get(data.get("id", ""))
            if waiting is not None and isinstance(data.get("count"), int):
                waiting[0].append(data["count"])
                waiting[1].set()
        elif isinstance(data.get("args"), dict):
            # Run it off the listener: a command's work (closing sockets) must not hold up the
            # next message, least of all another command's replies.
            task = asyncio.create_task(self._answer(node, str(kind), data))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, node: str, kind: str, data: dict[str, Any]) -> None:
        count = await self._run_local(kind, data["args"])
        reply = {
            "node": self.node_id,
            "kind": "reply",
            "to": node,
            "id": data.get("id"),
            "count": count,
        }
        try:
            await self._redis.publish(self._channel, json.dumps(reply))
        except Exception:
            log.warning("control bus: could not answer the %s command", kind)
