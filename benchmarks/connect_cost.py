"""Server CPU per connect + join, as a function of the sockets already connected.

    python benchmarks/connect_cost.py [--targets orgcast,reference] [--levels 0,5000,15000]
                                      [--step 1000] [--rooms 100] [--ping-interval 600]
                                      [--profile DIR] [--variant LABEL:ENV=VALUE[,ENV=VALUE]]

One fresh server per target (and per ``--variant``, another orgcast with those settings). At each
level, idle joined sockets are added until ``level`` are held (not measured), then ``--step`` more
connect and join (one of ``--rooms`` rooms each, as ``idle.py`` does) and the server's CPU over
that step, divided by ``--step``, is the cost of one connect at that level. Every client is a
distinct user, so each join is a new member of its room: the room hears a ``presence`` event and
the join's ack lists the room's members. ``--rooms 0`` gives every client a room of its own (no
one to tell, a one-member list): the difference is what the room's other members cost.

The ping interval is raised (``--ping-interval``, seconds; orgcast only) so that heartbeats of the
sockets held do not count as connect CPU. ``--profile DIR`` (needs ``py-spy``) records the server
during each measured step into ``DIR/<target>-<level>.txt`` (collapsed stacks) and prints the
heaviest frames.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import idle
import run


@contextlib.contextmanager
def hold(
    target: run.Target, first: int, n: int, rooms: int, cpu: int | None, tmp: Path
) -> Iterator[dict[str, Any]]:
    """``n`` idle joined sockets, users ``c<first>`` .. ``c<first + n - 1>``; room of client
    ``i`` is ``idle<i % rooms>``, or ``solo<i>`` with ``rooms`` 0."""
    kid, secret = target.signer
    tokens = [run.mint(secret, kid, f"c{first + i}", target.slug) for i in range(n)]
    path = tmp / f"clients-{first}.json"
    config: dict[str, Any] = {"url": target.url, "namespace": target.namespace,
                              "tokens": tokens, "concurrency": 50}  # fmt: skip
    if rooms:
        config.update(room="idle", rooms=rooms)
    else:
        config.update(room=f"solo{first}-", rooms=n)
    path.write_text(json.dumps(config))
    proc = subprocess.Popen(idle.clients_cmd(path, cpu), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline().decode()
        try:
            yield json.loads(line)
        except ValueError:
            raise RuntimeError(f"clients: {line.strip() or 'no output'}") from None
    finally:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(b"go\n")
            proc.stdin.close()
        proc.stdout.readline()
        proc.wait(timeout=60)


def top_frames(path: Path, n: int = 12) -> list[str]:
    """The frames with the most samples (self time and inclusive) in a collapsed-stack file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"  {total} samples; self:"]
    lines += [f"    {100 * c / total:5.1f} %  {f}" for f, c in own.most_common(n)]
    lines.append("  inclusive (orgcast, socketio, engineio frames):")
    ours = [(f, c) for f, c in inclusive.most_common()
            if any(k in f for k in ("orgcast", "socketio", "engineio"))]  # fmt: skip
    lines += [f"    {100 * c / total:5.1f} %  {f}" for f, c in ours[:n]]
    return lines


def start(name: str, env: dict[str, str], cpu: int | None, db: str, data: str) -> run.Target:
    if name == "reference":
        return run.start_reference(cpu)
    if name == "node":
        return run.start_node_reference(cpu)
    url = run.pg_dsn(db).replace("postgresql://", "postgresql+asyncpg://")
    return run.start_orgcast(cpu, url, data, overrides=env)


def measure(
    label: str, name: str, env: dict[str, str], args: argparse.Namespace, cpus: tuple[Any, Any]
) -> list[dict[str, Any]]:
    server_cpu, gen_cpu = cpus
    db = f"orgcast_conn_{secrets.token_hex(4)}"
    data = tempfile.mkdtemp(prefix="orgcast-conn-")
    tmp = Path(tempfile.mkdtemp(prefix="orgcast-conn-gen-"))
    if name == "orgcast":
        asyncio.run(run.pg_exec(run.PG_ADMIN, (f'CREATE DATABASE "{db}"', ())))
        env = {"ORGCAST_SERVER__PING_INTERVAL": str(args.ping_interval), **env}
    rows = []
    target = None
    try:
        target = start(name, env, server_cpu, db, data)
        with hold(target, 10_000_000, 50, args.rooms, gen_cpu, tmp):
            pass  # warm-up
        held = 0
        with contextlib.ExitStack() as stack:
            for level in [int(x) for x in args.levels.split(",")]:
                while held < level:  # unmeasured fill, in chunks of at most 10,000
                    chunk = min(10_000, level - held)
                    stack.enter_context(hold(target, held, chunk, args.rooms, gen_cpu, tmp))
                    held += chunk
                time.sleep(1.0)
                spy = None
                out_path = None
                if args.profile:
                    out_path = Path(args.profile) / f"{label}-{level}.txt"
                    spy = subprocess.Popen(
                        [args.py_spy, "record", "--format", "raw", "--rate", "200", "--nonblocking",
                         "-o", str(out_path), "--pid", str(target.pid)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                    time.sleep(1.0)
                ticks0, pg0, t0 = run.cpu_ticks(target.pid), run.pg_ticks(target), time.monotonic()
                info = stack.enter_context(hold(target, held, args.step, args.rooms, gen_cpu, tmp))
                wall = time.monotonic() - t0
                cpu_s = (run.cpu_ticks(target.pid) - ticks0) / run.CLK_TCK
                pg_s = (run.pg_ticks(target) - pg0) / run.CLK_TCK
                held += args.step
                if spy is not None:
                    spy.send_signal(2)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        spy.wait(timeout=30)
                row = {
                    "target": label, "level": level, "step": args.step, "rooms": args.rooms,
                    "held": info["holding"], "failed": info.get("failed"),
                    "connects_per_s": round(args.step / wall, 1),
                    "server_ms_per_connect": round(1000 * cpu_s / args.step, 3),
                    "postgres_ms_per_connect": round(1000 * pg_s / args.step, 3),
                    "gen_cpu_s": info.get("cpu_s"), "load": os.getloadavg()[0],
                }  # fmt: skip
                print(json.dumps(row), flush=True)
                if out_path is not None and out_path.exists():
                    print("\n".join(top_frames(out_path)), flush=True)
                rows.append(row)
    finally:
        if target is not None:
            run.stop(target.proc)
        if name == "orgcast":
            run.drop_database(db)
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="orgcast,reference")
    parser.add_argument("--levels", default="0,5000,15000")
    parser.add_argument("--step", type=int, default=1000)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--ping-interval", type=float, default=600.0)
    parser.add_argument("--profile", default="")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--variant", action="append", default=[])
    args = parser.parse_args()
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0))
    pins = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    servers: list[tuple[str, str, dict[str, str]]] = [
        (t, t, {}) for t in args.targets.split(",") if t
    ]
    for spec in args.variant:
        label, _, settings = spec.partition(":")
        env = dict(kv.split("=", 1) for kv in settings.split(",") if kv)
        servers.append((label, "orgcast", env))
    results = []
    for label, name, env in servers:
        results += measure(label, name, env, args, pins)
    run.RESULTS.mkdir(exist_ok=True)
    path = run.RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-connect.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
