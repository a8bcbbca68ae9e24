"""Giving the C heap back to the operating system after a burst of connects or disconnects.

What a burst allocates in passing (handshakes, join acks, presence events, frames) is freed
once it is over, but glibc keeps freed memory in its heap for reuse, so the node's RSS stays
where the burst left it. ``malloc_trim(0)`` hands the free pages back. ``HeapTrimmer`` calls it
once the node has gone quiet after its socket count moved by a burst, at most once every
``MIN_INTERVAL_SECONDS``: with 2,000 official clients connecting at once it took 1.5-5 ms and
gave back ~3 KiB per socket (benchmarks/RESULTS.md, "Round 5").

Python's own allocator (pymalloc) is not reached: it returns an arena only once every block in
it is free, and a burst leaves arenas that hold a few long-lived objects among freed ones.
Where the C library has no ``malloc_trim`` (musl, macOS) the trimmer is never started.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# How often the node's socket count and CPU use are read.
CHECK_SECONDS = 0.25
# Quiet: in the last check the process used at most this share of one CPU...
QUIET_CPU_SHARE = 0.25
# ...and its socket count moved by at most this many sockets.
QUIET_SOCKETS = 10
# Trims at most this often (a trim walks the heap).
MIN_INTERVAL_SECONDS = 5.0

Trim = Callable[[int], int]


def find_malloc_trim() -> Trim | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


class HeapTrimmer:
    """Calls ``trim(0)`` when the socket count (``sockets()``) has moved by at least
    ``after_sockets`` since the last trim (or start) and the node is quiet: in the last check
    it used at most ``QUIET_CPU_SHARE`` of a CPU and its socket count moved by at most
    ``QUIET_SOCKETS``. A steady node never trims; one burst costs one trim."""

    def __init__(
        self,
        sockets: Callable[[], int],
        trim: Trim,
        after_sockets: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self.sockets = sockets
        self.trim = trim
        self.after_sockets = after_sockets
        self.clock = clock
        self.cpu = cpu
        self.trims = 0
        self.last_trim_ms = 0.0
        self._baseline = sockets()  # the socket count at the last trim
        self._last_count = self._baseline
        self._last_time = clock()
        self._last_cpu = cpu()
        self._last_trim = float("-inf")

    def check(self) -> bool:
        """One check: trims if a burst is over; returns whether it did."""
        count, now, cpu = self.sockets(), self.clock(), self.cpu()
        elapsed = now - self._last_time
        quiet = (
            elapsed > 0
            and (cpu - self._last_cpu) <= QUIET_CPU_SHARE * elapsed
            and abs(count - self._last_count) <= QUIET_SOCKETS
        )
        self._last_count, self._last_time, self._last_cpu = count, now, cpu
        if (
            not quiet
            or abs(count - self._baseline) < self.after_sockets
            or now - self._last_trim < MIN_INTERVAL_SECONDS
        ):
            return False
        start = time.perf_counter()
        self.trim(0)
        self.last_trim_ms = (time.perf_counter() - start) * 1000
        self.trims += 1
        self._baseline, self._last_trim = count, now
        # The trim's own CPU is not the node's load.
        self._last_time, self._last_cpu = self.clock(), self.cpu()
        log.debug(
            "heap trimmed at %d sockets in %.1f ms", count, self.last_trim_ms,
            extra={"sockets": count, "trim_ms": round(self.last_trim_ms, 3)},
        )  # fmt: skip
        return True

    async def run(self) -> None:
        """Until cancelled: check every ``CHECK_SECONDS``."""
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            try:
                self.check()
            except Exception:
                log.exception("heap trim check failed")
