"""Presence-like webhook events, decided cluster-wide and debounced.

``member.joined``/``member.left``, ``user.online``/``user.offline`` and ``room.occupied``/
``room.vacated`` follow the presence the Hub already keeps (cluster-wide with Redis, this node's
otherwise): a user's first socket in a room, a user's first socket in the tenant (a hidden room
every socket of a subscribed tenant joins), a room's first member. Two rules make them exact:

- What was announced is remembered (in Redis with Redis, here otherwise), and an event is written
  only by whoever changes that memory (``SADD``/``SREM`` answer 1 to one caller only). A user on
  two nodes is online once; a node that sees the user's first socket while another node still
  holds one announces nothing.
- Falling edges wait ``webhooks.presence_grace_seconds``: the user's last socket leaving
  schedules a check (in a Redis sorted set that every node polls, so the check survives the node
  that scheduled it). When it comes due, the user is looked up again; if back (a reconnect, on
  any node), nothing is written, and neither is anything when the reconnect's rising edge finds
  the user still announced. So a reconnect within the grace emits nothing at all, and a real
  leave emits one ``member.left`` (and ``user.offline``, ``room.vacated`` when they apply).

Events are written to the outbox when decided; only tenants with an endpoint subscribed to the
type pay anything. When a tenant's endpoint starts taking ``user.*``, each node adopts the sockets
of that tenant it already holds (at the next refresh of the subscriptions, within the tenant
watcher's interval): their users are announced online then, and offline when they leave. A
decided event whose write fails because the database is unavailable is kept in memory (at most
``PENDING_MAX``, oldest dropped first, with a warning) and written, in order and under its first
event id, once the database answers again; a node that stops or dies first loses what it kept
(logged at shutdown).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..logs import Repeated
from ..store.engine import DB_ERRORS
from ..store.webhooks import new_id
from .hub import Connection, HubListener
from .presence import HIDDEN_ROOM_PREFIX, Presence
from .webhooks import WebhookService

log = logging.getLogger(__name__)

ONLINE_ROOM = HIDDEN_ROOM_PREFIX + "online"
MEMBER_TYPES = ("member.joined", "member.left", "room.occupied", "room.vacated")
USER_TYPES = ("user.online", "user.offline")
Member = dict[str, str]
# Decided events kept while the database is unavailable, at most.
PENDING_MAX = 10_000
# (tenant id, type, data, event id)
Pending = tuple[int, str, dict[str, Any], str]


class Announcements(Protocol):
    """What was announced per tenant, and the falling-edge checks waiting for their time."""

    async def add(self, tenant: str, key: str) -> bool: ...
    async def remove(self, tenant: str, key: str) -> bool: ...
    async def schedule(self, due_ms: int, item: str) -> None: ...
    async def due(self, now_ms: int) -> list[str]: ...


class LocalAnnouncements:
    """One node without Redis: memory is enough (its sockets die with it)."""

    def __init__(self) -> None:
        self._announced: dict[str, set[str]] = {}
        self._pending: list[tuple[int, int, str]] = []
        self._counter = 0

    async def add(self, tenant: str, key: str) -> bool:
        keys = self._announced.setdefault(tenant, set())
        if key in keys:
            return False
        keys.add(key)
        return True

    async def remove(self, tenant: str, key: str) -> bool:
        keys = self._announced.get(tenant)
        if not keys or key not in keys:
            return False
        keys.discard(key)
        if not keys:
            del self._announced[tenant]
        return True

    async def schedule(self, due_ms: int, item: str) -> None:
        self._counter += 1
        heapq.heappush(self._pending, (due_ms, self._counter, item))

    async def due(self, now_ms: int) -> list[str]:
        ready = []
        while self._pending and self._pending[0][0] <= now_ms:
            ready.append(heapq.heappop(self._pending)[2])
        return ready


class RedisAnnouncements:
    """The cluster's memory: ``P:wh:announced:<tenant>`` sets and the ``P:wh:pending`` sorted
    set of checks by due time; a check is claimed by the node whose ``ZREM`` removes it."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._p = f"{prefix}:wh"

    async def add(self, tenant: str, key: str) -> bool:
        return bool(await self._redis.sadd(f"{self._p}:announced:{tenant}", key))

    async def remove(self, tenant: str, key: str) -> bool:
        return bool(await self._redis.srem(f"{self._p}:announced:{tenant}", key))

    async def schedule(self, due_ms: int, item: str) -> None:
        await self._redis.zadd(f"{self._p}:pending", {item: due_ms})

    async def due(self, now_ms: int) -> list[str]:
        key = f"{self._p}:pending"
        items = await self._redis.zrangebyscore(key, 0, now_ms, start=0, num=500)
        claimed = []
        for item in items:
            if await self._redis.zrem(key, item):
                claimed.append(item if isinstance(item, str) else item.decode())
        return claimed


def _now_ms() -> int:
    return int(time.time() * 1000)


class PresenceWebhooks(HubListener):
    """A Hub listener that turns presence transitions into webhook events (see the module)."""

    def __init__(
        self,
        webhooks: WebhookService,
        tenant_id: Callable[[str], Awaitable[int | None]],
        presence: Callable[[], Presence],
        announcements: Announcements,
        grace_seconds: float,
    ) -> None:
        self._webhooks = webhooks
        self._tenant_id = tenant_id
        self._presence = presence
        self._announced = announcements
        self._grace_ms = int(grace_seconds * 1000)
        self._tracked: set[tuple[str, str]] = set()  # (slug, sid) in the hidden online room
        self._stopping = asyncio.Event()
        self._pending: collections.deque[Pending] = collections.deque()
        self._unavailable = Repeated(log, interval=10.0)
        # This node's admitted sockets, and whether one still is (set by the app: access control
        # keeps that index); tenants whose user.* subscription was seen at the last refresh.
        self.connections: Callable[[], list[Connection]] = list
        self.live: Callable[[Connection], bool] = lambda conn: False
        self._user_tenants: frozenset[int] = frozenset()
        self._adopting: asyncio.Task[None] | None = None
        webhooks.on_refreshed(self._subscriptions_changed)

    async def _wants(self, slug: str, types: tuple[str, ...]) -> int | None:
        tenant_id = await self._tenant_id(slug)
        if tenant_id is None or not self._webhooks.wants(tenant_id, types):
            return None
        return tenant_id

    async def _record(self, tenant_id: int, event_type: str, data: dict[str, Any]) -> None:
        event: Pending = (tenant_id, event_type, data, new_id("evt_", _now_ms()))
        if not self._pending:
            try:
                await self._webhooks.record(*event[:3], event_id=event[3])
                return
            except DB_ERRORS:
                pass
        # Behind what is already kept, so events keep their order.
        if len(self._pending) >= PENDING_MAX:
            dropped = self._pending.popleft()
            log.warning("webhooks: %s dropped: %d events kept while the database is unavailable",
                        dropped[1], PENDING_MAX)  # fmt: skip
        self._pending.append(event)
        self._unavailable.warning(
            "webhooks: database unavailable; %d presence events kept to retry", len(self._pending)
        )

    @property
    def kept(self) -> int:
        """Events decided while the database was unavailable, waiting to be written."""
        return len(self._pending)

    async def flush(self) -> int:
        """Write the kept events, oldest first, until one fails; returns how many are left."""
        while self._pending:
            tenant_id, event_type, data, event_id = self._pending[0]
            try:
                await self._webhooks.record(tenant_id, event_type, data, event_id=event_id)
            except DB_ERRORS:
                return len(self._pending)
            self._pending.popleft()
        return 0

    async def _later(self, item: dict[str, Any]) -> None:
        await self._announced.schedule(_now_ms() + self._grace_ms, json.dumps(item))

    # -- sockets that were here before the subscription ----------------------------------------

    def _subscriptions_changed(self) -> None:
        before = self._user_tenants
        wanting = frozenset(t for t in self._webhooks.event_tenants
                            if self._webhooks.wants(t, USER_TYPES))  # fmt: skip
        self._user_tenants = wanting
        if wanting - before and self._adopting is None:
            self._adopting = asyncio.ensure_future(self._adopt())

    async def _adopt(self) -> None:
        """Track the sockets of newly subscribed tenants as if they had just been admitted."""
        try:
            for conn in self.connections():
                if conn.tenant_id not in self._user_tenants:
                    continue
                if (conn.slug, conn.sid) in self._tracked:
                    continue
                await self.on_admitted(conn)
                if not self.live(conn):  # it left while being adopted: its departure was missed
                    await self.on_disconnected(conn)
        except Exception:
            log.exception("webhooks: sockets already connected not adopted for user.*")
        finally:
            self._adopting = None

    # -- hub hooks ------------------------------------------------------------------------------

    async def on_admitted(self, conn: Connection) -> None:
        tenant_id = await self._wants(conn.slug, USER_TYPES)
        if tenant_id is None:
            return
        member = conn.principal.member()
        self._tracked.add((conn.slug, conn.sid))
        try:
            first = await self._presence().join(conn.slug, ONLINE_ROOM, conn.sid, member)
            if first and await self._announced.add(conn.slug, "u|" + member["id"]):
                await self._record(tenant_id, "user.online", {"user": member})
        except Exception:
            log.exception("webhooks: user.online for %s not decided", conn.slug)

    async def on_disconnected(self, conn: Connection) -> None:
        if (conn.slug, conn.sid) not in self._tracked:
            return
        self._tracked.discard((conn.slug, conn.sid))
        member = conn.principal.member()
        try:
            if await self._presence().leave(conn.slug, ONLINE_ROOM, conn.sid, member["id"]):
                await self._later({"kind": "user", "tenant": conn.slug, "member": member})
        except Exception:
            log.exception("webhooks: user.offline for %s not scheduled", conn.slug)

    async def on_member_joined(self, slug: str, room: str, member: Member) -> None:
        tenant_id = await self._wants(slug, MEMBER_TYPES)
        if tenant_id is None or room == ONLINE_ROOM:
            return
        try:
            if await self._announced.add(slug, f"m|{room}|{member['id']}"):
                await self._record(tenant_id, "member.joined", {"room": room, "member": member})
            if await self._announced.add(slug, "r|" + room):
                await self._record(tenant_id, "room.occupied", {"room": room})
        except Exception:
            log.exception("webhooks: member.joined for %s not decided", slug)

    async def on_member_left(self, slug: str, room: str, member: Member) -> None:
        kind = "user" if room == ONLINE_ROOM else "member"
        try:
            await self._later({"kind": kind, "tenant": slug, "room": room, "member": member})
        except Exception:
            log.exception("webhooks: member.left for %s not scheduled", slug)

    # -- the falling edges, after the grace ------------------------------------------------------

    async def run(self) -> None:
        """Decide due checks until cancelled."""
        interval = max(0.05, min(0.5, self._grace_ms / 4000))
        while not self._stopping.is_set():
            try:
                await self.flush()
            except Exception:
                log.exception("webhooks: kept presence events not written")
            try:
                due = await self._announced.due(_now_ms())
            except Exception:
                log.warning("webhooks: presence checks unreadable; retrying")
                due = []
            for item in due:
                try:
                    await self.decide(json.loads(item))
                except asyncio.CancelledError:
                    raise
                except DB_ERRORS:
                    # Not decided (the tenant could not be looked up): look again in a second.
                    with contextlib.suppress(Exception):
                        await self._announced.schedule(_now_ms() + 1000, item)
                    self._unavailable.warning("webhooks: presence check waits for the database")
                except Exception:
                    log.exception("webhooks: presence check %s failed", item)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._stopping.wait()
        if self._pending:
            log.warning("webhooks: %d presence events lost: the database was unavailable until "
                        "this node stopped", len(self._pending))  # fmt: skip

    def stop(self) -> None:
        """Leave the loop after the check under way (not inside its transaction)."""
        self._stopping.set()

    async def decide(self, item: dict[str, Any]) -> None:
        slug, member = item["tenant"], item["member"]
        # Looked up, not only cached: the node deciding may have no socket of this tenant.
        tenant_id = await self._tenant_id(slug)
        if tenant_id is None:
            return
        presence = self._presence()
        if item["kind"] == "user":
            if not await presence.present(slug, ONLINE_ROOM, member["id"]) and (
                await self._announced.remove(slug, "u|" + member["id"])
            ):
                await self._record(tenant_id, "user.offline", {"user": member})
            return
        room = item["room"]
        if await presence.present(slug, room, member["id"]):
            return
        if await self._announced.remove(slug, f"m|{room}|{member['id']}"):
            await self._record(tenant_id, "member.left", {"room": room, "member": member})
        if await presence.members(slug, room):
            return
        if await self._announced.remove(slug, "r|" + room):
            await self._record(tenant_id, "room.vacated", {"room": room})
