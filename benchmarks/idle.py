"""Idle sockets on one node: RSS per socket, idle CPU with default heartbeats, connect rate.

    python benchmarks/idle.py [--sizes 1000,5000,19500] [--targets orgcast,reference,node]
                              [--idle-s 60] [--trace] [--upgrade]

Each size runs against a fresh server process: a warm-up of 50 sockets is connected and closed,
then RSS is read, ``N`` raw websocket clients (``rawclients.py``, in processes of their own on the
other CPU) connect, join one of 100 rooms and stay idle; RSS is read again, and the server's CPU
over ``--idle-s`` seconds of idleness gives the idle CPU share (one ping round per ping interval).
The generator's own CPU is reported next to every figure. With ``--upgrade`` every client opens
its session on long-polling and upgrades it to a websocket (as browsers and the official client
do by default) instead of opening the websocket directly.

``--trace`` (orgcast only) runs the server under tracemalloc and prints the allocation sites that
grew with the sockets, per socket (by file:line of the innermost frame outside the standard
library's asyncio/tracemalloc, and by the top frame), to find where the bytes go. Tracing makes the
server slower and its heap bigger: its figures are for attribution, not for the RSS table.

The file descriptor limit of this machine (20,000 per process, hard) caps one server at about
19,500 sockets; that is the largest size here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run

PER_PROCESS = 10_000


def clients_cmd(path: Path, cpu: int | None) -> list[str]:
    return run.pinned([sys.executable, str(run.HERE / "rawclients.py"), str(path)], cpu)


@contextlib.contextmanager
def holding(
    target: run.Target, n: int, cpu: int | None, tmp: Path, upgrade: bool = False
) -> Iterator[dict[str, Any]]:
    """Connect ``n`` idle joined sockets (in processes of at most 10,000); yields the connect
    figures; on exit closes them and adds the generator's CPU over the hold."""
    tokens = target.tokens(n)
    procs = []
    info: dict[str, Any] = {"clients": n}
    t0 = time.monotonic()
    for start in range(0, n, PER_PROCESS):
        chunk = tokens[start : start + PER_PROCESS]
        path = tmp / f"clients-{start}-{time.monotonic_ns()}.json"
        path.write_text(json.dumps({
            "url": target.url, "namespace": target.namespace, "tokens": chunk,
            "room": "idle", "rooms": 100, "concurrency": 50, "upgrade": upgrade,
        }))  # fmt: skip
        procs.append(subprocess.Popen(clients_cmd(path, cpu), stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE))  # fmt: skip
    outs = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            try:
                outs.append(json.loads(line))
            except ValueError:
                raise RuntimeError(f"clients: {line.strip() or 'no output'}") from None
        wall = time.monotonic() - t0
        held = sum(o["holding"] for o in outs)
        info.update(held=held, failed=sum(sum(o.get("failed", {}).values()) for o in outs))
        info.update(connect_wall_s=round(wall, 2), connects_per_s=round(held / wall, 1),
                    gen_connect_cpu_s=round(sum(o["cpu_s"] for o in outs), 2))  # fmt: skip
        yield info
    finally:
        hold_cpu = 0.0
        for proc in procs:
            assert proc.stdin is not None and proc.stdout is not None
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(b"go\n")
                proc.stdin.close()
            line = proc.stdout.readline().decode()
            with contextlib.suppress(ValueError):
                hold_cpu += json.loads(line)["hold_cpu_s"]
            proc.wait(timeout=60)
        info["gen_hold_cpu_s"] = round(hold_cpu, 2)


def snapshot(target: run.Target, directory: Path, n: int) -> tracemalloc.Snapshot:
    path = directory / f"snapshot-{n}.pickle"
    (directory / f"request-{n}").touch()
    for _ in range(900):
        if path.exists():
            return tracemalloc.Snapshot.load(str(path))
        time.sleep(0.2)
    raise RuntimeError("no tracemalloc snapshot")


def site(frames: Any) -> str:
    skip = ("asyncio/", "tracemalloc", "<frozen", "typing.py", "functools.py", "weakref.py")
    for frame in reversed(frames):  # most recent first
        if not any(s in frame.filename for s in skip):
            return f"{short(frame.filename)}:{frame.lineno}"
    return f"{short(frames[0].filename)}:{frames[0].lineno}"


def short(filename: str) -> str:
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def attribute(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int) -> list[str]:
    lines = []
    labels = (("lineno", "innermost frame"), ("traceback", "innermost frame outside asyncio"))
    for key, label in labels:
        diff = after.compare_to(before, key)
        if key == "traceback":
            grouped: dict[str, list[int]] = {}
            for stat in diff:
                where = site(stat.traceback)
                acc = grouped.setdefault(where, [0, 0])
                acc[0] += stat.size_diff
                acc[1] += stat.count_diff
            rows = sorted(grouped.items(), key=lambda kv: -kv[1][0])
        else:
            rows = [(f"{short(s.traceback[0].filename)}:{s.traceback[0].lineno}",
                     [s.size_diff, s.count_diff]) for s in diff]  # fmt: skip
            rows.sort(key=lambda kv: -kv[1][0])
        total = sum(v[0] for _, v in rows)
        lines.append(f"\n{label}: {total / n:,.0f} B per socket traced in all")
        for where, (size, count) in rows[:25]:
            lines.append(f"  {size / n:8,.0f} B  {count / n:6.1f} blocks  {where}")
    return lines


def start(
    name: str,
    cpu: int | None,
    db: str,
    data_dir: str,
    trace: Path | None,
    variants: dict[str, dict[str, str]],
) -> run.Target:
    if name == "reference":
        return run.start_reference(cpu)
    if name == "node":
        return run.start_node_reference(cpu)
    overrides = dict(variants.get(name, {}))
    if trace:
        overrides["ORGCAST_BENCH_TRACEMALLOC"] = str(trace)
    url = run.pg_dsn(db).replace("postgresql://", "postgresql+asyncpg://")
    # Under tracemalloc, start-up (imports, migrations) is several times slower.
    return run.start_orgcast(cpu, url, data_dir, overrides=overrides, ready_s=600 if trace else 60)


def measure(name: str, n: int, args: argparse.Namespace, cpus: tuple[Any, Any]) -> dict[str, Any]:
    """One fresh server of ``name`` (orgcast, a variant of it, or a reference) holding ``n``."""
    server_cpu, gen_cpu = cpus
    orgcast = name == "orgcast" or name in args.variants
    db = f"orgcast_idle_{secrets.token_hex(4)}"
    data_dir = tempfile.mkdtemp(prefix="orgcast-idle-")
    tmp = Path(tempfile.mkdtemp(prefix="orgcast-idle-gen-"))
    trace = tmp if args.trace and orgcast else None
    if orgcast:
        asyncio.run(run.pg_exec(run.PG_ADMIN, (f'CREATE DATABASE "{db}"', ())))
    out: dict[str, Any] = {"target": name, "sockets": n, "upgrade": args.upgrade,
                           "load_start": os.getloadavg()[0]}  # fmt: skip
    target = None
    try:
        target = start(name, server_cpu, db, data_dir, trace, args.variants)
        with holding(target, 50, gen_cpu, tmp, args.upgrade):
            pass
        time.sleep(1.0)
        first = snapshot(target, tmp, 1) if trace else None
        out["rss_before_kb"] = run.rss_kb(target.pid)
        ticks0 = run.cpu_ticks(target.pid)
        with holding(target, n, gen_cpu, tmp, args.upgrade) as info:
            connect_cpu = (run.cpu_ticks(target.pid) - ticks0) / run.CLK_TCK
            out["server_connect_cpu_s"] = round(connect_cpu, 2)
            time.sleep(2.0)
            out["rss_connected_kb"] = run.rss_kb(target.pid)
            held = max(1, info["held"])  # per socket actually connected
            out["kib_per_socket"] = round(
                (out["rss_connected_kb"] - out["rss_before_kb"]) / held, 2
            )
            if trace:
                second = snapshot(target, tmp, 2)
                assert first is not None
                out["trace"] = attribute(first, second, n)
            elif args.idle_s > 0:
                ticks1, t1 = run.cpu_ticks(target.pid), time.monotonic()
                time.sleep(args.idle_s)
                idle = (run.cpu_ticks(target.pid) - ticks1) / run.CLK_TCK
                out["idle_cpu_pct"] = round(100 * idle / (time.monotonic() - t1), 2)
        out.update(info)
        out["load_end"] = os.getloadavg()[0]
    finally:
        if target is not None:
            run.stop(target.proc)
        if orgcast:
            run.drop_database(db)
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


NAMES = {"orgcast": "orgcast", "reference": "python-socketio", "node": "node socket.io"}


def table(results: list[dict[str, Any]]) -> str:
    """One row per size and server; orgcast's KiB per socket against each reference."""
    head = ("| N | server | KiB/socket | orgcast / this | idle CPU % of a core | connects/s |"
            " server CPU ms per connect | generator CPU s (connect / idle) | load |")  # fmt: skip
    lines = [head, "|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for r in results:
        same = [o for o in results if o["sockets"] == r["sockets"]]
        org = next((o for o in same if o["target"] == "orgcast"), None)
        kib = r.get("kib_per_socket")
        versus = f"{org['kib_per_socket'] / kib:.2f}" if org and kib else "-"
        per_connect = r.get("server_connect_cpu_s", 0) / max(1, r.get("held", 0)) * 1000
        lines.append(
            f"| {r['sockets']:,} | {NAMES.get(r['target'], r['target'])} | {kib} | {versus} |"
            f" {r.get('idle_cpu_pct', '-')} | {r.get('connects_per_s', '-')} | {per_connect:.2f} |"
            f" {r.get('gen_connect_cpu_s', '-')} / {r.get('gen_hold_cpu_s', '-')} |"
            f" {r['load_start']:.1f} -> {r.get('load_end', 0):.1f} |"
        )
    return "\n".join(lines)


def medians(results: list[dict[str, Any]]) -> str:
    """With ``--repeats``: the median of each size and server, and orgcast's ratio to it."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["sockets"], r["target"]), []).append(r)
    lines = ["| N | server | runs | KiB/socket, median | orgcast / this | idle CPU %, median |",
             "|---:|---|---:|---:|---:|---:|"]  # fmt: skip

    def median(rows: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return statistics.median(values) if values else None

    for (n, name), rows in groups.items():
        kib = median(rows, "kib_per_socket")
        org = median(groups.get((n, "orgcast"), []), "kib_per_socket")
        versus = f"{org / kib:.2f}" if org and kib else "-"
        cpu = median(rows, "idle_cpu_pct")
        lines.append(f"| {n:,} | {NAMES.get(name, name)} | {len(rows)} | {kib} | {versus} |"
                     f" {cpu if cpu is not None else '-'} |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,19500")
    parser.add_argument("--targets", default="orgcast,reference,node")
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--upgrade", action="store_true",
                        help="clients start on long-polling, then upgrade")  # fmt: skip
    parser.add_argument("--variant", action="append", default=[],
                        help="LABEL:ENV=VALUE[,ENV=VALUE]: one more orgcast, run after each "
                             "target at every size (as in run.py)")  # fmt: skip
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run every size and target this many times, alternating",
    )
    args = parser.parse_args()
    args.variants = {}
    for spec in args.variant:
        label, _, settings = spec.partition(":")
        args.variants[label] = dict(kv.split("=", 1) for kv in settings.split(",") if kv)
    cpus = sorted(os.sched_getaffinity(0))
    pins = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    results = []
    names = args.targets.split(",") + list(args.variants)
    for n in [int(s) for s in args.sizes.split(",")]:
        for _ in range(args.repeats):
            for name in names:
                out = measure(name, n, args, pins)
                for line in out.pop("trace", []):
                    print(line)
                print(json.dumps(out), flush=True)
                results.append(out)
    run.RESULTS.mkdir(exist_ok=True)
    path = run.RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-idle.json"
    path.write_text(json.dumps(results, indent=2))
    print()
    print(table(results))
    if args.repeats > 1:
        print()
        print(medians(results))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
