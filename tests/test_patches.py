"""Each patch in ``orgcast.realtime.patches`` relies on python-socketio / python-engineio internals.

These tests pin those internals: a signature, an attribute, or (where a library method was copied
or re-implemented) the hash of its source. When a version bump changes one, the matching test
fails with the patch's number, so the patch is re-checked against the new library instead of
misbehaving quietly. Update a hash only after re-reading the patch against the new source.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from importlib.metadata import version
from typing import Any

import engineio
import pytest
import socketio
from engineio import async_socket as engine_socket
from engineio import exceptions as engine_exceptions
from engineio import packet as engine_packet
from engineio.async_drivers import aiohttp as engine_aiohttp
from socketio import async_pubsub_manager, base_manager
from socketio import packet as socket_packet

from orgcast.realtime import patches


def source_hash(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def parameters(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_the_installed_libraries_are_the_minors_the_patches_were_checked_against() -> None:
    assert version("python-socketio").startswith("5.18."), "re-check realtime/patches.py"
    assert version("python-engineio").startswith("4.15."), "re-check realtime/patches.py"
    # Patches 9 and 10 read aiohttp's websocket and connection handler internals.
    assert version("aiohttp").startswith("3.14."), "re-check realtime/patches.py 9 and 10"


# -- 1. the websocket class ---------------------------------------------------------------------


def test_patch_1_copies_an_unchanged_engineio_aiohttp_websocket_call() -> None:
    websocket = engine_aiohttp.WebSocket
    assert source_hash(websocket.__call__) == "71f9a94476d737c3", (
        "patch 1: WebSocket.__call__ changed"
    )
    assert parameters(websocket.__call__) == ["self", "environ"]
    assert parameters(websocket.__init__) == ["self", "handler", "server"]
    # The engine builds its websocket from the server's table, which patch 1 replaces.
    assert "self.server._async['websocket'](" in inspect.getsource(engine_socket.AsyncSocket)
    assert hasattr(engineio.AsyncServer(async_mode="aiohttp"), "max_http_buffer_size")


def test_patch_1_swaps_the_websocket_class_in_a_copy_of_the_server_table() -> None:
    sio = socketio.AsyncServer(async_mode="aiohttp")
    table = sio.eio._async
    assert isinstance(table, dict)
    assert table["websocket"] is engine_aiohttp.WebSocket
    patches.install_websocket(sio, compress=False)
    assert issubclass(sio.eio._async["websocket"], engine_aiohttp.WebSocket)
    assert sio.eio._async["websocket"] is not engine_aiohttp.WebSocket
    assert engine_aiohttp._async["websocket"] is engine_aiohttp.WebSocket  # module table untouched
    assert set(sio.eio._async) == set(table)


@pytest.mark.parametrize("compress", [False, True])
def test_patch_1_class_builds_with_the_library_constructor(compress: bool) -> None:
    cls = patches.websocket_class(compress)
    ws = cls(handler=None, server=engineio.AsyncServer(async_mode="aiohttp"))
    assert ws._sock is None


# -- 2. direct fan-out ----------------------------------------------------------------------------


def test_patch_2_replaces_an_emit_with_the_same_signature_and_reads_the_same_structures() -> None:
    assert parameters(socketio.AsyncManager.emit) == [
        "self", "event", "data", "namespace", "room", "skip_sid", "callback", "to", "kwargs",
    ]  # fmt: skip
    assert parameters(patches.DirectFanout.emit) == parameters(socketio.AsyncManager.emit)
    assert parameters(socketio.AsyncManager.connect) == ["self", "sid", "namespace"]
    assert parameters(base_manager.BaseManager.get_participants) == ["self", "namespace", "room"]
    assert parameters(base_manager.BaseManager.eio_sid_from_sid) == ["self", "sid", "namespace"]
    assert source_hash(base_manager.BaseManager.get_participants) == "7d78ad681c95de5b", (
        "patch 2: get_participants changed"
    )
    assert socketio.AsyncServer(async_mode="aiohttp").packet_class is socket_packet.Packet
    assert (socket_packet.EVENT, engine_packet.MESSAGE) == (2, 4)


async def test_patch_2_delivers_one_encoded_packet_per_participant_on_its_engine_queue() -> None:
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=patches.DirectFanout())
    sockets = {}
    for eio_sid in ("e1", "e2"):
        socket = engine_socket.AsyncSocket(sio.eio, eio_sid)
        assert (socket.closed, socket.queue.qsize()) == (False, 0)
        sio.eio.sockets[eio_sid] = socket
        sockets[eio_sid] = socket
    first = await sio.manager.connect("e1", "/t")
    await sio.manager.connect("e2", "/t")
    for socket in sockets.values():  # the connect also installed patch 3
        assert socket.poll.__func__ is patches._poll
    await sio.manager.emit("message", {"x": 1}, "/t", skip_sid=first)
    assert sockets["e1"].queue.qsize() == 0
    frame = sockets["e2"].queue.get_nowait()
    assert (frame.packet_type, frame.data) == (engine_packet.MESSAGE, '2/t,["message",{"x":1}]')


# -- 3. poll without a task -----------------------------------------------------------------------


def test_patch_3_reimplements_an_unchanged_engineio_socket_poll() -> None:
    assert source_hash(engine_socket.AsyncSocket.poll) == "826f58a9f3606db2", (
        "patch 3: poll changed"
    )
    assert parameters(engine_socket.AsyncSocket.poll) == ["self"]
    server = engineio.AsyncServer(async_mode="aiohttp")
    assert isinstance(server.ping_interval + server.ping_timeout, int | float)
    assert issubclass(engine_exceptions.QueueEmpty, Exception)


async def test_patch_3_poll_returns_the_queued_packets_and_keeps_the_close_marker() -> None:
    socket = engine_socket.AsyncSocket(engineio.AsyncServer(async_mode="aiohttp"), "e1")
    assert isinstance(socket.queue, asyncio.Queue)
    patches.fast_poll(socket)
    socket.queue.put_nowait("a")
    socket.queue.put_nowait("b")
    socket.queue.put_nowait(None)
    assert await socket.poll() == ["a", "b"]
    assert await socket.poll() == []
    await socket.queue.join()  # every get was matched by task_done, as the library's poll does


# -- 4. volatile across nodes ---------------------------------------------------------------------


def test_patch_4_overrides_a_pubsub_handler_and_message_of_an_unchanged_shape() -> None:
    manager = async_pubsub_manager.AsyncPubSubManager
    assert parameters(manager._handle_emit) == ["self", "message"]
    assert parameters(manager._publish) == ["self", "data"]
    assert parameters(manager.emit) == parameters(socketio.AsyncManager.emit)
    # DirectFanoutRedis.emit publishes the message manager.emit would, plus "volatile".
    assert source_hash(manager.emit) == "6cc46e0ff9b6d7cf", (
        "patch 4: the published emit message changed"
    )
    assert source_hash(manager._handle_emit) == "4284671be955f644", "patch 4: _handle_emit changed"
    redis_manager = socketio.AsyncRedisManager("redis://127.0.0.1:6379/0", write_only=True)
    assert isinstance(redis_manager.host_id, str)
    assert [c.__name__ for c in patches.DirectFanoutRedis.__mro__[:5]] == [
        "DirectFanoutRedis", "ClusterRedisManager", "AsyncRedisManager", "AsyncPubSubManager",
        "DirectFanout",
    ]  # fmt: skip


# -- 5. manager and engine attribute reads --------------------------------------------------------


async def test_patch_5_counts_a_namespace_from_the_manager_rooms_table() -> None:
    sio = socketio.AsyncServer(async_mode="aiohttp")
    assert patches.namespace_connections(sio, "/t") == 0
    await sio.manager.connect("e1", "/t")
    await sio.manager.connect("e2", "/t")
    assert patches.namespace_connections(sio, "/t") == 2
    assert set(sio.manager.rooms["/t"][None].values()) == {"e1", "e2"}


def test_patch_5_reads_engine_sockets_and_the_redis_manager_connections() -> None:
    assert "wait" in parameters(engine_socket.AsyncSocket.close)
    assert engineio.AsyncServer(async_mode="aiohttp").sockets == {}
    redis_manager = socketio.AsyncRedisManager("redis://127.0.0.1:6379/0", write_only=True)
    assert hasattr(redis_manager, "redis")
    assert hasattr(redis_manager, "pubsub")
    assert "self.thread = self.server.start_background_task(" in inspect.getsource(
        async_pubsub_manager.AsyncPubSubManager.initialize
    )


# -- 6. the Redis manager: own reconnect, queued publishing, ordered messages ----------------------


def test_patch_6_replaces_an_unchanged_listen_loop_and_publish() -> None:
    manager = socketio.AsyncRedisManager
    assert inspect.isasyncgenfunction(manager._redis_listen_with_retries)
    assert source_hash(manager._redis_listen_with_retries) == "ad347f253fd3423a", (
        "patch 6: the listener's retry loop changed"
    )
    assert source_hash(manager._listen) == "3e74fdd1084b4e13", "patch 6: _listen changed"
    assert source_hash(manager._publish) == "033e4da7cc8768b4", "patch 6: _publish changed"
    thread = async_pubsub_manager.AsyncPubSubManager._thread
    assert source_hash(thread) == "fa8d075729aac64d", "patch 6: the pub/sub thread changed"
    emit = inspect.getsource(async_pubsub_manager.AsyncPubSubManager.emit)
    assert "kwargs.get('ignore_queue')" in emit  # deliver_local's "this node only"
    manager_instance = patches.ClusterRedisManager("redis://127.0.0.1:1/0", channel="patch-6")
    assert manager_instance.redis is None and manager_instance.pubsub is None


def test_patch_6_an_event_ack_is_queued_in_the_step_its_handler_returns() -> None:
    """Ordered delivery releases a joining or sending socket with ``call_soon`` right after its
    handler returns: the ack must be on the socket's queue by then (nothing suspends between)."""
    handler = socketio.AsyncServer._handle_event_internal
    assert source_hash(handler) == "472e8b723a12d507", "patch 6: the ack path changed"
    assert source_hash(engine_socket.AsyncSocket.send) == "0437276ccba7ab09", (
        "patch 6: the engine socket's send changed"
    )


def test_patch_7_reimplements_an_unchanged_socketio_message_handler() -> None:
    server = socketio.AsyncServer
    assert source_hash(server._handle_eio_message) == "bef50fc0e1635921", (
        "patch 7: AsyncServer._handle_eio_message changed; re-check PacketGuard.on_message"
    )
    assert source_hash(engine_aiohttp.WebSocket.wait) == "992c370917677d39", (
        "patch 7: the engine's WebSocket.wait changed; re-check PlainWebSocket.wait"
    )
    expected = {
        "_handle_eio_connect": ["eio_sid", "environ"],
        "_handle_eio_disconnect": ["eio_sid", "reason"],
        "_handle_connect": ["eio_sid", "namespace", "data"],
        "_handle_disconnect": ["eio_sid", "namespace", "reason"],
        "_handle_event": ["eio_sid", "namespace", "id", "data"],
        "_handle_ack": ["eio_sid", "namespace", "id", "data"],
        "_send_packet": ["eio_sid", "pkt"],
    }
    for name, names in expected.items():
        assert parameters(getattr(server, name))[1 : 1 + len(names)] == names, f"patch 7: {name}"


def test_patch_7_reads_the_server_and_socket_state_it_relies_on() -> None:
    instance = socketio.AsyncServer(async_mode="aiohttp")
    assert isinstance(instance.environ, dict) and isinstance(instance._binary_packet, dict)
    assert isinstance(instance.eio.sockets, dict) and callable(instance.eio.on)
    assert instance.eio.handlers["message"] == instance._handle_eio_message
    socket = engine_socket.AsyncSocket(instance.eio, "x")
    assert {"closed", "closing", "queue"} <= set(vars(socket))


# -- 8. lean engine sockets -----------------------------------------------------------------------


def test_patch_8_reimplements_unchanged_engineio_socket_handler_ping_and_service_task() -> None:
    pinned = {
        engine_socket.AsyncSocket._websocket_handler: "27f120df4d717a24",
        engine_socket.AsyncSocket.schedule_ping: "fe316639159cd70d",
        engine_socket.AsyncSocket._send_ping: "67db82a704ea49d0",
        engine_socket.AsyncSocket.check_ping_timeout: "77616d5ca7809257",
        engine_socket.AsyncSocket.send: "0437276ccba7ab09",
        engineio.async_server.AsyncServer._service_task: "b6358bda51d0b34b",
        # The socket exists, with its queue, when the connect event runs; pings start after.
        engineio.async_server.AsyncServer._handle_connect: "5bd7edc1d1ae115a",
    }
    for method, digest in pinned.items():
        assert source_hash(method) == digest, f"patch 8: {method.__qualname__} changed"


async def test_patch_8_makes_a_new_engine_socket_lean_keeping_what_is_queued() -> None:
    sio = socketio.AsyncServer(async_mode="aiohttp")
    patches.install_lean_sockets(sio)
    socket = engine_socket.AsyncSocket(sio.eio, "sid-1")
    sio.eio.sockets["sid-1"] = socket
    await socket.queue.put(engine_packet.Packet(engine_packet.OPEN, {"sid": "sid-1"}))
    await sio.eio.handlers["connect"]("sid-1", {})
    assert isinstance(socket.queue, patches.LeanQueue)
    assert socket.queue.qsize() == 1
    assert [p.packet_type for p in await socket.poll()] == [engine_packet.OPEN]
    socket.schedule_ping()  # filed in the server's wheel: no task
    assert sio.eio.orgcast_pings._timer is not None
    patches.stop_pings(sio)


# -- 9. websocket frames written to the transport -------------------------------------------------


def test_patch_9_reads_the_aiohttp_websocket_state_it_relies_on() -> None:
    from aiohttp import web
    from aiohttp._websocket.writer import WebSocketWriter
    from aiohttp.base_protocol import BaseProtocol

    # ``LeanQueue.attach`` takes the transport, protocol and negotiated compression from the
    # response's writer; ``_writable`` reads the response's close state.
    assert parameters(WebSocketWriter.__init__)[:3] == ["self", "protocol", "transport"]
    writer_source = inspect.getsource(WebSocketWriter.__init__)
    for attribute in ("self.protocol =", "self.transport =", "self.compress ="):
        assert attribute in writer_source, f"patch 9: WebSocketWriter {attribute!r} gone"
    response = web.WebSocketResponse()
    assert response._writer is None and response._closed is False and response._closing is False
    # Backpressure: the protocol's pause flag and its drain wait.
    assert {"_paused", "_drain_waiter", "transport"} <= set(BaseProtocol.__slots__)
    assert inspect.iscoroutinefunction(BaseProtocol._drain_helper)


def test_patch_9_relies_on_unchanged_engineio_receive_close_and_packet_encoding() -> None:
    pinned = {
        # The pong branch is what lean_websocket_handler does for "3" without decoding it.
        engine_socket.AsyncSocket.receive: "a91ae36ec2fb5340",
        # Close queues a CLOSE packet and sets ``closed``, no closing marker: the batch's write
        # starts the task that closes the websocket when it sees the socket closed.
        engine_socket.AsyncSocket.close: "faa2e93902543244",
        # The encoded packet is cached: a FramePacket's frame is its encoding.
        engine_packet.Packet.encode: "8f3d5d869711cbb8",
    }
    for method, digest in pinned.items():
        assert source_hash(method) == digest, f"patch 9: {method.__qualname__} changed"
    assert parameters(engine_packet.Packet.__init__) == [
        "self",
        "packet_type",
        "data",
        "encoded_packet",
    ]
    assert str(engine_packet.PONG) == patches.PONG
    ping = patches.PING_PACKET
    assert ping.encode() == "2" and ping.encode(b64=True) == "2" and not ping.binary
    message = patches.FramePacket(engine_packet.MESSAGE, '2["message",{"body":"é"}]')
    assert message.encode() == '42["message",{"body":"é"}]'
    assert message.frame == patches._frame(message.encode())


# -- 10. the websocket after its handshake --------------------------------------------------------


def test_patch_10_hands_over_with_unchanged_aiohttp_handshake_and_connection_handler() -> None:
    from aiohttp import web, web_protocol, web_server

    handler = web_protocol.RequestHandler
    pinned = {
        # The checks and headers of a websocket handshake, as its prepare answers it.
        web.WebSocketResponse._handshake: "95b5e704a7821784",
        # After the handler returns: prepare and write_eof on the response (``HandedOver``: no
        # writes), no re-parse of the tail once the parser is gone, the loop ends on force_close
        # without closing the transport it no longer has.
        handler.start: "2e565fd40c8e04fb",
        handler.finish_response: "b7eb53db8f4b30ca",
        handler.force_close: "38d0e1e798e4d3b7",
        handler.keep_alive: "c393d9ac05c3017f",
        # What the client sent after its handshake waits in ``_message_tail``.
        handler.data_received: "1ee57ebe052e6c80",
        web_server.Server.connection_lost: "fff3ade6ffe866a8",
    }
    for method, digest in pinned.items():
        assert source_hash(method) == digest, f"patch 10: {method.__qualname__} changed"
    slots = {slot for cls in handler.__mro__ for slot in getattr(cls, "__slots__", ())}
    assert {"_message_tail", "_buffer_paused", "_parser", "_manager", "transport"} <= slots


def test_patch_10_engine_wire_is_the_queue_websocket_and_protocol_patch_9_reads() -> None:
    # ``LeanQueue`` (patch 9) reads these of what it writes to; ``_drain`` awaits ``close``.
    wire = patches.EngineWire.__new__(patches.EngineWire)
    for slot in ("_closed", "_closing", "_paused", "transport"):
        assert slot in patches.EngineWire.__slots__, slot
    assert inspect.iscoroutinefunction(wire._drain_helper)
    assert inspect.iscoroutinefunction(wire.close) and inspect.iscoroutinefunction(wire.send)


def test_patch_10_upgrades_as_the_engine_does() -> None:
    pinned = {
        # The upgrade the wire does itself: probe, "3probe", a NOOP for the poll in flight, the
        # upgrade packet; ``upgrading``/``upgraded`` as it sets them.
        engine_socket.AsyncSocket._websocket_handler: "27f120df4d717a24",
        # An upgraded socket is refused before the websocket class is called; the websocket
        # class is called with the socket's bound ``_websocket_handler``.
        engine_socket.AsyncSocket._upgrade_websocket: "820b83efe96adb98",
        # While ``upgrading`` a poll gets a NOOP at once and the queue stays as it is.
        engine_socket.AsyncSocket.handle_get_request: "05eaae9f0a60d9be",
        # The environ an upgrade trims is python-socketio's, filed by session id.
        socketio.AsyncServer._handle_eio_connect: "76704886d944a7e6",
    }
    for method, digest in pinned.items():
        assert source_hash(method) == digest, f"patch 10: {method.__qualname__} changed"
    assert patches.PROBE == engine_packet.Packet(engine_packet.PING, data="probe").encode()
    assert patches.UPGRADE == engine_packet.Packet(engine_packet.UPGRADE).encode()
