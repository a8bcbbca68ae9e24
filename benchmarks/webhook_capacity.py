"""How many webhook events one node's delivery worker delivers per second, apart from any chat
load: a node with one endpoint on a fast local receiver, and ``--events`` outbox rows written
straight into its database at once (as the message path writes them: ``message.created``, the
broadcast shape). The node is idle otherwise, so this is the worker's ceiling on one core.

    python benchmarks/webhook_capacity.py --events 20000 --repeats 3 \\
        --src main=/tmp/orgcast-main/src --src branch=src

Each ``--src LABEL=DIR`` is an orgcast source tree put first on ``PYTHONPATH`` (so two versions
compare in one invocation, alternating, each on its own throwaway database); without any, the
installed orgcast runs once as ``orgcast``. The server is pinned to the first CPU, the receiver
to the second (as in ``run.py``). Per run: events/s from the first event's arrival to the last
one's, the node's and PostgreSQL's CPU over that time, POSTs (events per batch); then the median
of each per label and its ratio to the first label.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402  (the benchmark runner's helpers: servers, receiver, PostgreSQL)

TIMEOUT_S = 300.0
TICKS = os.sysconf("SC_CLK_TCK")


async def write_events(dsn: str, count: int) -> int:
    """``count`` outbox rows for the benchmark tenant's endpoint, created now; returns now."""
    now = int(time.time() * 1000)
    connection = await asyncpg.connect(dsn)
    try:
        tenant_id, endpoint_id = await connection.fetchrow(
            "SELECT tenant_id, id FROM webhook_endpoints LIMIT 1"
        )
        await connection.execute(
            """
            INSERT INTO webhook_events (tenant_id, endpoint_id, event_id, type, created_at, data)
            SELECT $1, $2, 'evt_' || md5(i::text), 'message.created', $3::bigint,
                   json_build_object(
                       'id', md5(i::text), 'room', 'room-' || (i % 500), 'seq', i, 'ts', $3::bigint,
                       'sender', json_build_object('id', 'u' || (i % 1000),
                                                   'name', 'u' || (i % 1000)),
                       'body', json_build_object('text', 'hello ' || i))::text
            FROM generate_series(1, $4::int) AS i
            """,
            tenant_id,
            endpoint_id,
            now,
            count,
        )
    finally:
        await connection.close()
    return now


async def undelivered(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        outbox = await connection.fetchval("SELECT count(*) FROM webhook_events")
        pending = await connection.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
        )
        return int(outbox) + int(pending)
    finally:
        await connection.close()


def one_run(
    label: str, src: str | None, events: int, cpu: int | None, profile: str | None = None
) -> dict[str, Any]:
    db = f"orgcast_whcap_{secrets.token_hex(4)}"
    asyncio.run(run.pg_exec(run.PG_ADMIN, (f'CREATE DATABASE "{db}"', ())))
    data_dir = tempfile.mkdtemp(prefix="orgcast-whcap-")
    overrides = {"ORGCAST_BENCH_WEBHOOK": "1"}
    if src:
        overrides["PYTHONPATH"] = str(Path(src).resolve())
    target = None
    try:
        url = run.pg_dsn(db).replace("postgresql://", "postgresql+asyncpg://")
        target = run.start_orgcast(cpu, url, data_dir, label, overrides)
        receiver = target.extra["receiver"]
        time.sleep(1.5)  # the worker's endpoint refresh sees the new endpoint
        ticks = run.cpu_ticks(target.pid), run.pg_backend_ticks(db)
        started = time.monotonic()
        created = asyncio.run(write_events(run.pg_dsn(db), events))
        sampler = None
        if profile:
            # Collapsed stacks of the node while it drains (py-spy, if installed).
            cmd = ["py-spy", "record", "-p", str(target.pid), "-f", "raw", "-r", "200",
                   "-o", f"{profile}-{label}.txt"]  # fmt: skip
            sampler = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while asyncio.run(undelivered(run.pg_dsn(db))) > 0:
            if time.monotonic() - started > TIMEOUT_S:
                raise RuntimeError(f"{label}: not delivered within {TIMEOUT_S:g} s")
            time.sleep(0.25)
        drained = time.monotonic() - started
        if sampler is not None:
            sampler.send_signal(signal.SIGINT)
            sampler.wait(timeout=30)
        server_s = (run.cpu_ticks(target.pid) - ticks[0]) / TICKS
        pg_s = (run.pg_backend_ticks(db) - ticks[1]) / TICKS
        samples = run.http("GET", receiver[1] + "/samples")
        arrivals = [created + lag for lag in samples["lag_ms"]]
        span_s = max(0.001, (max(arrivals) - min(arrivals)) / 1000)
        return {
            "label": label,
            "events": len(arrivals),
            "requests": samples["requests"],
            "events_per_s": round(len(arrivals) / span_s),
            "first_ms": min(samples["lag_ms"]),
            "last_ms": max(samples["lag_ms"]),
            "drained_s": round(drained, 2),
            "server_cpu_s": round(server_s, 2),
            "postgres_cpu_s": round(pg_s, 2),
            "events_per_server_cpu_s": round(len(arrivals) / server_s) if server_s else None,
        }
    finally:
        if target is not None:
            run.stop(target.proc)
            run.stop(target.extra["receiver"][0])
        run.drop_database(db)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--src", action="append", default=[], metavar="LABEL=DIR")
    parser.add_argument("--profile", metavar="PREFIX", help="py-spy stacks to PREFIX-LABEL.txt")
    args = parser.parse_args()
    sources: list[tuple[str, str | None]] = [
        (text.split("=", 1)[0], text.split("=", 1)[1]) for text in args.src
    ] or [("orgcast", None)]
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, other_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    run.RECEIVER_CPU[0] = other_cpu
    print(f"load {os.getloadavg()[0]:.2f}, {time.strftime('%H:%M:%S', time.gmtime())} UTC",
          flush=True)  # fmt: skip
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in sources}
    for _ in range(args.repeats):
        for label, src in sources:
            result = one_run(label, src, args.events, server_cpu, args.profile)
            results[label].append(result)
            print(result, flush=True)
    print(f"load {os.getloadavg()[0]:.2f}, {time.strftime('%H:%M:%S', time.gmtime())} UTC")
    first = sources[0][0]
    keys = ("events_per_s", "events_per_server_cpu_s", "server_cpu_s", "postgres_cpu_s",
            "requests")  # fmt: skip
    medians = {
        label: {key: statistics.median(r[key] or 0 for r in runs) for key in keys}
        for label, runs in results.items()
    }
    print("| label | " + " | ".join(keys) + " | events/s vs " + first + " |")
    print("|---|" + "---:|" * (len(keys) + 1))
    for label, values in medians.items():
        base = medians[first]["events_per_s"] or 1
        cells = " | ".join(f"{values[key]:,.2f}".rstrip("0").rstrip(".") for key in keys)
        print(f"| {label} | {cells} | {values['events_per_s'] / base:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
