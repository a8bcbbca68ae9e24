"""Lean engine sockets (realtime/patches.py, 6): the per-socket queue, the shared ping timer and the
websocket read loop keep python-engineio's behaviour.

The socket-level tests speak engine.io over a raw aiohttp websocket, so they see every ping the
server sends and can choose not to answer it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orgcast.realtime.patches import LeanQueue
from orgcast.settings import ServerSettings
from tests.support import Server, eventually, node_settings, start_server

WITHIN = 10.0


@pytest.fixture
async def fast_ping_server(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    settings = node_settings(
        database_url, tmp_path, server=ServerSettings(port=0, ping_interval=1, ping_timeout=2)
    )
    async with start_server(settings) as node:
        yield node


async def one_loop_turn() -> None:
    """Let every task that is ready run once (the tasks created above start waiting)."""
    turned = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(turned.set_result, None)
    await turned


# -- LeanQueue ------------------------------------------------------------------------------------


async def test_lean_queue_hands_items_out_in_order_and_join_waits_for_every_task_done() -> None:
    queue = LeanQueue()
    getter = asyncio.create_task(queue.get())
    await one_loop_turn()  # the getter now waits on the empty queue
    for item in ("a", "b", "c"):
        await queue.put(item)
    assert await asyncio.wait_for(getter, WITHIN) == "a"
    assert [queue.get_nowait(), queue.get_nowait()] == ["b", "c"]
    assert queue.empty() and queue.qsize() == 0
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()

    joined = asyncio.create_task(queue.join())
    queue.task_done()
    queue.task_done()
    assert not joined.done()
    queue.task_done()
    await asyncio.wait_for(joined, WITHIN)
    with pytest.raises(ValueError):
        queue.task_done()


async def test_lean_queue_getter_cancelled_after_its_wake_up_passes_the_item_to_the_next() -> None:
    queue = LeanQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await one_loop_turn()
    queue.put_nowait("only")
    first.cancel()  # woken by the put, cancelled before it ran
    assert await asyncio.wait_for(second, WITHIN) == "only"
    assert first.cancelled()


# -- pings and the read loop ----------------------------------------------------------------------


async def open_socket(
    node: Server, session: aiohttp.ClientSession
) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    """An admitted, joined socket: engine open, Socket.IO connect with a token, join ``lobby``."""
    tenant = await node.create_tenant()
    token = await node.token(tenant.slug)
    ws = await session.ws_connect(f"{node.url}/socket.io/?EIO=4&transport=websocket")
    opened = await ws.receive_str(timeout=WITHIN)
    assert opened.startswith("0{"), opened
    await ws.send_str(f"40/{tenant.slug}," + json.dumps({"token": token}))
    connected = await ws.receive_str(timeout=WITHIN)
    assert connected.startswith(f"40/{tenant.slug},"), connected
    await ws.send_str(f'42/{tenant.slug},1["join",{{"room":"lobby"}}]')
    ack = await ws.receive_str(timeout=WITHIN)
    assert ack.startswith(f"43/{tenant.slug},1[") and '"ok":true' in ack, ack
    return ws, tenant.slug


async def test_a_socket_that_answers_pings_is_pinged_every_interval_and_stays_usable(
    fast_ping_server: Server,
) -> None:
    async with aiohttp.ClientSession() as session:
        ws, slug = await open_socket(fast_ping_server, session)
        pings = 0
        others: list[str] = []

        async def three_pings() -> None:
            nonlocal pings
            while pings < 3:
                text = await ws.receive_str()
                if text == "2":
                    pings += 1
                    await ws.send_str("3")
                else:
                    others.append(text)

        # Three rounds take longer than the ping timeout: answered pings keep the socket open.
        await asyncio.wait_for(three_pings(), 3 * (1 + 2) + WITHIN)
        assert others == []
        assert not ws.closed
        await ws.send_str(f'42/{slug},2["presence",{{"room":"lobby"}}]')
        while True:
            text = await ws.receive_str(timeout=WITHIN)
            if text != "2":
                break
            await ws.send_str("3")
        assert '"ok":true' in text and '"members"' in text, text
        await ws.close()


async def test_a_socket_that_never_answers_a_ping_is_closed_by_the_server(
    fast_ping_server: Server,
) -> None:
    async with aiohttp.ClientSession() as session:
        ws, _ = await open_socket(fast_ping_server, session)
        first = await ws.receive_str(timeout=1 + WITHIN)
        assert first == "2"

        async def closed() -> bool:
            # Read whatever comes (nothing should but the close); never answer a ping.
            try:
                message = await ws.receive(timeout=0.05)
            except TimeoutError:
                return ws.closed
            return message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                    aiohttp.WSMsgType.CLOSING) or ws.closed  # fmt: skip

        # ping interval 1 s + timeout 2 s, then the writer's wait (interval + timeout) ends.
        await eventually(closed, within=3 * (1 + 2) + WITHIN)


class RecordingWebSocket:
    """Stands in for the engine's websocket wrapper: records what is written and the close."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed = False
        self.gate: asyncio.Future[None] | None = None

    async def send(self, data: str) -> None:
        if self.gate is not None:
            await self.gate
        self.sent.append(data)

    async def close(self) -> None:
        self.closed = True


class Packet:
    def __init__(self, text: str) -> None:
        self.text = text

    def encode(self) -> str:
        return self.text


class Socket:
    closed = False


async def test_attached_lean_queue_writes_in_order_from_one_writer_that_ends_when_idle() -> None:
    queue, ws = LeanQueue(), RecordingWebSocket()
    queue.put_nowait(Packet("open"))
    ws.gate = asyncio.get_running_loop().create_future()
    queue.attach(Socket(), ws)  # what was queued before is written first
    for n in range(5):
        queue.put_nowait(Packet(str(n)))
    assert queue.qsize() == 6  # the backlog stays visible while the writer is held up
    ws.gate.set_result(None)
    await asyncio.wait_for(queue.join(), WITHIN)
    assert ws.sent == ["open", "0", "1", "2", "3", "4"]
    await one_loop_turn()
    assert queue._writer is None  # no task for an idle socket
    queue.put_nowait(Packet("later"))
    await asyncio.wait_for(queue.join(), WITHIN)
    assert ws.sent[-1] == "later" and not ws.closed


async def test_closing_marker_closes_the_websocket_and_later_packets_are_dropped() -> None:
    queue, ws = LeanQueue(), RecordingWebSocket()
    queue.attach(Socket(), ws)
    queue.put_nowait(Packet("last"))
    queue.put_nowait(None)
    queue.put_nowait(Packet("never"))
    await asyncio.wait_for(queue.join(), WITHIN)
    assert ws.sent == ["last"] and ws.closed
    queue.put_nowait(Packet("after close"))
    await asyncio.wait_for(queue.join(), WITHIN)  # nothing waits on a closed websocket
    assert ws.sent == ["last"]


class PingedSocket:
    """What the service task reads of an engine socket; records the ping check."""

    def __init__(self, last_ping: float | None, closed: bool = False) -> None:
        self.last_ping = last_ping
        self.closed = closed
        self.closing = closed
        self.checked = 0
        self.queue = LeanQueue()

    async def check_ping_timeout(self) -> bool:
        self.checked += 1
        return True


async def test_the_service_task_checks_only_pings_still_unanswered_between_full_sweeps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    import engineio
    import socketio

    from orgcast.realtime import patches

    monkeypatch.setattr(patches, "SERVICE_SWEEP_SECONDS", 0.01)
    monkeypatch.setattr(patches, "FULL_SWEEP_EVERY", 1_000_000)  # one full sweep, the first
    sio = socketio.AsyncServer(async_mode="aiohttp")
    patches.install_lean_sockets(sio)
    eio: engineio.AsyncServer = sio.eio
    long_ago = time.time() - eio.ping_timeout - 5
    unanswered, answered, unfiled = (
        PingedSocket(long_ago),
        PingedSocket(None),
        PingedSocket(long_ago),
    )
    closed = PingedSocket(None, closed=True)
    eio.sockets.update({"closed": closed, "unanswered": unanswered, "answered": answered})
    task = asyncio.ensure_future(eio._service_task())
    try:
        await eventually_true(lambda: "closed" not in eio.sockets)  # the full sweep drops it
        unanswered.checked = 0  # the full sweep saw its old ping too
        eio.sockets["unfiled"] = unfiled  # an old ping not sent by the wheel: full sweeps only
        wheel = eio.orgcast_pings
        wheel.pinged.extend([(long_ago, unanswered), (long_ago, answered)])
        await eventually_true(lambda: not wheel.pinged)
        assert unanswered.checked == 1 and answered.checked == 0 and unfiled.checked == 0
    finally:
        eio.service_task_event.set()
        await asyncio.wait_for(task, WITHIN)
        patches.stop_pings(sio)


async def eventually_true(predicate: Any) -> None:
    async def holds() -> bool:
        return bool(predicate())

    await eventually(holds, within=WITHIN)
