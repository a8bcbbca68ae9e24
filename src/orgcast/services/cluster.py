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
that mirror (this node's view only) instead of failing the event, and when Redis comes back empty
(restarted) the heartbeat notices and writes the mirror back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .presence import LocalPresence

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
        self._warned_at = 0.0
        self.errors = 0

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

    def _degraded(self, what: str) -> None:
        # One warning per ten seconds is enough to say Redis is gone; the mirror answers meanwhile.
        self.errors += 1  # orgcast_redis_errors_total
        now = time.monotonic()
        if now - self._warned_at > 10:
            self._warned_at = now
            log.warning("Redis unreachable during %s: answering from this node's view", what)

    # -- presence -----------------------------------------------------------------------------

    async def join(self, tenant: str, room: str, sid: str, member: dict[str, str]) -> bool:
        first_here = await self.local.join(tenant, room, sid, member)
        try:
            return bool(await self._join_remote(tenant, room, sid, member))
        except REDIS_ERRORS:
            self._degraded("join")
            return first_here

    async def _join_remote(self, tenant: str, room: str, sid: str, member: dict[str, str]) -> Any:
        index = json.dumps([tenant, room])
        keys = [*self._room_keys(tenant, room), f"{self._p}:nodekeys:{self.node_id}"]
        args = [self._field(sid), json.dumps(member), member["id"], room, index]
        return await self._join(keys=keys, args=args)

    async def leave(self, tenant: str, room: str, sid: str, user_id: str) -> bool:
        last_here = await self.local.leave(tenant, room, sid, user_id)
        try:
            keys = self._room_keys(tenant, room)
            return bool(await self._leave(keys=keys, args=[self._field(sid), user_id, room]))
        except REDIS_ERRORS:
            self._degraded("leave")
            return last_here

    async def members(self, tenant: str, room: str) -> list[dict[str, str]]:
        try:
            values = await self._redis.hvals(self._room_keys(tenant, room)[0])
        except REDIS_ERRORS:
            self._degraded("members")
            return await self.local.members(tenant, room)
        unique: dict[str, dict[str, str]] = {}
        for value in values:
            member = json.loads(value)
            unique.setdefault(member["id"], member)
        return list(unique.values())

    async def rooms(self, tenant: str) -> dict[str, int]:
        try:
            names = sorted(map(_text, await self._redis.smembers(f"{self._p}:rooms:{tenant}")))
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hlen(self._room_keys(tenant, name)[1])
                counts = await pipe.execute()
        except REDIS_ERRORS:
            self._degraded("rooms")
            return await self.local.rooms(tenant)
        return {name: count for name, count in zip(names, counts, strict=True) if count}

    async def forget_tenant(self, tenant: str) -> None:
        await self.local.forget_tenant(tenant)

    # -- connection slots -----------------------------------------------------------------------

    async def acquire(self, tenant: str, limit: int) -> bool:
        try:
            keys = [f"{self._p}:conns:{tenant}", f"{self._p}:nodeconns:{self.node_id}"]
            admitted = bool(await self._acquire(keys=keys, args=[self.node_id, limit, tenant]))
        except REDIS_ERRORS:
            self._degraded("connect")
            return await self.local.acquire(tenant, limit)
        if admitted:  # mirrored without a limit: Redis already applied the cluster-wide one
            await self.local.acquire(tenant, limit=2**62)
        return admitted

    async def release(self, tenant: str) -> None:
        await self.local.release(tenant)
        try:
            await self._release(keys=[f"{self._p}:conns:{tenant}"], args=[self.node_id])
        except REDIS_ERRORS:
            self._degraded("disconnect")

    async def connections(self, tenant: str) -> int:
        try:
            values = await self._redis.hvals(f"{self._p}:conns:{tenant}")
        except REDIS_ERRORS:
            return await self.local.connections(tenant)
        return sum(int(v) for v in values)

    # -- liveness -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Renew this node's heartbeat and sweep dead nodes, every third of the TTL; forever."""
        while True:
            try:
                await self.heartbeat()
            except REDIS_ERRORS:
                self._degraded("heartbeat")
            await asyncio.sleep(self._ttl / 3)

    async def heartbeat(self) -> None:
        key = f"{self._p}:node:{self.node_id}"
        previous = await self._redis.set(key, "1", px=int(self._ttl * 1000), get=True)
        await self._redis.sadd(f"{self._p}:nodes", self.node_id)
        if previous is None and self._registered:
            await self._resync()
        self._registered = True
        for node in map(_text, await self._redis.smembers(f"{self._p}:nodes")):
            if node != self.node_id and not await self._redis.exists(f"{self._p}:node:{node}"):
                await self.remove_node(node)

    async def _resync(self) -> None:
        """Redis lost our entries (restarted, or our heartbeat lapsed): write them back."""
        log.warning("Redis lost this node's presence; re-registering it")
        for tenant, room, sid, member in self.local.entries():
            await self._join_remote(tenant, room, sid, member)
        for tenant, count in self.local.connection_counts().items():
            await self._redis.hset(f"{self._p}:conns:{tenant}", self.node_id, count)
            await self._redis.sadd(f"{self._p}:nodeconns:{self.node_id}", tenant)

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
