"""Room broadcasts without a task per recipient.

python-socketio's manager encodes a broadcast once, then creates one asyncio task per recipient to
hand the packet to that socket's outgoing queue; at 200 recipients that task is most of the cost
of a delivery. The queue is unbounded, so the hand-over cannot block: this manager puts the one
encoded packet on every recipient's queue directly, in a plain loop. Each socket's own writer
task still does the websocket write. A side effect is a stronger ordering: a broadcast reaches
every queue before the next broadcast starts, so all members see a room's messages in one order.

Broadcasts that request acknowledgements (never used by orgcast) and a socket that is not in this
process fall back to the library's own path.

Each socket's writer task waits for its queue through ``AsyncSocket.poll``, which wraps every wait
in ``asyncio.wait_for``: a new task per wake-up, per recipient, per broadcast (about a fifth of
the server's time in the fan-out benchmark). Admitted sockets get ``_poll`` instead: the same
contract, taking what is queued without waiting and otherwise waiting under ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import socketio
from engineio import exceptions as engine_exceptions
from engineio import packet as engine_packet
from socketio import packet as socket_packet


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


# A volatile emit (ephemeral events: typing, cursors) skips a recipient with more than this many
# packets still waiting to be written to it: a slow consumer loses stale ephemera, not messages.
VOLATILE_BACKLOG = 32


class DirectFanout(socketio.AsyncManager):  # type: ignore[misc]
    fast_poll = True

    async def connect(self, sid: str, namespace: str) -> str:
        sid = await super().connect(sid, namespace)
        if self.fast_poll:
            socket = self.server.eio.sockets.get(self.eio_sid_from_sid(sid, namespace))
            if socket is not None:
                socket.poll = types.MethodType(_poll, socket)
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
