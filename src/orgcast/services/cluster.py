"""Cluster-wide presence and connection counts in Redis.

Layout (``P`` is ``<redis.channel>``):

- ``P:room:<tenant>:<room>:s`` hash ``<node>:<sid>`` → member JSON: every socket in the room;
- ``P:room:<tenant>:<room>:u`` hash user id → socket count: the first socket in / last socket out
  of a user is what triggers a ``presence`` event, decided atomically by the scripts below;
- ``P:rooms:<tenant>`` set of rooms with members; ``P:conns:<tenant>`` hash node → sockets;
- ``P:node:<node>`` heartbeat key with a TTL of ``redis.node_ttl_seconds``, renewed every third of
  it; ``P:nodes`` set of node ids; ``P:nodekeys:<node>`` and ``P:nodeconns:<node>`` index what a
  node wrote, so that another node can remove it once its heartbeat has expired.

A node that dies therefore leaves presence (with ``leave`` events) within about 4/3 of the TTL.
Every node keeps a local mirror of its own sockets: when Redis is unreachable, answers come from
that mirror (this node's view only) instead of failing the event.

Redis restarts and failovers: the client retries a failed command once, on a fresh connection
(a pooled connection to the old server fails its first command), before falling back to the
mirror. A departure that could not be written is queued. While Redis is unreachable the heartbeat
retries every ``DOWN_RETRY`` seconds; once it answers again, the node replays its queued
departures and reconciles what Redis holds for it with its live sockets: entries of sockets that
are gone are removed (with ``leave`` events), live ones missing are written back, connection
counts are rewritten. The same reconciliation runs every ``SWEEP_EVERY`` heartbeats. After its own
outage a node waits one TTL before taking other nodes for dead: their heartbeats may have lapsed
in the same outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..logs import Repeated
from .presence import HIDDEN_ROOM_PREFIX, LocalPresence

log = logging.getLogger(__name__)

LeaveCallback = Callable[[str, str, dict[str, str]], Awaitable[None]]

_JOIN = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('SADD', KEYS[4], ARGV[5])
redis.call('SADD', KEYS[3], ARGV[4])
if redis.call('HINCRBY', KEYS[2], ARGV[3], 1) == 1 then return 1 end
return 0
"""

_LEAVE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) > 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[2])
if redis.call('HLEN', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], ARGV[3]) end
return 1
"""

_ACQUIRE = """
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
if total >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('SADD', KEYS[2], ARGV[3])
return 1
"""

_RELEASE = """
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
"""

REDIS_ERRORS = (RedisError, OSError, TimeoutError)
DOWN_RETRY = 0.5  # seconds between heartbeats while Redis is unreachable
SWEEP_EVERY = 18  # heartbeats between reconciliations (a minute at the default TTL)


def _text(value: bytes | str) -> str:
    """Clients here decode responses; this only satisfies the type of redis-py's results."""
    return value.decode() if isinstance(value, bytes) else value


class RedisPresence:
    """The ``Presence`` protocol for a cluster of nodes sharing one Redis."""

    def __init__(
        self, redis: Redis, prefix: str, node_id: str, ttl: float, on_leave: LeaveCallback
    ) -> None:
        self._redis = redis
        self._p = prefix
        self.node_id = node_id
        self._ttl = ttl
        self._on_leave = on_leave
        self.local = LocalPresence()
        self._join = redis.register_script(_JOIN)
        self._leave = redis.register_script(_LEAVE)
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        self._registered = False
        self.errors = 0  # orgcast_redis_errors_total
        self._failures = Repeated(log, interval=10.0)
        self._down = False
        # (tenant, room, sid) -> member: departures Redis has not heard of yet
        self._departures: dict[tuple[str, str, str], dict[str, str]] = {}
        self._judge_after = 0.0
        self._beats = 0
        self._wake = asyncio.Event()

    # -- keys ---------------------------------------------------------------------------------

    def _room_keys(self, tenant: str, room: str) -> list[str]:
        base = f"{self._p}:room:{tenant}:{room}"
        return [base + ":s", base + ":u", f"{self._p}:rooms:{tenant}"]

    def _field(self, sid: str, node: str | None = None) -> str:
        return f"{node or self.node_id}:{sid}"

    async def ping(self, within: float = 1.0) -> bool:
        """Whether Redis answers a PING within ``within`` seconds (for ``orgcast_redis_up``)."""
        try:
            async with asyncio.timeout(within):
                return bool(await self._redis.ping())
        except REDIS_ERRORS:
            return False

    def _degraded(self, what: str, error: BaseException) -> None:
        self.errors += 1
        self._down = True
        self._failures.warning(
            "Redis unreachable during %s, answering from this node's view: %s: %s",
            what, error.__class__.__name__, error,
        )  # fmt: skip

    # -- presence -----------------------------------------------------------------------------

    async def join(self, tenant: str, room: str, sid: str, member: dict[str, str]) -> bool:
        first_here = await self.local.join(tenant, room, sid, member)
        self._departures.pop((tenant, room, sid), None)
        try:
            return bool(await self._join_remote(tenant, room, sid, member))
        except REDIS_ERRORS as exc:
            self._degraded("join", exc)
            return first_here

    async def _join_remote(self, tenant: str, room: str, sid: str, member: dict[str, str]) -> Any:
        index = json.dumps([tenant, room])
        keys = [*self._room_keys(tenant, room), f"{self._p}:nodekeys:{self.node_id}"]
        args = [self._field(sid), json.dumps(member), member["id"], room, index]
        return await self._join(keys=keys, args=args)

    async def leave(self, tenant: str, room: str, sid: str, user_id: str) -> bool:
        member = self.local.member(tenant, room, user_id) or {"id": user_id, "name": user_id}
        last_here = await self.local.leave(tenant, room, sid, user_id)
        try:
            keys = self._room_keys(tenant, room)
            return bool(await self._leave(keys=keys, args=[self._field(sid), user_id, room]))
        except REDIS_ERRORS as exc:
            self._degraded("leave", exc)
            self._departures[(tenant, room, sid)] = member  # replayed when Redis answers
            return last_here

    async def members(self, tenant: str, room: str) -> list[dict[str, str]]:
        try:
            values = await self._redis.hvals(self._room_keys(tenant, room)[0])
        except REDIS_ERRORS as exc:
            self._degraded("members", exc)
            return await self.local.members(tenant, room)
        unique: dict[str, dict[str, str]] = {}
        for value in values:
            member = json.loads(value)
            unique.setdefault(member["id"], member)
        return list(unique.values())

    async def present(self, tenant: str, room: str, user_id: str) -> bool:
        try:
            return bool(await self._redis.hexists(self._room_keys(tenant, room)[1], user_id))
        except REDIS_ERRORS as exc:
            self._degraded("present", exc)
            return await self.local.present(tenant, room, user_id)

    async def rooms(self, tenant: str) -> dict[str, int]:
        try:
            names = sorted(
                name
                for name in map(_text, await self._redis.smembers(f"{self._p}:rooms:{tenant}"))
                if not name.startswith(HIDDEN_ROOM_PREFIX)
            )
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hlen(self._room_keys(tenant, name)[1])
                counts = await pipe.execute()
        except REDIS_ERRORS as exc:
            self._degraded("rooms", exc)
            return await self.local.rooms(tenant)
        return {name: count for name, count in zip(names, counts, strict=True) if count}

    async def forget_tenant(self, tenant: str) -> None:
        await self.local.forget_tenant(tenant)

    # -- connection slots -----------------------------------------------------------------------

    async def acquire(self, tenant: str, limit: int) -> bool:
        try:
            keys = [f"{self._p}:conns:{tenant}", f"{self._p}:nodeconns:{self.node_id}"]
            admitted = bool(await self._acquire(keys=keys, args=[self.node_id, limit, tenant]))
        except REDIS_ERRORS as exc:
            self._degraded("connect", exc)
            return await self.local.acquire(tenant, limit)
        if admitted:  # mirrored without a limit: Redis already applied the cluster-wide one
            await self.local.acquire(tenant, limit=2**62)
        return admitted

    async def release(self, tenant: str) -> None:
        await self.local.release(tenant)
        try:
            await self._release(keys=[f"{self._p}:conns:{tenant}"], args=[self.node_id])
        except REDIS_ERRORS as exc:
            self._degraded("disconnect", exc)  # the count is rewritten when Redis answers

    async def connections(self, tenant: str) -> int:
        try:
            values = await self._redis.hvals(f"{self._p}:conns:{tenant}")
        except REDIS_ERRORS as exc:
            self._degraded("connections", exc)
            return await self.local.connections(tenant)
        return sum(int(v) for v in values)

    # -- liveness -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Renew this node's heartbeat and sweep dead nodes, every third of the TTL (every
        ``DOWN_RETRY`` seconds while Redis is unreachable); forever."""
        while True:
            try:
                await self.heartbeat()
            except REDIS_ERRORS as exc:
                self._degraded("heartbeat", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DOWN_RETRY if self._down else self._ttl / 3):
                    await self._wake.wait()
            self._wake.clear()

    def link_lost(self) -> None:
        """Another connection to Redis saw it go away: treat it as down and beat at once (the
        reconciliation then runs as soon as Redis answers)."""
        self._down = True
        self._wake.set()

    async def heartbeat(self) -> None:
        key = f"{self._p}:node:{self.node_id}"
        previous = await self._redis.set(key, "1", px=int(self._ttl * 1000), get=True)
        await self._redis.sadd(f"{self._p}:nodes", self.node_id)
        self._beats += 1
        if self._down or (previous is None and self._registered):
            # Back from an outage, or Redis lost our entries (restart, failover, lapsed beat).
            await self.reconcile()
            self._down = False
            self._failures.recovered("Redis answers presence commands again")
            self._judge_after = time.monotonic() + self._ttl
        elif self._beats % SWEEP_EVERY == 0:
            await self.reconcile()
        self._registered = True
        if time.monotonic() < self._judge_after:
            return  # the other nodes' heartbeats may have lapsed in the same outage
        for node in map(_text, await self._redis.smembers(f"{self._p}:nodes")):
            if node != self.node_id and not await self._redis.exists(f"{self._p}:node:{node}"):
                await self.remove_node(node)

    async def reconcile(self) -> None:
        """Make what Redis holds for this node match its live sockets: replay the departures
        queued while Redis was unreachable, remove entries of sockets that are gone, write back
        live ones that are missing, rewrite the connection counts."""
        for (tenant, room, sid), gone in list(self._departures.items()):
            keys = self._room_keys(tenant, room)
            if await self._leave(keys=keys, args=[self._field(sid), gone["id"], room]):
                await self._on_leave(tenant, room, gone)
            self._departures.pop((tenant, room, sid), None)
        live: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
        for tenant, room, sid, member in self.local.entries():
            live.setdefault((tenant, room), {})[self._field(sid)] = member
        prefix = f"{self.node_id}:"
        registered: set[tuple[str, str]] = set()
        for index in await self._redis.smembers(f"{self._p}:nodekeys:{self.node_id}"):
            tenant, room = json.loads(index)
            registered.add((tenant, room))
        removed = added = 0
        for tenant, room in registered | set(live):
            keys = self._room_keys(tenant, room)
            here = live.get((tenant, room), {})
            stored = await self._redis.hgetall(keys[0])
            for raw, value in stored.items():
                field = _text(raw)
                if not field.startswith(prefix) or field in here:
                    continue
                member = json.loads(value)
                sid = field[len(prefix) :]
                if self.local.has_socket(tenant, room, member["id"], sid):
                    continue  # joined since the snapshot
                removed += 1
                if await self._leave(keys=keys, args=[field, member["id"], room]):
                    await self._on_leave(tenant, room, member)
            for field, member in here.items():
                sid = field[len(prefix) :]
                if field not in stored and self.local.has_socket(tenant, room, member["id"], sid):
                    added += 1
                    await self._join_remote(tenant, room, sid, member)
        for tenant, count in self.local.connection_counts().items():
            await self._redis.hset(f"{self._p}:conns:{tenant}", self.node_id, count)
            await self._redis.sadd(f"{self._p}:nodeconns:{self.node_id}", tenant)
        if removed or added:
            log.warning("presence reconciled with Redis: %d stale entries removed, %d written "
                        "back", removed, added)  # fmt: skip

    async def remove_node(self, node: str) -> None:
        """Take a dead node's sockets out of presence and connection counts."""
        prefix = f"{node}:"
        for index in await self._redis.smembers(f"{self._p}:nodekeys:{node}"):
            tenant, room = json.loads(index)
            keys = self._room_keys(tenant, room)
            for raw, value in (await self._redis.hgetall(keys[0])).items():
                field = _text(raw)
                if not field.startswith(prefix):
                    continue
                member = json.loads(value)
                if await self._leave(keys=keys, args=[field, member["id"], room]):
                    await self._on_leave(tenant, room, member)
        for tenant in map(_text, await self._redis.smembers(f"{self._p}:nodeconns:{node}")):
            await self._redis.hdel(f"{self._p}:conns:{tenant}", node)
        await self._redis.delete(f"{self._p}:nodekeys:{node}", f"{self._p}:nodeconns:{node}")
        await self._redis.srem(f"{self._p}:nodes", node)
        log.info("removed dead node %s from presence", node)

    async def close(self) -> None:
        """A clean shutdown: our sockets are gone, so is our heartbeat."""
        try:
            await self._redis.delete(f"{self._p}:node:{self.node_id}")
            await self.remove_node(self.node_id)
        except REDIS_ERRORS:
            pass
