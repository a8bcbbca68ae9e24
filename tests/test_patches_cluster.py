"""The library internals that ``ClusterRedisManager`` and ordered delivery rely on (see
realtime/patches.py, item 6): these fail loudly when an upgrade changes them."""

from __future__ import annotations

import asyncio
import inspect
import shutil
from typing import Any

import pytest
import socketio
from engineio.async_socket import AsyncSocket
from socketio.async_pubsub_manager import AsyncPubSubManager
from socketio.async_redis_manager import AsyncRedisManager

from orgcast.realtime.patches import ClusterRedisManager
from tests.conftest import IN_CI
from tests.nodes import private_redis
from tests.support import eventually


def test_the_redis_manager_listens_through_redis_listen_with_retries() -> None:
    assert inspect.isasyncgenfunction(AsyncRedisManager._redis_listen_with_retries)
    assert "self._redis_listen_with_retries()" in inspect.getsource(AsyncRedisManager._listen)
    assert "self._listen()" in inspect.getsource(AsyncPubSubManager._thread)


def test_the_pubsub_thread_hands_other_nodes_emits_to_handle_emit() -> None:
    thread = inspect.getsource(AsyncPubSubManager._thread)
    assert "await self._handle_emit(data)" in thread
    assert "data.get('host_id') != self.host_id" in thread


def test_an_ignore_queue_emit_stays_on_this_node_and_others_publish() -> None:
    emit = inspect.getsource(AsyncPubSubManager.emit)
    assert "kwargs.get('ignore_queue')" in emit
    assert "await self._publish(message)" in emit


def test_the_manager_keeps_its_clients_in_redis_and_pubsub() -> None:
    manager = ClusterRedisManager("redis://127.0.0.1:1/0", channel="patches-test")
    assert manager.redis is None and manager.pubsub is None


def test_an_event_ack_is_queued_in_the_step_its_handler_returns() -> None:
    """Ordered delivery releases a joining or sending socket with ``call_soon`` right after its
    handler returns: the ack must be on the socket's queue by then (no suspension between)."""
    source = inspect.getsource(socketio.AsyncServer._handle_event_internal)
    after_handler = source.split("_trigger_event", 1)[1]
    assert after_handler.count("await") == 1
    assert "await server._send_packet(" in after_handler
    send = inspect.getsource(AsyncSocket.send)
    assert "await self.queue.put(pkt)" in send


# redis-py may warn about a connection to the stopped server that it closes late.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_the_subscription_reports_loss_and_return_and_resubscribes_within_its_cap() -> None:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("needs redis-server: CI requires it", pytrace=False)
        pytest.skip("needs redis-server")
    links: list[bool] = []
    with private_redis() as redis_server:
        manager = ClusterRedisManager(redis_server.url, channel="patches-test")
        manager.on_link = links.append
        listener = asyncio.ensure_future(_drain(manager._redis_listen_with_retries()))
        try:
            await eventually(lambda: _holds(links == [True]), within=10)
            redis_server.stop()
            # Six failed attempts: the library's back-off would now be past 30 s; ours is 2 s.
            await eventually(lambda: _holds(links.count(False) >= 6), within=20)
            redis_server.start()
            await eventually(lambda: _holds(links[-1] is True), within=2 + 5)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await manager.close()


async def _drain(messages: Any) -> None:
    async for _ in messages:
        pass


async def _holds(value: bool) -> bool:
    return value
