"""Durability: nothing acknowledged is ever lost or repeated, across restarts, crashes and nodes.

Besides in-process nodes (``start_server``) these tests run real ``orgcast serve`` processes, so a
crash is a real ``SIGKILL`` and two nodes really share one PostgreSQL database through two
connection pools. Without Redis the processes do not relay broadcasts to each other: only acks and
storage are compared across them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import socketio
from sqlalchemy.engine import make_url

from tests.support import (
    ADMIN_TOKEN,
    allow_connections,
    eventually,
    free_port,
    node_settings,
    pg_admin_url,
    start_server,
    unique_slug,
)

REPO = Path(__file__).resolve().parents[1]
ORGCAST = REPO / ".venv" / "bin" / "orgcast"


def needs_postgres(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("two processes sharing one database is a PostgreSQL deployment")


# -- helpers --------------------------------------------------------------------------------------


@dataclass
class Process:
    """An ``orgcast serve`` subprocess and an HTTP session to it."""

    url: str
    proc: asyncio.subprocess.Process
    log: Path
    http: aiohttp.ClientSession

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with self.http.request(method, self.url + path, headers=headers, **kwargs) as resp:
            return resp.status, await resp.json()

    async def connect(self, slug: str, sub: str) -> socketio.AsyncClient:
        status, body = await self.request(
            "POST", f"/api/v1/tenants/{slug}/tokens", json={"sub": sub}
        )
        assert status == 200, body
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(
            self.url,
            namespaces=[f"/{slug}"],
            auth={"token": body["token"]},
            transports=["websocket"],
            wait_timeout=5,
        )
        return client


@contextlib.asynccontextmanager
async def serve_process(database_url: str, data_dir: Path) -> AsyncIterator[Process]:
    """Start ``orgcast serve --migrate`` and wait (bounded) until /readyz answers 200."""
    port = free_port()
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    log = data_dir / "serve.log"
    env = {
        **os.environ,
        "ORGCAST_DATABASE__URL": database_url,
        "ORGCAST_ADMIN__TOKEN": ADMIN_TOKEN,
        "ORGCAST_DATA_DIR": str(data_dir),
        "ORGCAST_MESSAGES__RETENTION_INTERVAL_SECONDS": "3600",
    }
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(ORGCAST), "serve", "--host", "127.0.0.1", "--port", str(port), "--migrate",
            stdout=out, stderr=out, env=env, cwd=REPO,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await _wait_ready(http, url, proc, log)
            yield Process(url, proc, log, http)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _wait_ready(
    http: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process, log: Path
) -> None:
    async def ready() -> bool:
        if proc.returncode is not None:
            raise AssertionError("orgcast serve exited")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url + "/readyz") as response:
                return response.status == 200
        return False

    try:
        await eventually(ready, within=30)
    except AssertionError as exc:
        output = await asyncio.to_thread(log.read_text)
        raise AssertionError(
            f"orgcast serve did not become ready ({exc}):\n{output[-3000:]}"
        ) from None


async def join(client: socketio.AsyncClient, slug: str, room: str, since: int | None = None) -> Any:
    payload: dict[str, Any] = {"room": room}
    if since is not None:
        payload["since"] = since
    ack = await client.call("join", payload, namespace=f"/{slug}", timeout=10)
    assert ack["ok"] is True, ack
    return ack


async def send(
    client: socketio.AsyncClient, slug: str, room: str, body: Any, within: float = 10
) -> Any:
    return await client.call(
        "message", {"room": room, "body": body}, namespace=f"/{slug}", timeout=within
    )


class Heard:
    """The ``message`` broadcasts one client receives, in arrival order."""

    def __init__(self, client: socketio.AsyncClient, slug: str) -> None:
        self.items: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        client.on("message", self._add, namespace=f"/{slug}")

    def _add(self, message: dict[str, Any]) -> None:
        self.items.append(message)
        self._arrived.set()

    @property
    def seqs(self) -> list[int]:
        return [m["seq"] for m in self.items]

    async def until(self, count: int, within: float = 10) -> None:
        """Wait (bounded) until ``count`` broadcasts have arrived."""
        async with asyncio.timeout(within):
            while len(self.items) < count:
                self._arrived.clear()
                await self._arrived.wait()


async def disconnect(*clients: socketio.AsyncClient) -> None:
    for client in clients:
        with contextlib.suppress(Exception):
            await client.disconnect()


# -- restarts --------------------------------------------------------------------------------------


async def test_rejoin_since_after_a_restart_delivers_each_acked_message_once_in_order(
    database_url: str, tmp_path: Path
) -> None:
    room = "journal"
    acked: dict[int, Any] = {}
    async with start_server(node_settings(database_url, tmp_path / "one")) as first:
        tenant = await first.create_tenant()
        alice = await first.connect(tenant.slug, await first.token(tenant.slug, sub="alice"))
        bob = await first.connect(tenant.slug, await first.token(tenant.slug, sub="bob"))
        heard = Heard(bob, tenant.slug)
        await join(alice, tenant.slug, room)
        await join(bob, tenant.slug, room)
        for n in range(10):
            ack = await send(alice, tenant.slug, room, {"n": n})
            acked[ack["seq"]] = {"n": n}
        await heard.until(10)
        await bob.disconnect()
        last_seen = max(heard.seqs)
        # While bob is away: more from alice and two from the tenant backend.
        for n in range(10, 15):
            ack = await send(alice, tenant.slug, room, {"n": n})
            acked[ack["seq"]] = {"n": n}
        for n in range(15, 17):
            status, body = await first.request(
                "POST",
                f"/api/v1/tenants/{tenant.slug}/rooms/{room}/messages",
                json={"body": {"n": n}},
            )
            assert status == 201, body
            acked[body["seq"]] = {"n": n}

    async with start_server(node_settings(database_url, tmp_path / "two")) as second:
        bob = await second.connect(tenant.slug, await second.token(tenant.slug, sub="bob"))
        replayed = Heard(bob, tenant.slug)
        ack = await join(bob, tenant.slug, room, since=last_seen)
        alice = await second.connect(tenant.slug, await second.token(tenant.slug, sub="alice"))
        await join(alice, tenant.slug, room)
        for n in range(17, 20):
            sent = await send(alice, tenant.slug, room, {"n": n})
            acked[sent["seq"]] = {"n": n}
        await replayed.until(3)

    assert last_seen == 10
    assert (ack["seq"], ack["truncated"]) == (17, False)
    assert "expired" not in ack
    missed = ack["missed"]
    assert [m["seq"] for m in missed] == list(range(11, 18))
    assert replayed.seqs == [18, 19, 20]
    delivered = heard.seqs + [m["seq"] for m in missed] + replayed.seqs
    assert delivered == list(range(1, 21)) == sorted(acked)
    assert [m["body"] for m in heard.items + missed + replayed.items] == [
        acked[s] for s in delivered
    ]


@pytest.mark.postgres
async def test_database_refusing_connections_gives_unavailable_acks_then_seq_resumes(
    pg_database: str, tmp_path: Path
) -> None:
    name = make_url(pg_database).database
    try:
        async with start_server(node_settings(pg_database, tmp_path)) as node:
            tenant = await node.create_tenant()
            client = await node.connect(tenant.slug, await node.token(tenant.slug))
            await join(client, tenant.slug, "ops")
            before = [await send(client, tenant.slug, "ops", n) for n in range(3)]
            assert [a["seq"] for a in before] == [1, 2, 3]

            await allow_connections(pg_admin_url(), name, False)
            down = await asyncio.gather(
                *[send(client, tenant.slug, "ops", f"down {n}", within=30) for n in range(5)]
            )
            status, body = await node.request(
                "POST",
                f"/api/v1/tenants/{tenant.slug}/rooms/ops/messages",
                json={"body": "down rest"},
            )
            ready_status, _ = await node.request("GET", "/readyz")

            await allow_connections(pg_admin_url(), name, True)
            after = [await send(client, tenant.slug, "ops", f"up {n}") for n in range(3)]
            rejoin = await join(client, tenant.slug, "ops", since=0)
    finally:
        await allow_connections(pg_admin_url(), name, True)

    for ack in down:
        assert ack["ok"] is False and ack["error"]["code"] == "unavailable", ack
    assert (status, body["error"]["code"]) == (503, "unavailable"), body
    assert ready_status == 503
    assert [a["ok"] for a in after] == [True, True, True], after
    assert [a["seq"] for a in after] == [4, 5, 6]
    assert [m["body"] for m in rejoin["missed"]] == [0, 1, 2, "up 0", "up 1", "up 2"]
    assert [m["seq"] for m in rejoin["missed"]] == [1, 2, 3, 4, 5, 6]


async def test_the_writer_losing_its_connection_fails_at_most_the_batch_in_flight(
    pg_database: str, tmp_path: Path
) -> None:
    """The writer keeps one connection for its statements: when the server ends it (the
    database itself stays up), the next batch answers ``unavailable`` or is stored on a fresh
    connection, and seq goes on without a gap."""
    name = make_url(pg_database).database
    admin = await asyncpg.connect(
        make_url(pg_admin_url()).set(drivername="postgresql").render_as_string(False)
    )
    try:
        async with start_server(node_settings(pg_database, tmp_path)) as node:
            tenant = await node.create_tenant()
            client = await node.connect(tenant.slug, await node.token(tenant.slug))
            await join(client, tenant.slug, "ops")
            before = [await send(client, tenant.slug, "ops", n) for n in range(3)]
            ended = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
                name,
            )
            after = [await send(client, tenant.slug, "ops", f"after {n}") for n in range(4)]
            rejoin = await join(client, tenant.slug, "ops", since=0)
    finally:
        await admin.close()

    assert [a["seq"] for a in before] == [1, 2, 3]
    assert ended >= 1
    failed = [a for a in after if not a["ok"]]
    assert len(failed) <= 1 and all(a["error"]["code"] == "unavailable" for a in failed), after
    stored = [a["seq"] for a in after if a["ok"]]
    assert stored == list(range(4, 4 + len(stored))) and len(stored) >= 3, after
    assert [m["seq"] for m in rejoin["missed"]] == list(range(1, 4 + len(stored)))


# -- separate processes ---------------------------------------------------------------------------


@pytest.mark.postgres
async def test_two_server_processes_on_one_database_assign_unique_gap_free_seq(
    database_url: str, tmp_path: Path
) -> None:
    needs_postgres(database_url)
    async with (
        serve_process(database_url, tmp_path / "a") as a,
        serve_process(database_url, tmp_path / "b") as b,
    ):
        slug = unique_slug("two")
        status, body = await a.request(
            "POST", "/api/v1/tenants", json={"slug": slug, "name": "Two"}
        )
        assert status == 201, body
        clients = [await node.connect(slug, f"u{i}") for i in range(3) for node in (a, b)]
        try:
            for client in clients:
                await join(client, slug, "shared")
            sends = [
                send(client, slug, "shared", {"c": i, "n": n})
                for n in range(20)
                for i, client in enumerate(clients)
            ]
            acks = await asyncio.gather(*sends)
            status, page = await b.request(
                "GET", f"/api/v1/tenants/{slug}/rooms/shared/messages?after_seq=0&limit=100"
            )
            status2, page2 = await a.request(
                "GET", f"/api/v1/tenants/{slug}/rooms/shared/messages?after_seq=100&limit=100"
            )
        finally:
            await disconnect(*clients)

    assert all(ack["ok"] is True for ack in acks), [a for a in acks if not a["ok"]]
    assert sorted(ack["seq"] for ack in acks) == list(range(1, 121))
    assert (status, status2) == (200, 200)
    stored = page["messages"] + page2["messages"]
    assert [m["seq"] for m in stored] == list(range(1, 121))
    assert {m["id"] for m in stored} == {ack["id"] for ack in acks}
    assert len({(m["body"]["c"], m["body"]["n"]) for m in stored}) == 120


async def test_kill_9_mid_stream_loses_no_acked_message_on_replay_from_another_process(
    database_url: str, tmp_path: Path
) -> None:
    if sys.platform == "win32":
        pytest.skip("SIGKILL is POSIX")
    room = "stream"
    acked: dict[int, Any] = {}
    async with serve_process(database_url, tmp_path / "victim") as victim:
        slug = unique_slug("kill")
        status, body = await victim.request(
            "POST", "/api/v1/tenants", json={"slug": slug, "name": "Kill"}
        )
        assert status == 201, body
        senders = [await victim.connect(slug, f"s{i}") for i in range(3)]
        listener = await victim.connect(slug, "listener")
        heard = Heard(listener, slug)
        for client in [*senders, listener]:
            await join(client, slug, room)
        enough = asyncio.Event()

        async def stream(client: socketio.AsyncClient, index: int) -> None:
            for n in range(200):
                try:
                    ack = await send(client, slug, room, {"s": index, "n": n}, within=3)
                except (socketio.exceptions.SocketIOError, TimeoutError):
                    return  # the node is gone
                if not ack["ok"]:
                    return
                acked[ack["seq"]] = {"s": index, "n": n}
                if len(acked) >= 45:
                    enough.set()

        streams = [asyncio.create_task(stream(c, i)) for i, c in enumerate(senders)]
        await asyncio.wait_for(enough.wait(), 30)
        victim.proc.kill()  # SIGKILL: no drain, no goodbye
        await victim.proc.wait()
        await asyncio.gather(*streams)
        await disconnect(*senders, listener)
    last_seen = max(heard.seqs, default=0)

    async with serve_process(database_url, tmp_path / "heir") as heir:
        listener = await heir.connect(slug, "listener")
        try:
            ack = await join(listener, slug, room, since=last_seen)
            full = await join(listener, slug, room, since=0)
            more = await send(listener, slug, room, "after the crash")
        finally:
            await disconnect(listener)

    stored = {m["seq"]: m["body"] for m in full["missed"]}
    top = full["seq"]
    assert top >= max(acked)
    assert sorted(stored) == list(range(1, top + 1))
    for seq, body in acked.items():
        assert stored[seq] == body
    # The listener's broadcasts and its replay join up with no gap and no repeat.
    assert heard.seqs == list(range(1, last_seen + 1))
    assert [m["seq"] for m in ack["missed"]] == list(range(last_seen + 1, top + 1))
    assert more["ok"] is True and more["seq"] == top + 1, more
