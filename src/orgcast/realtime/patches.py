"""Every patch orgcast makes on python-socketio / python-engineio internals, in one place.

Each is a debt: it relies on library internals, so pyproject bounds both libraries to the tested
minor versions and tests/test_patches.py fails loudly when a shape it relies on changes. Gains
are from benchmarks/RESULTS.md ("What each change bought", quick mode, same invocation).

1. ``PlainWebSocket`` (``install_websocket``): replaces the engine's aiohttp ``WebSocket`` class
   in the server's copy of ``sio.eio._async`` with one whose copied ``__call__`` builds
   ``WebSocketResponse(compress=...)`` from the ``server.websocket_compression`` setting.
   python-engineio's aiohttp driver ignores the engine's own ``websocket_compression`` option
   (so orgcast no longer passes it) and always compresses a client that offers
   permessage-deflate. Compression on: fan-out 0.15x deliveries/s, chat 0.82x,
   36-107 KB more memory per socket.
2. ``DirectFanout.emit`` (``AsyncManager.emit`` replaced, for non-callback emits): puts the one
   encoded packet straight on each recipient's engine.io queue in a plain loop instead of a task
   per recipient; reads ``manager.rooms`` via ``get_participants``, ``server.eio.sockets``,
   ``socket.queue``/``socket.closed``. Also gives volatile emits (ephemeral events), dropped for a
   recipient more than ``VOLATILE_BACKLOG`` packets behind. The library manager instead
   (``server.direct_fanout = false``, the one real A/B setting): fan-out 0.34x, p99 143 vs 43 ms.
3. ``_poll`` (``fast_poll``, replaces ``socket.poll`` per admitted socket): the same contract as
   ``engineio.AsyncSocket.poll`` without an ``asyncio.wait_for`` task per wake-up (19 % of server
   samples in fan-out). Fan-out +12-26 % per CPU-second, half-saturation p99 88-95 -> 35-43 ms.
4. ``DirectFanoutRedis._handle_emit`` (overrides the Redis manager's pub/sub handler): a volatile
   emit stays volatile on every node; the flag travels in the pub/sub message. Correctness, not
   speed (DESIGN: ephemeral events are volatile).
5. Manager attribute reads (``namespace_connections``, ``close_transports``, ``stop_manager``):
   ``manager.rooms[ns][None]`` for a cheap per-tenant count, ``sio.eio.sockets`` to close
   transports at shutdown without draining, and the Redis manager's ``thread``/``pubsub``/
   ``redis`` attributes, which ``sio.shutdown()`` leaves running (shutdown 25 s -> 0 s for a
   long-polling client).
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import socketio
from aiohttp import web
from engineio import exceptions as engine_exceptions
from engineio import packet as engine_packet
from engineio.async_drivers import aiohttp as engine_aiohttp
from socketio import packet as socket_packet

# -- 1. the websocket class -------------------------------------------------------------------


def websocket_class(compress: bool) -> type[engine_aiohttp.WebSocket]:
    class PlainWebSocket(engine_aiohttp.WebSocket):  # type: ignore[misc]
        async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
            request = environ["aiohttp.request"]
            self._sock = web.WebSocketResponse(
                max_msg_size=self.server.max_http_buffer_size, compress=compress
            )
            await self._sock.prepare(request)
            self.environ = environ
            await self.handler(self)
            return self._sock

    return PlainWebSocket


def install_websocket(sio: socketio.AsyncServer, compress: bool) -> None:
    """The table is copied: the module-level one stays untouched for other servers."""
    sio.eio._async = {**sio.eio._async, "websocket": websocket_class(compress)}


# -- 3. poll without a task ---------------------------------------------------------------------


async def _poll(self: Any) -> list[Any]:
    """``engineio.AsyncSocket.poll`` without a task per call: the packets queued for the client,
    ``[]`` once the socket is closing, ``QueueEmpty`` when nothing came within the ping window."""
    queue: asyncio.Queue[Any] = self.queue
    try:
        if queue.empty():
            async with asyncio.timeout(self.server.ping_interval + self.server.ping_timeout):
                first = await queue.get()
        else:
            first = queue.get_nowait()
        queue.task_done()
    except (TimeoutError, asyncio.CancelledError):
        raise engine_exceptions.QueueEmpty() from None
    if first is None:
        return []
    packets = [first]
    while not queue.empty():
        pkt = queue.get_nowait()
        queue.task_done()
        if pkt is None:
            queue.put_nowait(None)  # the close marker stays for the next poll
            break
        packets.append(pkt)
    return packets


def fast_poll(socket: Any) -> None:
    socket.poll = types.MethodType(_poll, socket)


# -- 2. direct fan-out --------------------------------------------------------------------------

# A volatile emit (ephemeral events: typing, cursors) skips a recipient with more than this many
# packets still waiting to be written to it: a slow consumer loses stale ephemera, not messages.
VOLATILE_BACKLOG = 32


class DirectFanout(socketio.AsyncManager):  # type: ignore[misc]
    # "/<slug>" -> ``message`` packets handed to sockets (orgcast_deliveries_total): the Realtime
    # that builds the manager replaces it with its Metrics' dict.
    delivered: dict[str, int] = {}

    async def connect(self, sid: str, namespace: str) -> str:
        sid = await super().connect(sid, namespace)
        socket = self.server.eio.sockets.get(self.eio_sid_from_sid(sid, namespace))
        if socket is not None:
            fast_poll(socket)
        return sid

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: str | None = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: str | None = None,
        **kwargs: Any,
    ) -> None:
        volatile = bool(kwargs.pop("volatile", False))
        if callback is not None:
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid,
                               callback=callback, to=to, **kwargs)  # fmt: skip
            return
        room = to or room
        if namespace not in self.rooms:
            return
        if isinstance(data, tuple):
            data = list(data)
        elif data is not None:
            data = [data]
        else:
            data = []
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        encoded = self.server.packet_class(
            socket_packet.EVENT, namespace=namespace, data=[event, *data]
        ).encode()
        frames = [
            engine_packet.Packet(engine_packet.MESSAGE, part)
            for part in (encoded if isinstance(encoded, list) else [encoded])
        ]
        sockets = self.server.eio.sockets
        handed = 0
        for sid, eio_sid in self.get_participants(namespace, room):
            if sid in skip:
                continue
            socket = sockets.get(eio_sid)
            if socket is None or socket.closed:
                continue
            if volatile and socket.queue.qsize() > VOLATILE_BACKLOG:
                continue
            for frame in frames:
                socket.queue.put_nowait(frame)
            handed += 1
        if handed and event == "message":
            self.delivered[namespace] = self.delivered.get(namespace, 0) + handed


# -- 4. volatile across nodes --------------------------------------------------------------------


class DirectFanoutRedis(socketio.AsyncRedisManager, DirectFanout):  # type: ignore[misc]
    """The Redis manager, delivering its local share through ``DirectFanout.emit``; a volatile
    emit stays volatile on every node (the flag travels in the pub/sub message)."""

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: str | None = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: str | None = None,
        **kwargs: Any,
    ) -> None:
        namespace = namespace or "/"
        if not kwargs.pop("volatile", False) or callback is not None:
            await super().emit(event, data, namespace=namespace, room=room, skip_sid=skip_sid,
                               callback=callback, to=to, **kwargs)  # fmt: skip
            return
        await DirectFanout.emit(self, event, data, namespace, room=to or room,
                                skip_sid=skip_sid, volatile=True)  # fmt: skip
        await self._publish(
            {
                "method": "emit",
                "event": event,
                "data": [data],
                "binary": False,
                "namespace": namespace,
                "room": to or room,
                "skip_sid": skip_sid,
                "callback": None,
                "host_id": self.host_id,
                "volatile": True,
            }
        )

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        if not message.get("volatile"):
            await super()._handle_emit(message)
            return
        (data,) = message["data"]
        await DirectFanout.emit(self, message["event"], data, message.get("namespace") or "/",
                                room=message.get("room"), skip_sid=message.get("skip_sid"),
                                volatile=True)  # fmt: skip


# -- 5. manager and engine attribute reads --------------------------------------------------------


def namespace_connections(sio: socketio.AsyncServer, namespace: str) -> int:
    """Sockets connected to ``namespace`` on this node, without listing them."""
    rooms = sio.manager.rooms
    if namespace not in rooms:
        return 0
    return len(rooms[namespace].get(None, {}))


async def close_transports(sio: socketio.AsyncServer) -> None:
    """Close each engine.io transport without waiting for its queue to drain."""
    for socket in list(sio.eio.sockets.values()):
        await socket.close(wait=False)


async def stop_manager(sio: socketio.AsyncServer) -> None:
    """The Redis manager's listener task and connections outlive ``sio.shutdown()``."""
    listener = getattr(sio.manager, "thread", None)
    if isinstance(listener, asyncio.Task):
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
    for name in ("pubsub", "redis"):
        connection = getattr(sio.manager, name, None)
        if connection is not None:
            await connection.aclose()
