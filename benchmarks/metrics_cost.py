"""What metrics and log context cost per message, measured in-process (no server, no noise from
other load): the calls the message path makes, timed against the same calls on ``NullMetrics``.

    .venv/bin/python benchmarks/metrics_cost.py

Per socket event: two ``perf_counter`` reads, ``bind``/``unbind`` of the log context,
``Metrics.event`` (a dict increment and a histogram bisect); per stored message,
``HubMetrics.on_stored`` (a coroutine and an int increment; with metrics off the listener is not
registered at all); per fan-out recipient, one int
increment (``handed += 1`` in ``DirectFanout.emit``, not timed here: ~20 ns).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from orgcast.logs import bind, unbind
from orgcast.metrics import Metrics, NullMetrics
from orgcast.services.hub_metrics import HubMetrics

N = 200_000


def per_event(metrics: Metrics, with_context: bool) -> float:
    slugs = [f"t{i}" for i in range(100)]
    start = time.perf_counter()
    for i in range(N):
        t0 = time.perf_counter()
        token = (
            bind(tenant=slugs[i % 100], sid="s", user="u", event="message")
            if with_context
            else None
        )
        seconds = time.perf_counter() - t0
        metrics.event(slugs[i % 100], "message", "ok", seconds)
        if token is not None:
            unbind(token)
    return (time.perf_counter() - start) / N * 1e9


async def per_stored(metrics: Metrics) -> float:
    listener = HubMetrics(metrics)
    rows: tuple[Any, ...] = (object(),)
    slugs = [f"t{i}" for i in range(100)]
    start = time.perf_counter()
    for i in range(N):
        await listener.on_stored(slugs[i % 100], rows)
    return (time.perf_counter() - start) / N * 1e9


def main() -> None:
    on, off = Metrics(), NullMetrics()
    per_event(on, True)  # warm up
    # The best of five: other load on the machine only ever makes a run slower.
    results = {
        "event, metrics on, log context": min(per_event(on, True) for _ in range(5)),
        "event, metrics off, log context": min(per_event(off, True) for _ in range(5)),
        "event, metrics off, no context": min(per_event(off, False) for _ in range(5)),
        "stored message, metrics on": min(asyncio.run(per_stored(on)) for _ in range(5)),
        "stored message, listener absent": 0.0,
    }
    for name, ns in results.items():
        print(f"{name:36s} {ns:8.0f} ns")


if __name__ == "__main__":
    main()
