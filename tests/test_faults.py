"""The fault suite: two ``orgcast serve`` nodes under load while PostgreSQL restarts, a node is
killed, or Redis goes away, with clients that trust live delivery (DESIGN §11).

Each scenario asserts from the durable log: no acked message lost, none stored twice, no gap in
seq, no hung call, only expected error codes, and every client saw every stored message of its
room exactly once, in seq order. The numbers are printed (and kept as JSON under
``ORGCAST_FAULT_REPORTS`` when set): benchmarks/RESULTS.md quotes them. The broken services are
private (a PostgreSQL cluster in a temporary directory, a redis-server on a free port), restored
in ``finally``; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import socketio

from tests.conftest import IN_CI
from tests.faults import (
    PG_BIN,
    LiveClient,
    Report,
    audit,
    log_lines,
    new_tenant,
    private_postgres,
    settle,
    token,
)
from tests.nodes import NodeProcess, private_redis
from tests.support import eventually

TTL = 2.0
SENDS = 1500  # per client, a bound: the scenarios stop the senders long before
ROOMS = ("alpha", "beta")

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]


def _need(binary: str) -> None:
    """The fault suite breaks private servers: their binaries must exist (a failure in CI)."""
    if shutil.which(binary) is None and not Path(binary).exists():
        message = f"the fault suite needs {binary}"
        if IN_CI:
            pytest.fail(f"{message}: CI requires it", pytrace=False)
        pytest.skip(message)


@contextlib.asynccontextmanager
async def cluster(
    database_url: str, data_dir: Path, redis_url: str, channel: str
) -> AsyncIterator[list[NodeProcess]]:
    env = {
        "ORGCAST_REDIS__URL": redis_url,
        "ORGCAST_REDIS__CHANNEL": channel,
        "ORGCAST_REDIS__NODE_TTL_SECONDS": str(TTL),
        "ORGCAST_DATABASE__POOL_SIZE": "5",
    }
    nodes = []
    try:
        for name in ("a", "b"):
            folder = data_dir / name
            folder.mkdir(parents=True, exist_ok=True)
            nodes.append(NodeProcess(database_url, folder, **env))
            await nodes[-1].ready()  # one at a time: the first migrates the database
        yield nodes
    finally:
        for node in nodes:
            node.stop()


async def _clients(nodes: list[NodeProcess], slug: str) -> list[LiveClient]:
    """Two senders per room on each node; each falls back to the other node."""
    urls = [node.url for node in nodes]
    clients = []
    for room in ROOMS:
        for index, url in enumerate(urls * 2):
            name = f"{room}-{index}"
            others = [u for u in urls if u != url]
            clients.append(
                LiveClient(name, [url, *others], slug, await token(url, slug, name), room)
            )
    await asyncio.gather(*(c.start() for c in clients))
    return clients


def _acked(clients: list[LiveClient]) -> int:
    return sum(len(c.acked) for c in clients)


async def _until(predicate: Callable[[], bool], within: float) -> bool:
    """Wait for a condition of the load (bounded); False if it did not come."""

    async def holds() -> bool:
        return predicate()

    try:
        await eventually(holds, within=within)
    except AssertionError:
        return False
    return True


async def _run(
    scenario: str,
    nodes: list[NodeProcess],
    database_url: str,
    fault: Callable[[list[LiveClient], Report], Awaitable[None]],
) -> Report:
    slug = f"f-{uuid.uuid4().hex[:10]}"
    await new_tenant(nodes[0].url, slug)
    clients = await _clients(nodes, slug)
    report = Report(scenario)
    stop = asyncio.Event()
    senders = [asyncio.create_task(c.send_loop(stop, SENDS)) for c in clients]
    try:
        assert await _until(lambda: _acked(clients) >= 100, within=20), "no load"
        await fault(clients, report)
    finally:
        stop.set()
        done, pending = await asyncio.wait(senders, timeout=20)
        for task in pending:
            task.cancel()
        report.notes["senders_failed"] = [repr(t.exception()) for t in done if t.exception()]
        report.hangs += len(pending)
    await settle(clients, database_url, slug, within=10)
    for client in clients:
        await client.close()
    await audit(report, clients, database_url, slug)
    report.notes["node_logs"] = [log_lines(node.log) for node in nodes]
    report.save()
    return report


def _recovery(clients: list[LiveClient], since: float) -> float | None:
    """Seconds from ``since`` to the first ack after it."""
    times = [s.at for c in clients for s in c.seen if s.how == "ack" and s.at > since]
    return round(min(times) - since, 3) if times else None


async def test_postgresql_restart_under_load_loses_nothing_and_every_client_sees_every_message(
    tmp_path: Path, redis_url: str, redis_channel: str
) -> None:
    _need(str(PG_BIN / "initdb"))
    with private_postgres() as postgres:
        async with cluster(postgres.url, tmp_path, redis_url, redis_channel) as nodes:

            async def restart(clients: list[LiveClient], report: Report) -> None:
                await asyncio.to_thread(postgres.stop)
                report.notes["refused_while_down"] = await _until(
                    lambda: sum(c.errors["unavailable"] for c in clients) >= 8, within=15
                )
                await asyncio.to_thread(postgres.start)
                back = time.monotonic()
                acked = _acked(clients)
                await _until(lambda: _acked(clients) >= acked + 200, within=20)
                report.recovery_seconds = _recovery(clients, back)

            report = await _run("postgresql_restart", nodes, postgres.url, restart)
    assert report.problems() == {}, report
    assert report.errors.get("unavailable", 0) > 0


async def test_node_killed_under_load_loses_nothing_and_every_client_sees_every_message(
    pg_database: str, tmp_path: Path, redis_url: str, redis_channel: str
) -> None:
    async with cluster(pg_database, tmp_path, redis_url, redis_channel) as nodes:
        doomed = nodes[1]
        ghost = socketio.AsyncClient(reconnection=False)

        async def kill(clients: list[LiveClient], report: Report) -> None:
            slug = clients[0].slug
            ns = "/" + slug
            await ghost.connect(doomed.url, namespaces=[ns], transports=["websocket"],
                                auth={"token": await token(doomed.url, slug, "ghost")})  # fmt: skip
            assert (await ghost.call("join", {"room": ROOMS[0]}, namespace=ns))["ok"]
            victims = [c for c in clients if c.url == doomed.url]
            killed = time.monotonic()
            doomed.kill()
            watcher = next(c for c in clients if c.url != doomed.url and c.room == ROOMS[0])

            async def ghost_gone() -> bool:
                assert watcher.client is not None
                ack = await watcher.client.call("presence", {"room": ROOMS[0]}, namespace=ns)
                return "ghost" not in {m["id"] for m in ack["members"]}

            await eventually(ghost_gone, within=TTL * 2 + 5)
            report.notes["dead_node_presence_seconds"] = round(time.monotonic() - killed, 3)
            await _until(lambda: all(v.reconnects for v in victims), within=20)
            acked = _acked(clients)
            await _until(lambda: _acked(clients) >= acked + 200, within=20)
            firsts = [
                min((s.at for s in v.seen if s.how == "ack" and s.at > killed), default=None)
                for v in victims
            ]
            if None not in firsts:
                report.recovery_seconds = round(max(firsts) - killed, 3)  # type: ignore[type-var]

        try:
            report = await _run("node_sigkill", nodes, pg_database, kill)
        finally:
            with contextlib.suppress(Exception):
                await ghost.disconnect()
    assert report.problems() == {}, report


async def test_redis_outage_under_load_delivers_everything_live_and_presence_recovers(
    pg_database: str, tmp_path: Path
) -> None:
    _need("redis-server")
    # Redis comes back with its data, as after a failover: stale entries stay unless removed.
    with private_redis(tmp_path) as redis_server:
        async with cluster(pg_database, tmp_path, redis_server.url, "outage") as nodes:
            leaver = socketio.AsyncClient(reconnection=False)
            late_leaver = socketio.AsyncClient(reconnection=False)

            async def outage(clients: list[LiveClient], report: Report) -> None:
                slug = clients[0].slug
                ns = "/" + slug
                for user, client, node in [("leaver", leaver, nodes[1]),
                                           ("late-leaver", late_leaver, nodes[0])]:  # fmt: skip
                    auth = {"token": await token(node.url, slug, user)}
                    await client.connect(node.url, namespaces=[ns], transports=["websocket"],
                                         auth=auth)  # fmt: skip
                    assert (await client.call("join", {"room": ROOMS[0]}, namespace=ns))["ok"]
                await asyncio.to_thread(redis_server.stop)
                acked = _acked(clients)
                await leaver.disconnect()  # departs while Redis cannot hear it
                await _until(lambda: _acked(clients) >= acked + 300, within=20)
                await asyncio.to_thread(redis_server.start)
                back = time.monotonic()
                await late_leaver.disconnect()  # departs as Redis returns (stale connections)
                acked = _acked(clients)
                await _until(lambda: _acked(clients) >= acked + 200, within=20)
                report.recovery_seconds = _cross_node_recovery(clients, nodes[0].url, back)

                expected = sorted(c.name for c in clients if c.room == ROOMS[0])
                listed: dict[str, list[str]] = {}

                async def presence_right() -> bool:
                    for client in clients:
                        if client.room != ROOMS[0] or client.client is None:
                            continue
                        ack = await client.client.call("presence", {"room": ROOMS[0]},
                                                       namespace=ns)  # fmt: skip
                        listed[client.url] = sorted(m["id"] for m in ack["members"])
                    return all(ids == expected for ids in listed.values())

                try:
                    report.notes["presence_right_after_seconds"] = round(
                        await eventually(presence_right, within=TTL * 2 + 3), 3
                    )
                except AssertionError:
                    report.notes["presence_wrong"] = listed

            report = await _run("redis_outage", nodes, pg_database, outage)
    assert report.problems() == {}, report
    assert "presence_wrong" not in report.notes, report.notes


def _cross_node_recovery(clients: list[LiveClient], sender_url: str, back: float) -> float | None:
    """Seconds from Redis's return until the first message acked on one node after it was seen
    live by every client of that room on the other node."""
    for first in sorted(
        (s.at, s.seq, c.room)
        for c in clients
        if c.url == sender_url
        for s in c.seen
        if s.how == "ack" and s.at > back
    ):
        _, seq, room = first
        receivers = [c for c in clients if c.room == room and c.url != sender_url]
        times = [next((s.at for s in c.seen if s.seq == seq), None) for c in receivers]
        if receivers and None not in times:
            return round(max(times) - back, 3)  # type: ignore[type-var]
        return None
    return None
