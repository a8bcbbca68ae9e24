"""The Socket.IO server: its construction, its lifetime, and the ``Broadcaster`` the Hub uses.

One catch-all namespace serves every tenant: ``/<slug>``. Rooms are entered under a ``r:``
prefix, so a room named like another socket's sid can never reach that socket's private room;
nothing is ever emitted to a bare namespace. Stored bodies travel as ``raw_json`` fragments: the
JSON text kept in the database is written into each packet verbatim. The event handlers are in
``handlers.py``; every patch on the libraries' internals is in ``patches.py``.
"""

from __future__ import annotations

from typing import Any

import socketio
from aiohttp import web

from ..errors import Unavailable
from ..metrics import Metrics, NullMetrics
from ..services.closing import SHUTDOWN, Closing
from ..services.hub import Hub
from ..services.messages import StoredRow, wire
from ..settings import Settings
from . import guards, patches
from .codec import JsonCodec, raw_json
from .handlers import Handlers

ROOM_PREFIX = "r:"


def room_key(room: str) -> str:
    return ROOM_PREFIX + room


class Realtime:
    """The Socket.IO server attached to the aiohttp application; implements ``Broadcaster``."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        metrics = metrics or NullMetrics()
        direct = settings.server.direct_fanout
        manager: socketio.AsyncManager
        if settings.redis.url:
            redis_manager = patches.DirectFanoutRedis if direct else patches.ClusterRedisManager
            manager = redis_manager(
                settings.redis.url, channel=f"{settings.redis.channel}:socketio"
            )
            manager.on_ordered = self._on_ordered
            manager.on_link = self._on_link
        else:
            manager = patches.DirectFanout() if direct else socketio.AsyncManager()
        # Deliveries are counted by the direct fan-out only (python-socketio's own path has no
        # such count): orgcast_deliveries_total stays 0 with server.direct_fanout = false.
        manager.delivered = metrics.delivered
        cors: Any = settings.server.cors_allowed_origins or "*"
        self.sio = socketio.AsyncServer(
            async_mode="aiohttp",
            namespaces="*",
            client_manager=manager,
            # Tenants set their own allow-lists; the engine accepts any origin and the connect
            # handler checks the tenant's.
            cors_allowed_origins=cors,
            max_http_buffer_size=settings.server.max_packet_bytes,
            ping_interval=settings.server.ping_interval,
            ping_timeout=settings.server.ping_timeout,
            http_compression=False,
            compression_threshold=1 << 30,
            logger=False,
            engineio_logger=False,
            json=JsonCodec,
            # orgcast uses no cookies: a browser never needs to send credentials.
            cors_credentials=False,
        )
        # The engine's websocket class (patches.py) with each frame checked first (guards.py).
        self.guard = guards.install(self.sio, settings)
        if direct:
            patches.install_lean_sockets(self.sio)
        self._hub: Hub | None = None
        Handlers(self.sio, self._require_hub, settings.messages.history_page, metrics).register()

    def attach(self, app: web.Application) -> None:
        self.sio.attach(app)

    def start(self, hub: Hub) -> None:
        """Events are served from here on; before, they are answered ``unavailable``."""
        self._hub = hub

    def _require_hub(self) -> Hub:
        if self._hub is None:
            raise Unavailable("the server is starting")
        return self._hub

    async def close_sockets(self) -> None:
        """Disconnect every socket and close its transport. Runs while the web server is still
        up, so that pending long-polling requests are answered instead of holding shutdown for
        a ping interval."""
        for namespace in list(self.sio.manager.get_namespaces()):
            for sid, _ in list(self.sio.manager.get_participants(namespace, None)):
                await self.close(namespace[1:], sid, SHUTDOWN)
        # The server no longer accepts the next long-polling request that would drain them.
        await patches.close_transports(self.sio)

    async def stop(self) -> None:
        await self.close_sockets()
        await self.sio.shutdown()
        patches.stop_pings(self.sio)
        await patches.stop_manager(self.sio)

    # -- Broadcaster ------------------------------------------------------------------------------

    def to_room(self, slug: str, row: StoredRow, skip: str | list[str] | None) -> None:
        """A stored message to this node's sockets in its room (ordered delivery calls this)."""
        patches.deliver_local(self.sio.manager, "message", wire(row, raw_json), "/" + slug,
                              room_key(row.room), skip)  # fmt: skip

    def to_socket(self, slug: str, sid: str, row: StoredRow) -> None:
        patches.deliver_local(self.sio.manager, "message", wire(row, raw_json), "/" + slug,
                              sid, None)  # fmt: skip

    def to_other_nodes(self, slug: str, row: StoredRow, skip_sid: str | None) -> None:
        """Queue a stored message for the other nodes (nothing to do on a single node)."""
        manager = self.sio.manager
        if isinstance(manager, patches.ClusterRedisManager):
            manager.publish_ordered("/" + slug, room_key(row.room), _fields(row), skip_sid)

    def _on_ordered(self, namespace: str, room: str, fields: Any, skip: Any) -> None:
        """A stored message from another node: the row's fields, its body still JSON text."""
        hub = self._hub
        try:
            row = StoredRow(*fields)
        except TypeError:
            return
        if hub is not None and isinstance(row.seq, int) and isinstance(row.body, str):
            hub.ordering.deliver(namespace[1:], row, skip if isinstance(skip, str) else None)

    def _on_link(self, up: bool) -> None:
        """The subscription to the other nodes was lost (or is back)."""
        if self._hub is not None:
            self._hub.link_changed(up)

    async def emit_presence(
        self, slug: str, room: str, action: str, member: dict[str, str], skip_sid: str | None
    ) -> None:
        await self.sio.emit(
            "presence",
            {"room": room, "action": action, "member": member},
            room=room_key(room),
            skip_sid=skip_sid,
            namespace="/" + slug,
        )

    async def emit_volatile(
        self, slug: str, room: str, event: str, data: dict[str, Any], skip_sid: str
    ) -> None:
        # Volatile: dropped for a recipient that is already behind (see patches.py).
        await self.sio.manager.emit(
            event, data, "/" + slug, room=room_key(room), skip_sid=skip_sid, volatile=True
        )

    async def enter_room(self, slug: str, sid: str, room: str) -> None:
        await self.sio.enter_room(sid, room_key(room), namespace="/" + slug)

    async def leave_room(self, slug: str, sid: str, room: str) -> None:
        await self.sio.leave_room(sid, room_key(room), namespace="/" + slug)

    async def disconnect_tenant(self, slug: str, reason: Closing) -> None:
        namespace = "/" + slug
        if namespace not in self.sio.manager.rooms:
            return
        for sid, _ in list(self.sio.manager.get_participants(namespace, None)):
            await self.close(slug, sid, reason)

    async def emit_to(self, slug: str, sid: str, event: str, data: dict[str, Any]) -> None:
        await self.sio.emit(event, data, to=sid, namespace="/" + slug)

    async def close(self, slug: str, sid: str, reason: Closing) -> None:
        # Both packets go to the socket's queue in this order: closing arrives first.
        namespace = "/" + slug
        await self.sio.emit("closing", reason.to_dict(), to=sid, namespace=namespace)
        await self.sio.disconnect(sid, namespace=namespace)

    def live_slugs(self) -> set[str]:
        """Tenants with sockets (or pending ones) on this node."""
        return {ns[1:] for ns in self.sio.manager.get_namespaces() if ns != "/"}

    def local_connections(self, slug: str) -> int:
        return patches.namespace_connections(self.sio, "/" + slug)

    def engine_sockets(self) -> int:
        """Engine.IO sockets open on this node, of every tenant (and not yet admitted)."""
        return len(self.sio.eio.sockets)


def _fields(row: StoredRow) -> list[Any]:
    """A stored row as it travels to the other nodes (the body stays JSON text)."""
    return [row.id, row.room, row.seq, row.ts, row.sender_id, row.sender_name, row.body,
            row.client_id]  # fmt: skip
