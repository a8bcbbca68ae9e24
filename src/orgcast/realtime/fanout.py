"""Room broadcasts without a task per recipient.

python-socketio's manager encodes a broadcast once, then creates one asyncio task per recipient to
hand the packet to that socket's outgoing queue; at 200 recipients that task is most of the cost
of a delivery. The queue is unbounded, so the hand-over cannot block: this manager puts the one
encoded packet on every recipient's queue directly, in a plain loop. Each socket's own writer
task still does the websocket write. A side effect is a stronger ordering: a broadcast reaches
every queue before the next broadcast starts, so all members see a room's messages in one order.

Broadcasts that request acknowledgements (never used by orgcast) and a socket that is not in this
process fall back to the library's own path.
"""

from __future__ import annotations

from typing import Any

import socketio
from engineio import packet as engine_packet
from socketio import packet as socket_packet


class DirectFanout(socketio.AsyncManager):  # type: ignore[misc]
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
            for frame in frames:
                socket.queue.put_nowait(frame)


class DirectFanoutRedis(socketio.AsyncRedisManager, DirectFanout):  # type: ignore[misc]
    """The Redis manager, delivering its local share through ``DirectFanout.emit``."""
