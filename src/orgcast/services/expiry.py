"""Token expiry on live sockets: one heap and one task per node, whatever the number of sockets.

Each admitted socket is scheduled with its token's ``exp``. ``refresh_window`` seconds before it
(halfway through the token's remaining life when that is shorter than the window) the scheduler
calls ``on_expiring(key, exp)`` (the transport emits ``token_expiring {exp}``); at
``exp`` it calls ``on_expired(key)`` (the transport sends ``closing {code: "auth_expired"}`` and
disconnects). ``schedule`` again (a refresh) or ``cancel`` (a disconnect) supersedes what was
pending for that key.

Why a heap and not a timer per socket: a task (or ``call_at`` handle) per socket costs memory and
start-up time on every connect, for an event that fires once an hour. Here a socket costs one dict
entry and at most two heap tuples; superseded entries are not removed from the heap (that would be
O(n)) but skipped when they come up, because their generation no longer matches. The heap is
rebuilt when stale entries outnumber live ones, so a refresh storm cannot grow it without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

WARN, EXPIRE = 0, 1
FIRE_CONCURRENCY = 256  # callbacks run together per pass; a mass expiry does not serialise


class ExpiryScheduler(Generic[K]):
    """Warns, then expires, each key at its deadline (unix seconds)."""

    def __init__(
        self,
        refresh_window: float,
        on_expiring: Callable[[K, int], Awaitable[None]],
        on_expired: Callable[[K], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.refresh_window = refresh_window
        self._on_expiring = on_expiring
        self._on_expired = on_expired
        self._clock = clock
        # (when, generation, phase, key, exp); generation also breaks ties, so keys never compare.
        self._heap: list[tuple[float, int, int, K, int]] = []
        self._live: dict[K, int] = {}  # key -> generation of its pending entries
        self._generations = itertools.count(1)
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._live)

    def schedule(self, key: K, exp: int) -> None:
        """Warn ``key`` before ``exp`` and expire it at ``exp``; replaces what was pending."""
        generation = next(self._generations)
        self._live[key] = generation
        now = self._clock()
        if self.refresh_window > 0 and exp > now:
            warn_at = exp - self.refresh_window
            if warn_at <= now:
                # A token shorter than the window is warned halfway through its life, not at
                # once: a client that answers with another such token is not warned again
                # immediately, in a loop.
                warn_at = now + (exp - now) / 2
            self._push((warn_at, generation, WARN, key, exp))
        else:
            self._push((exp, generation, EXPIRE, key, exp))

    def cancel(self, key: K) -> None:
        """Forget ``key`` (its socket is gone); its heap entries are skipped when they come up."""
        self._live.pop(key, None)
        if len(self._heap) > 64 and len(self._heap) > 4 * len(self._live) + 64:
            self._compact()

    def pending(self, key: K) -> bool:
        return key in self._live

    def _push(self, entry: tuple[float, int, int, K, int]) -> None:
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:  # a new earliest deadline: the sleeping task must re-arm
            self._wake.set()

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if self._live.get(e[3]) == e[1]]
        heapq.heapify(self._heap)

    def _due(self, now: float) -> list[tuple[int, K, int]]:
        """Pop every live entry due at ``now``; a warning also queues its expiry."""
        due: list[tuple[int, K, int]] = []
        heap = self._heap
        while heap and heap[0][0] <= now and len(due) < FIRE_CONCURRENCY:
            _, generation, phase, key, exp = heapq.heappop(heap)
            if self._live.get(key) != generation:
                continue  # superseded by a refresh, or the socket is gone
            if phase == WARN:
                heapq.heappush(heap, (exp, generation, EXPIRE, key, exp))
            else:
                del self._live[key]
            due.append((phase, key, exp))
        return due

    async def run(self) -> None:
        """Fire due entries until cancelled; sleeps until the earliest deadline or a new one."""
        while True:
            self._wake.clear()
            due = self._due(self._clock())
            if due:
                await asyncio.gather(*(self._fire(*item) for item in due))
                continue
            delay = self._heap[0][0] - self._clock() if self._heap else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _fire(self, phase: int, key: K, exp: int) -> None:
        try:
            if phase == WARN:
                await self._on_expiring(key, exp)
            else:
                await self._on_expired(key)
        except Exception:
            log.exception("token expiry callback failed for %r", key)
