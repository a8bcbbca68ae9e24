"""Rate limiting: token buckets per connection, per user of a tenant (cluster-wide with Redis)
and per connecting user or address; and per tenant, ``api_requests_per_second`` for its REST
calls (cluster-wide with Redis)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..errors import ConnectionRate, RateLimited
from .cluster import REDIS_ERRORS

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TokenBucket:
    """Allows bursts of up to one second's worth of events, then the steady rate."""

    tokens: float = -1.0
    updated: float = field(default_factory=time.monotonic)

    def take(
        self,
        rate: float,
        *,
        what: str = "events per second on this connection",
        error: type[RateLimited] = RateLimited,
    ) -> None:
        """Spend one token at ``rate`` per second, or raise ``error`` with the wait."""
        capacity = max(1.0, rate)
        now = time.monotonic()
        if self.tokens < 0:
            self.tokens = capacity
        else:
            self.tokens = min(capacity, self.tokens + (now - self.updated) * rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return
        wait_ms = math.ceil((1.0 - self.tokens) / rate * 1000)
        raise error(f"more than {rate:g} {what}", retry_after_ms=wait_ms)


Key = tuple[int, str]


class UserRates:
    """``messages_per_second`` per user of a tenant, whatever number of sockets or reconnects
    the user spreads them over.

    The check is local and constant-time: one token bucket per (tenant, user) on this node. With
    Redis, the events each node admits are also added to a per-second window shared by the
    cluster (``INCRBY`` + ``PEXPIRE`` in one pipeline per flush, off the ack path); a user whose
    cluster-wide count for the current second has reached twice the rate (the most one bucket
    admits within a second: a full burst plus a second's refill, so a user on one node is never
    refused by it before its own bucket refuses) is refused on every node until the next second.
    Without Redis, or while it is down, the node's own buckets still hold.
    """

    FLUSH_INTERVAL = 0.05
    IDLE_SECONDS = 5.0

    def __init__(self, redis: Any = None, prefix: str = "orgcast") -> None:
        self._redis = redis
        self._prefix = prefix
        self._buckets: dict[Key, TokenBucket] = {}
        self._pending: Counter[Key] = Counter()
        self._cluster: dict[Key, tuple[int, int]] = {}
        self.redis_errors = 0

    def take(self, tenant_id: int, user: str, rate: float) -> None:
        """Spend one event of ``user`` at ``rate`` per second, or raise ``RateLimited``."""
        key = (tenant_id, user)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket()
        if self._redis is not None:
            now = time.time()
            window = int(now)
            seen = self._cluster.get(key)
            if seen is not None and seen[0] == window and seen[1] >= 2 * rate:
                wait_ms = max(1, math.ceil((window + 1 - now) * 1000))
                raise RateLimited(
                    f"more than {rate:g} events per second from this user", retry_after_ms=wait_ms
                )
        bucket.take(rate, what="events per second from this user")
        if self._redis is not None:
            self._pending[key] += 1

    async def run(self) -> None:
        """Flush the counts to Redis every ``FLUSH_INTERVAL``; forget idle users."""
        last_prune = time.monotonic()
        while True:
            await asyncio.sleep(self.FLUSH_INTERVAL)
            if self._pending:
                await self.flush()
            now = time.monotonic()
            if now - last_prune > self.IDLE_SECONDS:
                last_prune = now
                self._prune(now)

    async def flush(self) -> None:
        pending, self._pending = self._pending, Counter()
        window = int(time.time())
        keys = list(pending)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for tenant_id, user in keys:
                    name = f"{self._prefix}:rate:{tenant_id}:{window}:{user}"
                    pipe.incrby(name, pending[(tenant_id, user)])
                    pipe.pexpire(name, 2000)
                results = await pipe.execute()
        except (RedisError, OSError):
            self.redis_errors += 1  # local buckets keep holding; the next flush tries again
            return
        for index, key in enumerate(keys):
            self._cluster[key] = (window, int(results[2 * index]))

    def _prune(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            if now - bucket.updated > self.IDLE_SECONDS:
                del self._buckets[key]
                self._cluster.pop(key, None)


class ConnectRates:
    """Connects per second per (tenant, user) and per client address, on this node: a reconnect
    loop is refused with ``connection_rate`` before it costs a database or Redis round trip."""

    IDLE_SECONDS = 10.0

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._last_prune = time.monotonic()

    def take(self, scope: str, who: str, rate: float) -> None:
        key = (scope, who)
        bucket = self._buckets.get(key)
        if bucket is None:
            now = time.monotonic()
            if now - self._last_prune > self.IDLE_SECONDS:
                self._last_prune = now
                for old, held in list(self._buckets.items()):
                    if now - held.updated > self.IDLE_SECONDS:
                        del self._buckets[old]
            bucket = self._buckets[key] = TokenBucket()
        bucket.take(rate, what=f"connects per second from this {scope}", error=ConnectionRate)


# GCRA (the token bucket above, as one timestamp): the key holds the "theoretical arrival time" in
# ms; a call is allowed while it lies at most ``tolerance`` ahead of now. Redis's own clock, so
# nodes with skewed clocks still share one bucket. Answers 0, or how many ms to wait.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat - now > tolerance then return math.ceil(tat - now - tolerance) end
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil(tat + interval - now) + 1000)
return 0
"""


class ApiRateLimiter:
    """``limits.api_requests_per_second`` for a tenant's REST calls: the same bucket as
    ``TokenBucket`` (bursts up to one second's worth, then the steady rate), kept in Redis when
    there is one, so that every node counts against one budget. When Redis does not answer, each
    node falls back to a bucket of its own (the limit then holds per node) rather than failing
    the request."""

    def __init__(self, redis: Redis | None = None, prefix: str = "orgcast") -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_GCRA) if redis is not None else None
        self._local: dict[str, TokenBucket] = {}
        self._warned_at = 0.0

    async def take(self, slug: str, rate: float) -> None:
        """Count one call of ``slug``'s; raises ``RateLimited`` (with the wait) beyond ``rate``."""
        if self._script is not None:
            interval = 1000.0 / rate
            tolerance = (max(1.0, rate) - 1.0) * interval
            try:
                wait_ms = int(
                    await self._script(
                        keys=[f"{self._prefix}:api:{slug}"], args=[interval, tolerance]
                    )
                )
            except REDIS_ERRORS:
                self._degraded()
            else:
                if wait_ms > 0:
                    raise _api_limited(rate, wait_ms)
                return
        bucket = self._local.setdefault(slug, TokenBucket())
        try:
            bucket.take(rate)
        except RateLimited as exc:
            raise _api_limited(rate, exc.retry_after_ms or 1000) from None

    def _degraded(self) -> None:
        now = time.monotonic()
        if now - self._warned_at > 10:
            self._warned_at = now
            log.warning("Redis unreachable: API rate limits are counted per node")


def _api_limited(rate: float, wait_ms: int) -> RateLimited:
    return RateLimited(
        f"more than {rate:g} API requests per second for this tenant", retry_after_ms=wait_ms
    )
