"""Run every benchmark scenario against the reference servers and orgcast, in one invocation.

    ./scripts/bench [--quick] [--only fanout,chat,...] [--targets reference,node,orgcast]
                    [--generator raw|official] [--features] [--variant ...] [--repeats N]

Every server is started here: the python-socketio reference (``benchmarks/reference_server.py``),
the Node socket.io reference (``benchmarks/node_reference.mjs``, npm ``socket.io``) and orgcast on a
throwaway PostgreSQL database that is dropped at the end. Servers are pinned to the first allowed
CPU and the load generators to the second, when there are two. Each scenario runs against every
server in turn; the table gives orgcast's ratio to each reference, and the full JSON (steps,
percentiles, CPU of server, generator and PostgreSQL backends) goes to
``benchmarks/results/<timestamp>.json``.

Generators: fanout, lowfan and lowrooms run on ``benchmarks/rawgen.c`` (raw websocket clients in one
epoll loop, compiled with gcc into ``build/rawgen`` when missing or older than its source), the
other scenarios on ``benchmarks/loadgen.mjs`` (the official ``socket.io-client``);
``--generator official`` runs everything on the official client, to check one against the other.

``--features`` adds one orgcast per feature of round 2 switched off (``FEATURE_VARIANTS``):
ordering, the webhooks outbox, metrics, the token-expiry index; the A/B table gives each one's
figures against orgcast as configured.

A variant with ``ORGCAST_BENCH_WEBHOOK=1`` also gets a fast local webhook receiver
(``benchmarks/webhook_receiver.py``) and one endpoint on the benchmark tenant subscribed to
``message.created``; its chat results then carry the webhook delivery lag. Its chat scenario
waits, between the saturation phase and the half-saturation one, until the receiver has every
event of the saturation phase (``drain_ms`` in the result: how long the worker took to catch up
after the overload), so that the half-saturation phase measures the endpoint's cost at that load,
not the catching up after the load before it; ``ORGCAST_BENCH_WEBHOOK_DRAIN=0`` starts it at
once instead, with the backlog still draining (as every figure before round 5 did).

Scenarios: memory (RSS per idle socket), storm (connect storm with JWTs), fanout (1 room x 200
clients, saturation search), chat (500 rooms of 2, everyone sending), lowfan and lowrooms (low
load at a fixed rate: 1 room x 200 at 50 msgs/s, 1,000 clients in 100 rooms at 500 msgs/s;
delivery and ack p50/p99), recovery (join since, replaying 10,000 messages), tenants (connect
latency with 10 / 1,000 / 10,000 tenants). Idle sockets at scale: ``benchmarks/idle.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import jwt

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PG_ADMIN = os.environ.get("ORGCAST_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
ADMIN_TOKEN = "bench-admin-" + secrets.token_hex(12)
REF_SECRET = secrets.token_hex(32)
SLUG = "bench"
SCENARIOS = ("memory", "storm", "fanout", "chat", "lowfan", "lowrooms", "recovery", "tenants")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# --features: each of round 2's features off, one orgcast each (on/off ratios in the A/B table).
FEATURE_VARIANTS = (
    "no-ordering:ORGCAST_BENCH_ORDERING=off",
    "no-outbox:ORGCAST_BENCH_OUTBOX=off",
    "no-metrics:ORGCAST_METRICS__ENABLED=false",
    "no-expiry:ORGCAST_BENCH_EXPIRY=off",
)
TARGETS = {
    "fanout": 0.8,
    "chat": 0.7,
    "storm": 0.8,
    "half_p99_ms": 50.0,
    "tenant_flatness": 0.2,
}

# Sizes per mode: quick is a smoke run (~4 minutes), full stays within ~12 minutes (3 servers).
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "memory": {"clients": 500},
        "storm": {"clients": 1000, "rounds": 1},
        "fanout": {"step_s": 2, "start_rate": 10, "growth": 1.6, "refine": 1, "max_steps": 12},
        "chat": {"duration_s": 3},
        "lowfan": {"duration_s": 4},
        "lowrooms": {"duration_s": 4},
        "recovery": {"repeats": 3},
        "tenants": {"warm_connects": 50, "cold": 8},
        "repeats": {},
    },
    "full": {
        "memory": {"clients": 2000},
        "storm": {"clients": 1000, "rounds": 3},
        # From 40 msgs/s (8,000 deliveries/s): every server here carries that with room to spare.
        "fanout": {"step_s": 3, "start_rate": 40, "growth": 1.5, "refine": 3, "max_steps": 20},
        "chat": {"duration_s": 8},
        "lowfan": {"duration_s": 10},
        "lowrooms": {"duration_s": 10},
        "recovery": {"repeats": 5},
        "tenants": {"warm_connects": 200, "cold": 16},
        # Alternating runs (ref, orgcast, ref, orgcast); the best of each is kept, since other
        # load on a shared machine only ever makes a run slower.
        "repeats": {"storm": 2, "fanout": 2, "chat": 2},
    },
}


def best_key(scenario: str, run: dict[str, Any]) -> float:
    """The figure a scenario is ranked by when it ran more than once (higher is better)."""
    result = run.get("result", {})
    if scenario == "fanout":
        return float((result.get("saturation") or {}).get("deliveries_per_s", 0))
    if scenario == "chat":
        return float((result.get("saturation") or {}).get("stored_and_delivered_per_s", 0))
    if scenario == "storm":
        return float(result.get("median_connects_per_s", 0))
    return 0.0


def log(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# -- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    if cpu is None or shutil.which("taskset") is None:
        return cmd
    return ["taskset", "-c", str(cpu), *cmd]


def cpu_ticks(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def http(method: str, url: str, body: Any = None, token: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def wait_http(url: str, proc: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready ({url})")
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {seconds}s")


@dataclass
class Target:
    """One server under test: how to reach it and how clients authenticate to it."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    namespace: str
    signer: tuple[str | None, str]  # (kid, secret)
    slug: str = SLUG
    db: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        # Under taskset the Popen is the server itself (taskset execs it).
        return self.proc.pid

    def tokens(self, count: int, prefix: str = "u") -> list[str]:
        kid, secret = self.signer
        return [mint(secret, kid, f"{prefix}{i}", self.slug) for i in range(count)]


def mint(secret: str, kid: str | None, sub: str, aud: str) -> str:
    claims = {"sub": sub, "name": sub, "exp": int(time.time()) + 7200, "aud": aud}
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, secret, algorithm="HS256", headers=headers)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def start_node_reference(cpu: int | None) -> Target:
    """The official Node socket.io server (``benchmarks/node_reference.mjs``), in memory."""
    port = free_port()
    node = shutil.which("node") or "node"
    cmd = [node, str(HERE / "node_reference.mjs"), "--port", str(port), "--jwt-secret", REF_SECRET]
    proc = subprocess.Popen(pinned(cmd, cpu), stdout=subprocess.DEVNULL, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc)
    return Target("node", proc, url, "/" + SLUG, (None, REF_SECRET))


def start_reference(cpu: int | None) -> Target:
    port = free_port()
    cmd = [sys.executable, str(HERE / "reference_server.py"), "--port", str(port)]
    cmd += ["--jwt-secret", REF_SECRET]
    proc = subprocess.Popen(pinned(cmd, cpu), stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc)
    return Target("reference", proc, url, "/" + SLUG, (None, REF_SECRET))


RECEIVER_CPU: list[int | None] = [None]  # set in main(): the generator's CPU


def start_orgcast(
    cpu: int | None,
    db_url: str,
    data_dir: str,
    name: str = "orgcast",
    overrides: dict[str, str] | None = None,
    ready_s: float = 60,
) -> Target:
    """Start orgcast; ``overrides`` (environment settings) make an A/B variant of it."""
    port = free_port()
    env = {
        **os.environ,
        "ORGCAST_DATABASE__URL": db_url,
        "ORGCAST_ADMIN__TOKEN": ADMIN_TOKEN,
        "ORGCAST_DATA_DIR": data_dir,
        "ORGCAST_REDIS__URL": "",
        "ORGCAST_LOG__LEVEL": "WARNING",
        "ORGCAST_MESSAGES__REPLAY_PAGE": "10000",
        # Throughput is measured here, not the abuse limits: a storm from one address, one
        # 10,000-message replay in one ack.
        "ORGCAST_MESSAGES__REPLAY_MAX_BYTES": str(64 << 20),
        "ORGCAST_SERVER__CONNECTS_PER_ADDRESS": "100000",
        "ORGCAST_LIMITS__CONNECTION_RATE": "100000",
        **(overrides or {}),
    }
    if env.get("ORGCAST_BENCH_WEBHOOK") == "1":
        env["ORGCAST_WEBHOOKS__ALLOW_PRIVATE_TARGETS"] = "true"  # the receiver is on 127.0.0.1
    # Every orgcast runs through the variant launcher: it applies benchmark-only switches that
    # have no setting (the JSON codec) and otherwise is `orgcast serve`.
    cmd = [sys.executable, str(HERE / "orgcast_variant.py"), "serve", "--port", str(port)]
    cmd.append("--migrate")
    proc = subprocess.Popen(pinned(cmd, cpu), env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/readyz", proc, ready_s)
    created = http(
        "POST",
        url + "/api/v1/tenants",
        {
            "slug": SLUG,
            "name": "Benchmark",
            "limits": {
                "max_connections": 1_000_000,
                "messages_per_second": 100_000,
                "max_rooms_per_connection": 1000,
            },
        },
        ADMIN_TOKEN,
    )
    key = created["signing_key"]
    # One token through the API proves the locally minted ones have the same shape.
    minted = http(
        "POST",
        f"{url}/api/v1/tenants/{SLUG}/tokens",
        {"sub": "probe", "ttl_seconds": 3600},
        ADMIN_TOKEN,
    )
    target = Target(name, proc, url, "/" + SLUG, (key["kid"], key["secret"]), db=db_url)
    target.extra["api_token"] = minted["token"]
    if (overrides or {}).get("ORGCAST_BENCH_WEBHOOK") == "1":
        target.extra["receiver"] = start_receiver(RECEIVER_CPU[0])
        target.extra["drain"] = (overrides or {}).get("ORGCAST_BENCH_WEBHOOK_DRAIN") != "0"
        http(
            "POST",
            f"{url}/api/v1/tenants/{SLUG}/webhooks",
            {"url": target.extra["receiver"][1] + "/hook", "events": ["message.created"]},
            ADMIN_TOKEN,
        )
    return target


def start_receiver(cpu: int | None) -> tuple[subprocess.Popen[bytes], str]:
    """The webhook receiver: the tenant's backend, not orgcast, so it runs beside the load
    generator (its CPU is not the server's)."""
    port = free_port()
    cmd = [sys.executable, str(HERE / "webhook_receiver.py"), "--port", str(port)]
    proc = subprocess.Popen(pinned(cmd, cpu), stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            http("GET", url + "/samples")
            return proc, url
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError("webhook receiver did not start")


def percentile(values: list[int], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def webhook_lag(target: Target, duration_s: float) -> dict[str, Any] | None:
    """Lag of the events delivered during the last run: overall, and for the events created in
    the run's last ``duration_s`` (the chat scenario's half-saturation phase)."""
    receiver = target.extra.get("receiver")
    if receiver is None:
        return None
    data = http("GET", receiver[1] + "/samples")
    http("POST", receiver[1] + "/reset")
    created, lags = data["created_at"], data["lag_ms"]
    last = max(created, default=0)
    tail = [lag for c, lag in zip(created, lags, strict=True) if c >= last - duration_s * 1000]
    # The second half of that phase: the backlog of the saturation phase before it is drained.
    steady = [lag for c, lag in zip(created, lags, strict=True) if c >= last - duration_s * 500]
    return {
        "events": len(lags),
        "requests": data["requests"],
        "lag_p50_ms": percentile(lags, 0.5),
        "lag_p99_ms": percentile(lags, 0.99),
        "half_events": len(tail),
        "half_lag_p50_ms": percentile(tail, 0.5),
        "half_lag_p99_ms": percentile(tail, 0.99),
        "steady_lag_p50_ms": percentile(steady, 0.5),
        "steady_lag_p99_ms": percentile(steady, 0.99),
    }


# -- PostgreSQL ---------------------------------------------------------------------------------


def drop_database(name: str) -> None:
    """Drop a benchmark's throwaway database (its server stopped); a failure is not the run's."""
    with contextlib.suppress(OSError, asyncpg.PostgresError):
        asyncio.run(pg_exec(PG_ADMIN, (f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', ())))


async def pg_exec(dsn: str, *statements: tuple[str, tuple[Any, ...]]) -> list[Any]:
    connection = await asyncpg.connect(dsn)
    try:
        out = []
        for sql, params in statements:
            out.append(await connection.fetch(sql, *params))
        return out
    finally:
        await connection.close()


def pg_dsn(db: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + db


def pg_backend_ticks(db: str) -> int:
    rows = asyncio.run(
        pg_exec(
            PG_ADMIN,
            ("SELECT pid FROM pg_stat_activity WHERE datname = $1", (db,)),
        )
    )[0]
    return sum(cpu_ticks(r["pid"]) for r in rows)


def seed_tenants(db: str, first: int, last: int) -> int:
    """Insert seeded tenants bt-<first..last> with one signing key each; returns the total."""
    now = int(time.time() * 1000)
    rows = asyncio.run(
        pg_exec(
            pg_dsn(db),
            (
                "INSERT INTO tenants (slug, name, status, limits, ephemeral_events,"
                " allowed_origins, created_at, updated_at)"
                " SELECT 'bt-' || lpad(i::text, 6, '0'), 'Seeded ' || i, 'active', '{}'::json,"
                " '[]'::json, '[]'::json, $3, $3 FROM generate_series($1::int, $2::int) AS i",
                (first, last, now),
            ),
            (
                "INSERT INTO signing_keys (tenant_id, kid, secret, created_at)"
                " SELECT id, 'kb', md5(slug) || md5(slug || 'x'), $1 FROM tenants"
                " WHERE slug LIKE 'bt-%' AND id NOT IN (SELECT tenant_id FROM signing_keys)",
                (now,),
            ),
            ("SELECT count(*) AS n FROM tenants", ()),
        )
    )
    return int(rows[2][0]["n"])


def seeded(i: int) -> tuple[str, str]:
    slug = f"bt-{i:06d}"
    secret = hashlib.md5(slug.encode()).hexdigest() + hashlib.md5((slug + "x").encode()).hexdigest()
    return slug, secret


# -- the generator ------------------------------------------------------------------------------


RAWGEN_SOURCE = HERE / "rawgen.c"
RAWGEN = ROOT / "build" / "rawgen"
# Scenarios the raw generator (``benchmarks/rawgen.c``) runs; the others need the official client.
RAW_SCENARIOS = ("fanout", "fixed")


def build_rawgen() -> Path:
    """Compile the raw generator when its binary is missing or older than its source."""
    if not RAWGEN.exists() or RAWGEN.stat().st_mtime < RAWGEN_SOURCE.stat().st_mtime:
        RAWGEN.parent.mkdir(exist_ok=True)
        cmd = ["gcc", "-O2", "-Wall", "-o", str(RAWGEN), str(RAWGEN_SOURCE), "-lm"]
        subprocess.run(cmd, check=True, timeout=120)
    return RAWGEN


class RawSession:
    """One ``rawgen`` process: its clients connected and joined; ``step`` runs one paced phase."""

    def __init__(self, gen: Generator, config: dict[str, Any]) -> None:
        tokens = gen.tmp / f"tokens-{time.monotonic_ns()}"
        tokens.write_text("\n".join(config["tokens"]) + "\n")
        url = urllib.parse.urlsplit(config["url"])
        settings = {
            "host": url.hostname,
            "port": url.port,
            "namespace": config["namespace"],
            "tokens": tokens,
            "clients": config["clients"],
            "rooms": config.get("rooms", 1),
            "room": config["room"],
            "senders": config.get("senders", config["clients"]),
            "pad_bytes": config.get("pad_bytes", 64),
            "concurrency": 50,
            "server_pid": config.get("server_pid", 0),
            "clk_tck": CLK_TCK,
            "timeout_s": config.get("timeout_s", 300),
            # Saturation: reads batched 2 ms apart while busy (the generator's cost per delivery
            # is the kernel's per read); fixed low rates: every frame read at once.
            "read_interval_us": 2000 if config["scenario"] == "fanout" else 0,
        }
        path = gen.tmp / f"raw-{time.monotonic_ns()}.conf"
        path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        self.proc = subprocess.Popen(
            pinned([str(build_rawgen()), str(path)], gen.cpu),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        self.steps = 0
        self.ready = self._read(180)
        if not self.ready.get("ready"):
            self.close()
            raise RuntimeError(f"rawgen: {self.ready.get('error', self.ready)}")

    def _read(self, timeout_s: float) -> dict[str, Any]:
        """The answer to the last command: one line (rawgen writes each line at once)."""
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if readable else b""
        if not line:
            self.close()
            raise RuntimeError(f"rawgen: no answer in {timeout_s:.0f}s (exit {self.proc.poll()})")
        return dict(json.loads(line))

    def step(self, rate: float, seconds: float, grace_s: float, p99_ms: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.steps += 1
        self.proc.stdin.write(f"step {self.steps} {rate} {seconds} {grace_s} {p99_ms}\n".encode())
        self.proc.stdin.flush()
        out = self._read(seconds + grace_s + 60)
        if "error" in out:
            raise RuntimeError(f"rawgen: {out['error']}")
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def raw_fanout(session: RawSession, cfg: dict[str, Any]) -> dict[str, Any]:
    """The saturation search of loadgen.mjs's fanout, on the raw generator."""

    def run_step(rate: int) -> dict[str, Any]:
        r = session.step(rate, cfg["step_s"], cfg["grace_s"], cfg["p99_limit_ms"])
        log(
            f"fanout rate={rate}/s deliveries={r['deliveries_per_s']}/s ratio={r['delivery_ratio']}"
            f" p99={r['latency'].get('p99_ms')}ms gen_cpu={r['generator_cpu_frac']}"
            f" srv_cpu={r.get('server_cpu_frac')} srv_wait={r.get('server_runqueue_wait_frac')}"
            f" {'pass' if r['pass'] else 'FAIL'}"
        )
        return r

    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    failed: int | None = None
    rate = cfg["start_rate"]
    for _ in range(cfg["max_steps"]):
        if rate > cfg["max_rate"]:
            break
        r = run_step(rate)
        steps.append(r)
        if not r["pass"]:
            failed = rate
            break
        best = r
        rate = max(rate + 1, round(rate * cfg["growth"]))
    for _ in range(cfg["refine"]):
        if not (best and failed and failed - best["rate"] > 2):
            break
        mid = round((best["rate"] + failed) / 2)
        r = run_step(mid)
        steps.append(r)
        if r["pass"]:
            best = r
        else:
            failed = mid
    half = run_step(max(1, round(best["rate"] / 2))) if best else None
    return {"clients": cfg["clients"], "senders": cfg["senders"], "steps": steps,
            "saturation": best, "first_failure": failed, "half": half}  # fmt: skip


def raw_fixed(session: RawSession, cfg: dict[str, Any]) -> dict[str, Any]:
    """loadgen.mjs's fixed-rate scenario on the raw generator: a warm-up step (not measured)."""
    session.step(cfg["rate"], min(2, cfg["duration_s"]), cfg["grace_s"], 1e9)
    time.sleep(0.3)
    r = session.step(cfg["rate"], cfg["duration_s"], cfg["grace_s"], 1e9)
    r.pop("pass", None)
    log(f"fixed {cfg['clients']}x{cfg['rooms']} @{cfg['rate']}/s p50={r['latency'].get('p50_ms')}"
        f" p99={r['latency'].get('p99_ms')}ms gen_cpu={r['generator_cpu_frac']}")  # fmt: skip
    return {"clients": cfg["clients"], "rooms": cfg["rooms"], **r}


class Generator:
    def __init__(self, cpu: int | None, raw: bool = True) -> None:
        self.cpu = cpu
        self.raw = raw
        self.node = shutil.which("node") or "node"
        self.tmp = Path(tempfile.mkdtemp(prefix="orgcast-bench-"))

    def run_raw(self, config: dict[str, Any]) -> dict[str, Any]:
        scenario = config["scenario"]
        cfg = dict(config)
        if scenario == "fixed":
            cfg.setdefault("room", f"fixed-{secrets.token_hex(3)}-")
        t0, cpu0 = time.monotonic(), 0.0
        session = RawSession(self, cfg)
        try:
            cpu0 = session.ready.get("generator_cpu_s", 0.0)
            result = raw_fanout(session, cfg) if scenario == "fanout" else raw_fixed(session, cfg)
        finally:
            session.close()
        result["generator"] = "raw"
        total = {"wall_s": round(time.monotonic() - t0, 3), "connect_generator_cpu_s": cpu0}
        return {"scenario": scenario, "result": result, "total": total}

    def _config(self, config: dict[str, Any]) -> Path:
        path = self.tmp / f"{config['scenario']}-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(config))
        return path

    def _cmd(self, path: Path) -> list[str]:
        return pinned([self.node, str(HERE / "loadgen.mjs"), str(path)], self.cpu)

    def run(self, config: dict[str, Any]) -> dict[str, Any]:
        config.setdefault("timeout_s", 300)
        if self.raw and config["scenario"] in RAW_SCENARIOS:
            return self.run_raw(config)
        path = self._config(config)
        done = subprocess.run(
            self._cmd(path),
            stdout=subprocess.PIPE,
            timeout=config["timeout_s"] + 30,
            check=False,
            cwd=ROOT,
        )
        lines = done.stdout.decode().strip().splitlines()
        out = json.loads(lines[-1]) if lines else {"error": f"no output (exit {done.returncode})"}
        if "error" in out:
            raise RuntimeError(f"{config['scenario']}: {out['error']}")
        return dict(out)

    @contextlib.contextmanager
    def holding(self, config: dict[str, Any]) -> Iterator[None]:
        """Run the ``hold`` scenario: yields while the sockets are connected."""
        config.setdefault("timeout_s", 300)
        path = self._config(config)
        proc = subprocess.Popen(
            self._cmd(path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
        )
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline().decode()
        if "holding" not in line:
            proc.kill()
            raise RuntimeError(f"hold: {line.strip() or 'no output'}")
        try:
            yield
        finally:
            proc.stdin.write(b"go\n")
            proc.stdin.close()
            proc.wait(timeout=60)


# -- scenarios ----------------------------------------------------------------------------------


def base(target: Target, scenario: str, tokens: int) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "url": target.url,
        "namespace": target.namespace,
        "tokens": target.tokens(tokens),
        "server_pid": target.pid,
        "clk_tck": CLK_TCK,
    }


def measure(target: Target, gen: Generator, config: dict[str, Any]) -> dict[str, Any]:
    """Run one loadgen scenario, adding whole-run server CPU, RSS and PostgreSQL CPU."""
    ticks0, pg0 = cpu_ticks(target.pid), pg_ticks(target)
    t0 = time.monotonic()
    out = gen.run(config)
    wall = time.monotonic() - t0
    server_s = (cpu_ticks(target.pid) - ticks0) / CLK_TCK
    out["server"] = {
        "cpu_s": round(server_s, 2),
        "wall_s": round(wall, 2),
        "rss_kb": rss_kb(target.pid),
    }
    if target.db is not None:
        out["server"]["postgres_cpu_s"] = round((pg_ticks(target) - pg0) / CLK_TCK, 2)
    return out


def pg_ticks(target: Target) -> int:
    if target.db is None:
        return 0
    try:
        return pg_backend_ticks(target.db.rsplit("/", 1)[1])
    except (OSError, asyncpg.PostgresError):
        return 0


def run_memory(target: Target, gen: Generator, p: dict[str, Any]) -> dict[str, Any]:
    # A warm-up round first, so one-off allocations (imports, caches) are not counted per socket.
    with gen.holding({**base(target, "hold", 50), "clients": 50}):
        pass
    time.sleep(1.0)
    before = rss_kb(target.pid)
    n = p["clients"]
    with gen.holding({**base(target, "hold", n), "clients": n}):
        time.sleep(1.5)
        during = rss_kb(target.pid)
    time.sleep(1.0)
    return {
        "clients": n,
        "rss_before_kb": before,
        "rss_connected_kb": during,
        "rss_after_kb": rss_kb(target.pid),
        "kb_per_socket": round((during - before) / n, 2),
    }


def run_storm(target: Target, gen: Generator, p: dict[str, Any]) -> dict[str, Any]:
    n = p["clients"]
    config = {**base(target, "storm", n), "clients": n, "rounds": p["rounds"], "concurrency": n}
    config["pause_ms"] = 2000  # the previous round's disconnects finish first
    return measure(target, gen, config)


def run_fanout(target: Target, gen: Generator, p: dict[str, Any]) -> dict[str, Any]:
    config = {
        **base(target, "fanout", 200),
        "clients": 200,
        "senders": 4,
        "room": f"fan-{secrets.token_hex(3)}",
        "max_rate": 5000,
        "p99_limit_ms": 250,
        "grace_s": 2,
        "timeout_s": 600,
        **p,
    }
    return measure(target, gen, config)


def run_chat(target: Target, gen: Generator, p: dict[str, Any]) -> dict[str, Any]:
    config = {**base(target, "chat", 1000), "clients": 1000, "window": 1, "grace_s": 3, **p}
    receiver = target.extra.get("receiver")
    if receiver is not None and target.extra.get("drain", True):
        config["webhook_count_url"] = receiver[1] + "/count"
    out = measure(target, gen, config)
    lag = webhook_lag(target, p["duration_s"])
    if lag is not None:
        out["webhooks"] = lag
    return out


def run_lowfan(target: Target, gen: Generator, p: dict[str, Any]) -> dict[str, Any]:
    """Low load, fan-out: 1 room x 200 clients at 50 messages/s (~10,000 deliveries/s)."""
    config = {**base(target, "fixed", 200), "clients": 200, "rooms": 1, "rate": 50,
              "grace_s": 3, **p}  # fmt: skip
    return measure(target, gen, config)


def run_lowrooms(target: Target, gen: Generator, p: dict[str, Any]) -> dict[str, Any]:
    """Low load, many rooms: 1,000 clients in 100 rooms at 500 messages/s."""
    config = {**base(target, "fixed", 1000), "clients": 1000, "rooms": 100, "rate": 500,
              "grace_s": 3, **p}  # fmt: skip
    return measure(target, gen, config)


def run_recovery(target: Target, gen: Generator, p: dict[str, Any]) -> dict[str, Any]:
    config = {
        **base(target, "recovery", 16),
        "room": f"replay-{secrets.token_hex(3)}",
        "messages": 10_000,
        "window": 200,
        **p,
    }
    return measure(target, gen, config)


def run_tenants(target: Target, gen: Generator, p: dict[str, Any]) -> dict[str, Any]:
    stages = []
    next_id = 1
    for scale in (10, 1000, 10_000):
        if target.db is not None:
            db = target.db.rsplit("/", 1)[1]
            last = scale - 1  # plus the benchmark tenant itself
            total = seed_tenants(db, next_id, last) if last >= next_id else scale
            ids = list(range(next_id, last + 1))
            next_id = last + 1
            warm_slug, warm_secret = seeded(ids[-1])
            warm = {"namespace": "/" + warm_slug, "token": mint(warm_secret, "kb", "w", warm_slug)}
            cold = []
            for i in ids[: p["cold"]]:
                slug, secret = seeded(i)
                cold.append({"namespace": "/" + slug, "token": mint(secret, "kb", "c", slug)})
        else:
            # The reference has no tenants: a new namespace per "cold" connect, for scale.
            total = scale
            token = target.tokens(1)[0]
            warm = {"namespace": f"/ref-{scale}", "token": token}
            cold = [{"namespace": f"/ref-{scale}-{i}", "token": token} for i in range(p["cold"])]
        config = {
            **base(target, "tenants", 1),
            "warm": warm,
            "cold": cold,
            "warm_connects": p["warm_connects"],
            "concurrency": 1,
        }
        out = measure(target, gen, config)
        out["tenants"] = total
        stages.append(out)
        log(f"{target.name} tenants={total}: warm {out['result']['warm']}")
    return {"stages": stages}


RUNNERS = {
    "memory": run_memory,
    "storm": run_storm,
    "fanout": run_fanout,
    "chat": run_chat,
    "lowfan": run_lowfan,
    "lowrooms": run_lowrooms,
    "recovery": run_recovery,
    "tenants": run_tenants,
}


# -- reporting ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    versions = {"python": platform.python_version()}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        versions["node"] = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("python-socketio", "python-engineio", "aiohttp", "uvloop", "asyncpg"):
        with contextlib.suppress(PackageNotFoundError):
            versions[dist] = version(dist)
    with contextlib.suppress(OSError, json.JSONDecodeError):
        pkg = ROOT / "node_modules" / "socket.io-client" / "package.json"
        versions["socket.io-client"] = json.loads(pkg.read_text())["version"]
    with contextlib.suppress(OSError, IndexError, asyncpg.PostgresError):
        versions["postgresql"] = asyncio.run(pg_exec(PG_ADMIN, ("SHOW server_version", ())))[0][0][
            0
        ]
    return {
        "nproc": os.cpu_count(),
        "allowed_cpus": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "versions": versions,
        "loadavg_start": list(os.getloadavg()),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if not a or not b:
        return None
    return round(a / b, 3)


def limit_of(step: dict[str, Any] | None) -> str:
    """Which side ran out first during a measured phase."""
    if not step:
        return "-"
    gen = step.get("generator_cpu_frac", 0)
    srv = step.get("server_cpu_frac", 0)
    if gen >= 0.85 and gen >= srv:
        return f"generator ({gen:.0%} CPU)"
    if srv >= 0.85:
        return f"server CPU ({srv:.0%})"
    return f"neither CPU-bound (server {srv:.0%}, generator {gen:.0%})"


def summarize(
    results: dict[str, dict[str, Any]], reference: str = "reference"
) -> list[dict[str, Any]]:
    """Rows of orgcast against one reference server (``reference`` or ``node``)."""
    rows: list[dict[str, Any]] = []

    def row(scenario: str, metric: str, ref: Any, org: Any, **kw: Any) -> None:
        rows.append({"scenario": scenario, "metric": metric, "reference": ref, "orgcast": org} | kw)

    ref, org = results.get(reference, {}), results.get("orgcast", {})
    if "memory" in ref or "memory" in org:
        r, o = ref.get("memory", {}), org.get("memory", {})
        row("memory", "KB per idle socket", r.get("kb_per_socket"), o.get("kb_per_socket"),
            ratio=ratio(o.get("kb_per_socket"), r.get("kb_per_socket")))  # fmt: skip
    if "storm" in ref or "storm" in org:
        r = ref.get("storm", {}).get("result", {})
        o = org.get("storm", {}).get("result", {})
        rr, oo = r.get("median_connects_per_s"), o.get("median_connects_per_s")
        row("c storm", "connects/s (1,000 JWT clients)", rr, oo, ratio=ratio(oo, rr),
            target=f">= {TARGETS['storm']}x",
            met=_met(ratio(oo, rr), TARGETS["storm"]))  # fmt: skip
        rn, on = _storm_per_cpu(r), _storm_per_cpu(o)
        row("c storm", "connects per server CPU-second", rn, on, ratio=ratio(on, rn))
        ro, oo_ = (r.get("rounds") or [{}])[0], (o.get("rounds") or [{}])[0]
        row("c storm", "connect p99 ms", ro.get("latency", {}).get("p99_ms"),
            oo_.get("latency", {}).get("p99_ms"), limit=limit_of(oo_))  # fmt: skip
    if "fanout" in ref or "fanout" in org:
        r = ref.get("fanout", {}).get("result", {})
        o = org.get("fanout", {}).get("result", {})
        rs, os_ = r.get("saturation") or {}, o.get("saturation") or {}
        rr, oo = rs.get("deliveries_per_s"), os_.get("deliveries_per_s")
        row("a fan-out", "deliveries/s at saturation (1 room x 200)", rr, oo, ratio=ratio(oo, rr),
            target=f">= {TARGETS['fanout']}x", met=_met(ratio(oo, rr), TARGETS["fanout"]),
            limit=f"ref: {limit_of(rs)}; orgcast: {limit_of(os_)}")  # fmt: skip
        row("a fan-out", "sender msgs/s at saturation", rs.get("rate"), os_.get("rate"))
        rn, on = _fanout_per_cpu(r), _fanout_per_cpu(o)
        row("a fan-out", "deliveries per server CPU-second (passing steps)", rn, on,
            ratio=ratio(on, rn))  # fmt: skip
        row("a fan-out", "server runqueue wait at saturation", rs.get("server_runqueue_wait_frac"),
            os_.get("server_runqueue_wait_frac"))  # fmt: skip
        rh, oh = r.get("half") or {}, o.get("half") or {}
        p99 = oh.get("latency", {}).get("p99_ms")
        row("a fan-out", "p99 ms at half saturation", rh.get("latency", {}).get("p99_ms"), p99,
            target=f"<= {TARGETS['half_p99_ms']:g} ms",
            met=None if p99 is None else p99 <= TARGETS["half_p99_ms"])  # fmt: skip
        row("a fan-out", "generator CPU at saturation", rs.get("generator_cpu_frac"),
            os_.get("generator_cpu_frac"))  # fmt: skip
        row("a fan-out", "generator CPU us per delivery at saturation", _gen_us(rs),
            _gen_us(os_))  # fmt: skip
    if "chat" in ref or "chat" in org:
        r = ref.get("chat", {}).get("result", {})
        o = org.get("chat", {}).get("result", {})
        rs, os_ = r.get("saturation") or {}, o.get("saturation") or {}
        rr, oo = rs.get("stored_and_delivered_per_s"), os_.get("stored_and_delivered_per_s")
        row("b chat", "stored+delivered msgs/s (500 rooms x 2)", rr, oo, ratio=ratio(oo, rr),
            target=f">= {TARGETS['chat']}x", met=_met(ratio(oo, rr), TARGETS["chat"]),
            limit=f"ref: {limit_of(rs)}; orgcast: {limit_of(os_)}")  # fmt: skip
        rn = per_cpu(rs, "stored_and_delivered_per_s")
        on = per_cpu(os_, "stored_and_delivered_per_s")
        row("b chat", "messages per server CPU-second", rn, on, ratio=ratio(on, rn))
        row("b chat", "server runqueue wait at saturation", rs.get("server_runqueue_wait_frac"),
            os_.get("server_runqueue_wait_frac"))  # fmt: skip
        rh, oh = r.get("half") or {}, o.get("half") or {}
        p99 = oh.get("latency", {}).get("p99_ms")
        row("b chat", "delivery p99 ms at half saturation", rh.get("latency", {}).get("p99_ms"),
            p99, target=f"<= {TARGETS['half_p99_ms']:g} ms",
            met=None if p99 is None else p99 <= TARGETS["half_p99_ms"])  # fmt: skip
        row("b chat", "postgres backend CPU s", None,
            org.get("chat", {}).get("server", {}).get("postgres_cpu_s"))  # fmt: skip
    for scenario, label in (("lowfan", "f low fan-out"), ("lowrooms", "g low rooms")):
        if scenario in ref or scenario in org:
            r = ref.get(scenario, {}).get("result", {})
            o = org.get(scenario, {}).get("result", {})
            what = "1 room x 200 @ 50 msg/s" if scenario == "lowfan" else "1000 x 100 rooms @ 500/s"
            row(label, f"delivery p50 / p99 ms ({what})", _pair(r.get("latency")),
                _pair(o.get("latency")))  # fmt: skip
            row(label, "ack p50 / p99 ms", _pair(r.get("ack_latency")),
                _pair(o.get("ack_latency")))  # fmt: skip
            row(label, "server / generator CPU (1.0 = one core)",
                _cpus(r), _cpus(o))  # fmt: skip
    if "recovery" in ref or "recovery" in org:
        r = ref.get("recovery", {}).get("result", {})
        o = org.get("recovery", {}).get("result", {})
        rr, oo = r.get("median_ms"), o.get("median_ms")
        row("d recovery", "join since: replay 10,000 msgs, ms", rr, oo, ratio=ratio(rr, oo))
    if "tenants" in ref or "tenants" in org:
        rst = ref.get("tenants", {}).get("stages", [])
        ost = org.get("tenants", {}).get("stages", [])
        warm = []
        for i, scale in enumerate((10, 1000, 10_000)):
            rw = rst[i]["result"] if i < len(rst) else {}
            ow = ost[i]["result"] if i < len(ost) else {}
            ow_p50 = ow.get("warm", {}).get("p50_ms")
            warm.append(ow_p50)
            row("e tenants", f"connect p50/p99 ms, {scale:,} tenants (warm)",
                _pair(rw.get("warm")), _pair(ow.get("warm")))  # fmt: skip
            row("e tenants", f"first connect p50/max ms, {scale:,} tenants (cold)",
                _pair(rw.get("cold"), "max_ms"), _pair(ow.get("cold"), "max_ms"))  # fmt: skip
        # The reference has no tenants: its spread is the noise floor of this machine.
        ref_warm = [s["result"].get("warm", {}).get("p50_ms") for s in rst]
        if all(warm):
            spread = max(warm) / min(warm) - 1
            ref_spread = f"{max(ref_warm) / min(ref_warm) - 1:+.0%}" if all(ref_warm) else None
            row("e tenants", "warm p50 max/min - 1, 10 -> 10,000 tenants", ref_spread,
                f"{spread:+.0%}", target="<= 20%",
                met=spread <= TARGETS["tenant_flatness"])  # fmt: skip
    return rows


def _gen_us(step: dict[str, Any]) -> float | None:
    """The generator's CPU per delivery in one step, microseconds."""
    if not step.get("received") or "generator_cpu_s" not in step:
        return None
    return round(step["generator_cpu_s"] / step["received"] * 1e6, 2)


def _cpus(result: dict[str, Any]) -> str | None:
    if "server_cpu_frac" not in result:
        return None
    return f"{result['server_cpu_frac']:.2f} / {result.get('generator_cpu_frac', 0):.2f}"


def _fanout_per_cpu(result: dict[str, Any]) -> int | None:
    """Deliveries per server CPU-second over every passing step: many samples, so less noise."""
    steps = [x for x in result.get("steps", []) if x.get("pass") and x.get("server_cpu_s")]
    cpu = sum(x["server_cpu_s"] for x in steps)
    return round(sum(x["deliveries_per_s"] * x["wall_s"] for x in steps) / cpu) if cpu else None


def _storm_per_cpu(result: dict[str, Any]) -> int | None:
    rates = sorted(v for v in (per_cpu(r, "connects_per_s") for r in result.get("rounds", [])) if v)
    return rates[len(rates) // 2] if rates else None


def per_cpu(step: dict[str, Any], key: str) -> int | None:
    """Throughput per second of server CPU: robust to CPU time taken by other processes."""
    cpu = step.get("server_cpu_frac")
    return round(step[key] / cpu) if cpu and step.get(key) else None


def _pair(summary: dict[str, Any] | None, high: str = "p99_ms") -> str | None:
    if not summary or not summary.get("n"):
        return None
    return f"{summary['p50_ms']:.2f} / {summary[high]:.2f}"


def _met(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def combine(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per figure: python-socketio, Node and orgcast, orgcast's ratio to each reference.
    Targets (and "met") are the round-1 ones, against python-socketio."""
    py = {(r["scenario"], r["metric"]): r for r in summarize(results, "reference")}
    node = {(r["scenario"], r["metric"]): r for r in summarize(results, "node")}
    rows = []
    for key in [*py, *(k for k in node if k not in py)]:
        r, n = py.get(key, {}), node.get(key, {})
        limit = (r.get("limit") or "").replace("ref: ", "python: ") or None
        if (n.get("limit") or "").startswith("ref: ") and "node" in results:
            node_limit = n["limit"].split("; ")[0].removeprefix("ref: ")
            limit = f"{limit}; node: {node_limit}" if limit else f"node: {node_limit}"
        rows.append(
            {
                "scenario": key[0],
                "metric": key[1],
                "python": r.get("reference"),
                "node": n.get("reference"),
                "orgcast": r.get("orgcast", n.get("orgcast")),
                "ratio_python": r.get("ratio"),
                "ratio_node": n.get("ratio"),
                "target": r.get("target", ""),
                "met": r.get("met"),
                "limit": limit,
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    headers = ["scenario", "metric", "python-socketio", "node socket.io", "orgcast",
               "orgcast/python", "orgcast/node", "target", "met"]  # fmt: skip
    cells = []
    for r in rows:
        met = r.get("met")
        cells.append(
            [
                r["scenario"],
                r["metric"],
                _fmt(r.get("python")),
                _fmt(r.get("node")),
                _fmt(r.get("orgcast")),
                _fmt(r.get("ratio_python")),
                _fmt(r.get("ratio_node")),
                r.get("target", ""),
                "" if met is None else ("yes" if met else "NO"),
            ]
        )
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) + " |"
        for cell in cells
    ]
    limits = [f"- {r['scenario']}: {r['limit']}" for r in rows if r.get("limit")]
    if not cells:
        return "(no results)"
    return "\n".join([line, rule, *body, "", "What limited each result:", *limits])


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# -- A/B ----------------------------------------------------------------------------------------


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    label, _, pairs = text.partition(":")
    overrides = dict(p.split("=", 1) for p in pairs.split(",") if "=" in p)
    if not label or not overrides:
        raise SystemExit(f"--variant {text!r}: expected LABEL:KEY=VAL[,KEY=VAL]")
    return label, overrides


def _runs(target: dict[str, Any], scenario: str) -> list[dict[str, Any]]:
    runs = target.get(scenario + "_runs") or ([target[scenario]] if scenario in target else [])
    return [r for r in runs if "error" not in r]


def _median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def ab_metrics(scenario: str, run: dict[str, Any]) -> dict[str, float | None]:
    """The headline figures of one run of a scenario."""
    r = run.get("result", {})
    if scenario == "fanout":
        sat, half = r.get("saturation") or {}, r.get("half") or {}
        return {
            "fan-out deliveries/s": sat.get("deliveries_per_s"),
            "fan-out deliveries per server CPU-s": _fanout_per_cpu(r),
            "fan-out p99 ms at half saturation": (half.get("latency") or {}).get("p99_ms"),
        }
    if scenario == "chat":
        sat, half = r.get("saturation") or {}, r.get("half") or {}
        return {
            "chat stored+delivered/s": sat.get("stored_and_delivered_per_s"),
            "chat msgs per server CPU-s": per_cpu(sat, "stored_and_delivered_per_s"),
            "chat ack p50 ms at saturation": (sat.get("ack_latency") or {}).get("p50_ms"),
            "chat p50 ms at half saturation": (half.get("latency") or {}).get("p50_ms"),
            "chat p99 ms at half saturation": (half.get("latency") or {}).get("p99_ms"),
            "chat webhook backlog drained ms (after saturation)": sat.get("drain_ms"),
            "chat webhook lag p50 ms (half saturation)": (run.get("webhooks") or {}).get(
                "half_lag_p50_ms"
            ),
            "chat webhook lag p99 ms (half saturation)": (run.get("webhooks") or {}).get(
                "half_lag_p99_ms"
            ),
            "chat webhook lag p50 ms (2nd half of it)": (run.get("webhooks") or {}).get(
                "steady_lag_p50_ms"
            ),
            "chat webhook lag p99 ms (2nd half of it)": (run.get("webhooks") or {}).get(
                "steady_lag_p99_ms"
            ),
            "chat webhook lag p99 ms (whole run)": (run.get("webhooks") or {}).get("lag_p99_ms"),
        }
    if scenario == "storm":
        return {
            "storm connects/s": r.get("median_connects_per_s"),
            "storm connects per server CPU-s": _storm_per_cpu(r),
        }
    if scenario in ("lowfan", "lowrooms"):
        lat, ack = r.get("latency") or {}, r.get("ack_latency") or {}
        return {
            f"{scenario} p50 ms": lat.get("p50_ms"),
            f"{scenario} p99 ms": lat.get("p99_ms"),
            f"{scenario} ack p50 ms": ack.get("p50_ms"),
        }
    if scenario == "recovery":
        return {"recovery replay ms": r.get("median_ms")}
    if scenario == "memory":
        return {"memory KB per socket": run.get("kb_per_socket")}
    return {}


def ab_table(results: dict[str, dict[str, Any]]) -> str:
    """Median of each headline figure per server, and each orgcast variant against orgcast."""
    names = [n for n in results if n.startswith("orgcast")] + [
        n for n in ("reference", "node") if n in results
    ]
    medians: dict[str, dict[str, float | None]] = {}
    counts: dict[str, int] = {}
    for name in names:
        for scenario in SCENARIOS:
            runs = _runs(results[name], scenario)
            per_run = [ab_metrics(scenario, run) for run in runs]
            for metric in per_run[0] if per_run else {}:
                medians.setdefault(metric, {})[name] = _median([m[metric] for m in per_run])
                counts[metric] = max(counts.get(metric, 0), len(per_run))
    headers = ["metric (runs)", *names, *(f"{n} / orgcast" for n in names[1:])]
    lines = []
    for metric, by_name in medians.items():
        base_value = by_name.get("orgcast")
        cells = [f"{metric} ({counts[metric]})", *(_fmt(by_name.get(n)) for n in names)]
        cells += [_fmt(ratio(by_name.get(n), base_value)) for n in names[1:]]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
        for cells in lines
    ]
    return "\n".join(out)


# -- main ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run, about four minutes with three servers"
    )
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument(
        "--targets",
        default="reference,node,orgcast",
        help="which servers: reference (python-socketio), node (socket.io), orgcast",
    )
    parser.add_argument(
        "--generator",
        choices=["raw", "official"],
        default="raw",
        help="fanout, lowfan, lowrooms on the raw generator (rawgen.c, default) or the official"
        " client (loadgen.mjs); the other scenarios always use the official client",
    )
    parser.add_argument(
        "--features",
        action="store_true",
        help="also run orgcast with each of round 2's features off (ordering, webhooks"
        " outbox, metrics, token expiry): on/off ratios in the A/B table",
    )
    parser.add_argument("--summarize", type=Path, help="print the table of a saved results file")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL:KEY=VAL[,KEY=VAL]",
        help="also run orgcast with these environment settings (A/B), e.g. "
        "nofan:ORGCAST_SERVER__DIRECT_FANOUT=false; repeatable",
    )
    parser.add_argument(
        "--repeats", type=int, help="run every scenario this many times per server (alternating)"
    )
    parser.add_argument(
        "--memory-clients", type=int, help="official clients the memory scenario holds (2,000)"
    )
    args = parser.parse_args()
    if args.summarize:
        saved = json.loads(args.summarize.read_text())
        print(table(combine(saved["results"])))
        if any(n.startswith("orgcast:") for n in saved["results"]) or any(
                k.endswith("_runs") for k in saved["results"].get("orgcast", {})):  # fmt: skip
            print("\nA/B (median over runs):\n" + ab_table(saved["results"]))
        return 0
    # A timeout's SIGTERM stops the servers and drops the databases, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    variants = [parse_variant(v) for v in args.variant]
    if args.features:
        variants += [parse_variant(v) for v in FEATURE_VARIANTS]
    requested = {s for s in args.only.split(",") if s}
    unknown = requested - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    # Always in SCENARIOS order: memory must come first, before other scenarios grow the heap
    # (a heap that once held more sockets absorbs new ones without growing: 0 KB per socket).
    only = [s for s in SCENARIOS if s in requested]
    names = [t for t in args.targets.split(",") if t]
    profile = PROFILES["quick" if args.quick else "full"]
    if args.repeats:
        profile = {**profile, "repeats": {s: args.repeats for s in SCENARIOS}}
    if args.memory_clients:
        profile = {**profile, "memory": {**profile["memory"], "clients": args.memory_clients}}
    for module in ("socket.io-client", "socket.io"):
        if not (ROOT / "node_modules" / module).is_dir():
            print(f"run `npm ci` first (node_modules/{module} is missing)", file=sys.stderr)
            return 1
    unknown_targets = set(names) - {"reference", "node", "orgcast"}
    if unknown_targets:
        parser.error(f"unknown target(s): {', '.join(sorted(unknown_targets))}")
    if args.generator == "raw":
        build_rawgen()

    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, gen_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    info = machine()
    info["pinning"] = {"servers": server_cpu, "generator": gen_cpu}
    log(f"machine: {info['nproc']} CPUs ({info['cpu_model']}), load {info['loadavg_start']}")
    gen = Generator(gen_cpu, raw=args.generator == "raw")
    RECEIVER_CPU[0] = gen_cpu
    db_name = f"orgcast_bench_{secrets.token_hex(4)}"
    data_dir = tempfile.mkdtemp(prefix="orgcast-bench-data-")
    # One database per orgcast (each creates the same benchmark tenant).
    db_names = [db_name] + [f"{db_name}_{i}" for i in range(1, len(variants) + 1)]
    for name in db_names:
        asyncio.run(pg_exec(PG_ADMIN, (f'CREATE DATABASE "{name}"', ())))
    targets: list[Target] = []
    results: dict[str, dict[str, Any]] = {n: {} for n in names}
    results.update({"orgcast:" + label: {} for label, _ in variants})
    started = time.monotonic()
    try:
        if "reference" in names:
            targets.append(start_reference(server_cpu))
        if "node" in names:
            targets.append(start_node_reference(server_cpu))
        if "orgcast" in names:
            targets.append(start_orgcast(server_cpu, pg_dsn(db_name).replace(
                "postgresql://", "postgresql+asyncpg://"), data_dir))  # fmt: skip
        for i, (label, overrides) in enumerate(variants, start=1):
            url = pg_dsn(db_names[i]).replace("postgresql://", "postgresql+asyncpg://")
            variant_dir = tempfile.mkdtemp(prefix="orgcast-bench-data-", dir=data_dir)
            targets.append(
                start_orgcast(server_cpu, url, variant_dir, "orgcast:" + label, overrides)
            )
        for scenario in only:
            runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
            # Memory once per process: a second run finds the heap grown by the first (~0 KB).
            repeats = 1 if scenario == "memory" else profile["repeats"].get(scenario, 1)
            for _ in range(repeats):
                for target in targets:
                    log(f"{scenario} -> {target.name}")
                    t0 = time.monotonic()
                    try:
                        out = RUNNERS[scenario](target, gen, dict(profile[scenario]))
                    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                        log(f"{scenario} on {target.name} failed: {exc}")
                        out = {"error": str(exc)}
                    runs[target.name].append(out)
                    log(f"{scenario} -> {target.name}: {time.monotonic() - t0:.0f}s")
                    time.sleep(1.0)
            for name, outs in runs.items():
                results[name][scenario] = max(outs, key=lambda o: best_key(scenario, o))
                if len(outs) > 1:
                    results[name][scenario + "_runs"] = outs
    finally:
        for target in targets:
            stop(target.proc)
            if "receiver" in target.extra:
                stop(target.extra["receiver"][0])
        for name in db_names:
            drop_database(name)
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(gen.tmp, ignore_errors=True)
    info["loadavg_end"] = list(os.getloadavg())
    rows = combine(results)
    report = {
        "mode": "quick" if args.quick else "full",
        "generator": args.generator,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.monotonic() - started, 1),
        "machine": info,
        "summary": rows,
        "results": results,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{report['mode']}.json"
    out.write_text(json.dumps(report, indent=2))
    print()
    print(
        f"orgcast benchmarks ({report['mode']}), {info['nproc']} CPUs {info['cpu_model']}, "
        f"servers on CPU {server_cpu}, generator on CPU {gen_cpu} "
        f"({args.generator} for fanout/lowfan/lowrooms); "
        f"load {info['loadavg_start'][0]:.2f} -> {info['loadavg_end'][0]:.2f}"
    )
    print(table(rows))
    if variants or max(profile["repeats"].values(), default=1) > 1:
        print("\nA/B (median over runs):\n" + ab_table(results))
    print(f"\nfull results: {out.relative_to(ROOT)}")
    print(json.dumps({"summary": rows, "file": str(out.relative_to(ROOT))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
