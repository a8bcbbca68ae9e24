"""The fault suite's harness: private services to break, clients that trust live delivery, and an
audit of what every client saw against the durable log.

A ``LiveClient`` behaves like an application that believes the contract (DESIGN §11): it joins
its room once, sends with a ``client_id`` and resends the same one after an ``unavailable`` ack or
a lost connection, and calls ``join { since }`` only after its own reconnects. It records every
seq it learns, in arrival order, from live ``message`` events, its own acks and replays. The
audit then reads the database and counts what the contract forbids: acked messages not stored,
duplicates, gaps in seq, hung calls, error codes other than the expected ones, and per client
messages missed, seen twice or seen out of seq order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import socketio

from tests.support import ADMIN_TOKEN, eventually, eventually_sync, free_port

PG_BIN = Path(os.environ.get("ORGCAST_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
CALL_TIMEOUT = 5.0  # an ack that takes longer than this is a hang
EXPECTED_CODES = frozenset({"unavailable"})  # what a fault may answer, besides ok
REPLAY_WINDOW = 2000  # a replay is at most this long (the load is far below it)


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb in a temporary directory, its own port),
    stopped and started with ``pg_ctl`` as the scenarios need. As root, the server runs as the
    ``postgres`` account, which PostgreSQL requires."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise FileNotFoundError(f"{PG_BIN}/initdb (set ORGCAST_TEST_PG_BIN)")
        self.dir = Path(tempfile.mkdtemp(prefix="orgcast-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/orgcast"
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.dir, account.pw_uid, account.pw_gid)
            self._prefix = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._prefix, *argv], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-sync")  # fmt: skip
        self.start()
        self._run(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                  "-U", "postgres", "orgcast")  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir}"
            " -c fsync=off -c synchronous_commit=off -c max_connections=60"
        )
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"),
                  "-o", options, "-w", "-t", "30", "start")  # fmt: skip

    def stop(self) -> None:
        """A fast shutdown: every session is cut, as in a restart or a failover."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                      "-t", "30", "stop")  # fmt: skip

    def running(self) -> bool:
        pid = self.data / "postmaster.pid"
        return pid.exists()

    def destroy(self) -> None:
        if self.running():
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.init()
        yield server
    finally:
        server.destroy()


# -- clients ------------------------------------------------------------------------------------


@dataclass
class Seen:
    seq: int
    how: str  # "live", "missed" or "ack"
    at: float


@dataclass
class LiveClient:
    """One application socket: one room, sends in a closed loop, trusts live delivery."""

    name: str
    urls: list[str]
    slug: str
    token: str
    room: str
    sends: bool = True
    seen: list[Seen] = field(default_factory=list)
    base: int | None = None  # the room's seq at the first join: the client expects what follows
    attempts: int = 0
    acked: dict[str, int] = field(default_factory=dict)  # client_id -> seq
    errors: Counter[str] = field(default_factory=Counter)
    hangs: int = 0
    reconnects: int = 0
    url_index: int = 0
    client: socketio.AsyncClient | None = None
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def namespace(self) -> str:
        return "/" + self.slug

    @property
    def url(self) -> str:
        return self.urls[self.url_index]

    def last_seen(self) -> int:
        return max((s.seq for s in self.seen), default=self.base or 0)

    async def start(self) -> None:
        await self._connect()
        await self._join(since=None)

    async def _connect(self) -> None:
        client = socketio.AsyncClient(reconnection=False)
        self.gone = asyncio.Event()
        client.on("message", self._on_message, namespace=self.namespace)
        client.on("disconnect", lambda *_: self.gone.set(), namespace=self.namespace)
        await client.connect(self.url, namespaces=[self.namespace], auth={"token": self.token},
                             transports=["websocket"], wait_timeout=5)  # fmt: skip
        self.client = client

    def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("room") == self.room:
            self.seen.append(Seen(message["seq"], "live", time.monotonic()))

    async def _call(self, event: str, data: dict[str, Any]) -> dict[str, Any] | None:
        """An acked call whose answer is recorded as it arrives (not when the caller resumes);
        None when the connection went away first. A call that neither answers nor loses its
        connection within ``CALL_TIMEOUT`` is a hang."""
        assert self.client is not None
        answered: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def on_ack(ack: dict[str, Any]) -> None:
            if event == "join" and ack.get("ok"):
                if data.get("since") is None and self.base is None:
                    self.base = ack["seq"]
                now = time.monotonic()
                self.seen.extend(Seen(m["seq"], "missed", now) for m in ack.get("missed", []))
            if event == "message" and ack.get("ok") and data["client_id"] not in self.acked:
                self.acked[data["client_id"]] = ack["seq"]
                # A resend confirms what a replay may already have shown (its own message,
                # stored before the connection was lost): a confirmation, not a delivery.
                if all(s.seq != ack["seq"] for s in self.seen[-REPLAY_WINDOW:]):
                    self.seen.append(Seen(ack["seq"], "ack", time.monotonic()))
            if not answered.done():
                answered.set_result(ack)

        try:
            await self.client.emit(event, data, namespace=self.namespace, callback=on_ack)
        except socketio.exceptions.SocketIOError:
            return None
        gone = asyncio.ensure_future(self.gone.wait())
        try:
            await asyncio.wait({answered, gone}, timeout=CALL_TIMEOUT,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            gone.cancel()
        if answered.done():
            return answered.result()
        if not self.gone.is_set():
            self.hangs += 1
        return None

    async def _join(self, since: int | None) -> None:
        data: dict[str, Any] = {"room": self.room}
        if since is not None:
            data["since"] = since
        ack = await self._call("join", data)
        if ack is None or not ack.get("ok"):
            raise ConnectionError(f"{self.name}: join failed: {ack}")
        if ack.get("truncated"):
            raise AssertionError(f"{self.name}: replay truncated; lower the load")

    async def reconnect(self, within: float = 20.0) -> None:
        """After losing the connection: the next node, then ``join { since: last seen }``."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.disconnect()
        self.reconnects += 1
        deadline = time.monotonic() + within
        while True:
            self.url_index = (self.url_index + 1) % len(self.urls)
            try:
                await self._connect()
                await self._join(since=self.last_seen())
                return
            except (ConnectionError, socketio.exceptions.ConnectionError):
                if time.monotonic() > deadline:
                    raise
                await eventually(lambda: _answers(self.url), within=2)

    async def send_loop(self, stop: asyncio.Event, max_sends: int) -> None:
        """Send until ``stop`` (or ``max_sends``): each message resent under its ``client_id``
        until it is acked, through reconnects."""
        for index in range(max_sends):
            if stop.is_set():
                return
            client_id = f"{self.name}-{index}"
            body = {"from": self.name, "n": index}
            for _ in range(200):  # attempts per message, bounded
                if self.gone.is_set():
                    await self.reconnect()
                self.attempts += 1
                ack = await self._call(
                    "message", {"room": self.room, "body": body, "client_id": client_id}
                )
                if ack is None:
                    continue  # connection lost (resend after reconnecting) or hung (counted)
                if ack.get("ok"):
                    break
                code = ack["error"]["code"]
                self.errors[code] += 1
                if code not in EXPECTED_CODES or stop.is_set():
                    return
                # The store is unavailable: resend once this node says it is ready again.
                await eventually(lambda: _answers(self.url, "/readyz"), within=30)
            else:
                raise AssertionError(f"{self.name}: message {index} never acked")

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.disconnect()


async def _answers(url: str, path: str = "/healthz") -> bool:
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
        async with aiohttp.ClientSession() as http:
            async with http.get(url + path, timeout=aiohttp.ClientTimeout(total=2)) as response:
                return response.status == 200
    return False


# -- administration over HTTP -------------------------------------------------------------------


async def admin(url: str, method: str, path: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with http.request(method, url + path, json=body, headers=headers) as response:
            assert response.status < 300, (response.status, await response.text())
            return await response.json()


async def new_tenant(url: str, slug: str) -> None:
    limits = {"messages_per_second": 10_000}
    await admin(url, "POST", "/api/v1/tenants", {"slug": slug, "name": slug, "limits": limits})


async def token(url: str, slug: str, sub: str) -> str:
    body = await admin(url, "POST", f"/api/v1/tenants/{slug}/tokens", {"sub": sub})
    return str(body["token"])


# -- the audit ----------------------------------------------------------------------------------


@dataclass
class Report:
    scenario: str
    sends: int = 0
    acked: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    stored_twice: int = 0
    gaps: int = 0
    hangs: int = 0
    missed: int = 0  # stored messages of its room a client never saw
    duplicates: int = 0  # seqs a client saw more than once
    out_of_order: int = 0  # seqs a client saw after a later one
    stray: int = 0  # seqs a client saw that were not expected (at or before its join)
    recovery_seconds: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def problems(self) -> dict[str, int]:
        unexpected = sum(n for code, n in self.errors.items() if code not in EXPECTED_CODES)
        counts = {
            "lost": self.lost, "stored_twice": self.stored_twice, "gaps": self.gaps,
            "hangs": self.hangs, "missed": self.missed, "duplicates": self.duplicates,
            "out_of_order": self.out_of_order, "stray": self.stray,
            "unexpected_error_codes": unexpected,
        }  # fmt: skip
        return {name: n for name, n in counts.items() if n}

    def save(self) -> None:
        """Print the numbers, and keep them under ``ORGCAST_FAULT_REPORTS`` when it is set."""
        text = json.dumps(self.__dict__, indent=1, default=str)
        print(text)
        folder = os.environ.get("ORGCAST_FAULT_REPORTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / f"{self.scenario}.json").write_text(text)


async def stored_log(database_url: str, slug: str) -> dict[str, list[tuple[int, str, str | None]]]:
    """room -> [(seq, sender, client_id)] in seq order, read from the database itself."""
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT r.name, m.seq, m.sender_id, m.client_id FROM messages m "
            "JOIN rooms r ON r.id = m.room_id JOIN tenants t ON t.id = m.tenant_id "
            "WHERE t.slug = $1 ORDER BY r.name, m.seq",
            slug,
        )
    finally:
        await connection.close()
    log: dict[str, list[tuple[int, str, str | None]]] = {}
    for row in rows:
        log.setdefault(row["name"], []).append((row["seq"], row["sender_id"], row["client_id"]))
    return log


def caught_up(clients: list[LiveClient], last: dict[str, int]) -> bool:
    return all(c.last_seen() >= last.get(c.room, 0) for c in clients)


async def settle(clients: list[LiveClient], database_url: str, slug: str, within: float) -> None:
    """Wait (bounded) until every client has seen its room's last stored seq; a client that
    never does is counted by the audit, not failed here."""
    log = await stored_log(database_url, slug)
    last = {room: rows[-1][0] for room, rows in log.items()}
    with contextlib.suppress(AssertionError):
        await eventually(lambda: _true(caught_up(clients, last)), within=within)


async def _true(value: bool) -> bool:
    return value


async def audit(report: Report, clients: list[LiveClient], database_url: str, slug: str) -> Report:
    log = await stored_log(database_url, slug)
    for rows in log.values():
        seqs = [seq for seq, _, _ in rows]
        report.gaps += len(set(range(1, seqs[-1] + 1)) - set(seqs))
        keys = Counter((sender, cid) for _, sender, cid in rows if cid is not None)
        report.stored_twice += sum(n - 1 for n in keys.values() if n > 1)
    stored = {(room, seq, sender, cid) for room, rows in log.items() for seq, sender, cid in rows}
    for client in clients:
        report.sends += client.attempts
        report.acked += len(client.acked)
        for code, n in client.errors.items():
            report.errors[code] = report.errors.get(code, 0) + n
        report.hangs += client.hangs
        for cid, seq in client.acked.items():
            if (client.room, seq, client.name, cid) not in stored:
                report.lost += 1
        assert client.base is not None
        expected = [seq for seq, _, _ in log.get(client.room, []) if seq > client.base]
        seen = [s.seq for s in client.seen]
        counts = Counter(seen)
        report.duplicates += sum(n - 1 for n in counts.values() if n > 1)
        report.missed += len(set(expected) - set(seen))
        report.stray += len(set(seen) - set(expected))
        highest = 0
        for item in client.seen:
            if item.seq < highest:
                report.out_of_order += 1
                kinds = report.notes.setdefault("out_of_order_by_kind", {})
                kinds[item.how] = kinds.get(item.how, 0) + 1
            highest = max(highest, item.seq)
    report.notes["reconnects"] = sum(c.reconnects for c in clients)
    report.notes["rooms"] = {room: len(rows) for room, rows in log.items()}
    return report


def log_lines(path: Path) -> dict[str, int]:
    """How much a node wrote to its log, and how many tracebacks."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return {"lines": text.count("\n"), "tracebacks": text.count("Traceback")}


__all__ = [
    "LiveClient",
    "PrivatePostgres",
    "Report",
    "audit",
    "eventually_sync",
    "new_tenant",
    "private_postgres",
    "settle",
    "token",
]
