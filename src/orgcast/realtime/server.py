"""The Socket.IO transport: one catch-all namespace handler serves every tenant.

A connection to ``/<slug>`` is resolved through the tenant directory, its token verified against
the tenant's signing keys, its ``Origin`` checked, and only then admitted. Every refusal is a
``connect_error`` whose message is a stable code and whose data is ``{code, message}``; nothing
escapes the connect handler, since an exception there leaves the client hanging.

Per-socket state (tenant, user, joined rooms, rate-limit bucket) lives in the Socket.IO session.
Rooms are entered under a ``r:`` prefix, so a room named like another socket's sid can never
reach that socket's private room; nothing is ever emitted to a bare namespace.

Ordering: a ``message`` is handed to the writer before the handler first suspends, so messages of
one socket are stored in the order they arrived. A ``join`` enters the room before it reads the
log, so a message stored meanwhile is either in ``missed`` or broadcast (possibly both: clients
de-duplicate by ``seq``), never lost.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import socketio
from aiohttp import web

from ..errors import (
    BadRequest,
    NotFound,
    NotJoined,
    OrgcastError,
    OriginForbidden,
    RateLimited,
    RoomForbidden,
    RoomLimit,
    TenantSuspended,
    Unavailable,
    UnknownEvent,
)
from ..services import DB_ERRORS
from ..services.auth import Principal, verify_token
from ..services.cluster import RedisPresence
from ..services.limits import TokenBucket
from ..services.messages import NewMessage, encode_body, wire
from ..services.presence import LocalPresence, Presence
from ..services.tenants import SLUG_PATTERN, TenantKeys
from ..settings import Settings
from ..state import Services
from . import payloads
from .codec import JsonCodec, raw_json, websocket_class
from .fanout import DirectFanout, DirectFanoutRedis

log = logging.getLogger(__name__)

SLUG_RE = re.compile(SLUG_PATTERN)
ROOM_PREFIX = "r:"
STANDARD_EVENTS = frozenset({"join", "leave", "message", "history", "presence"})


def room_key(room: str) -> str:
    return ROOM_PREFIX + room


@dataclass(slots=True)
class SocketState:
    """What the server knows about one admitted socket."""

    slug: str
    tenant_id: int
    principal: Principal
    rooms: set[str] = field(default_factory=set)
    bucket: TokenBucket = field(default_factory=TokenBucket)


class Realtime:
    """The Socket.IO server and its event handlers; attached to the aiohttp application."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        direct = settings.server.direct_fanout
        manager: socketio.AsyncManager
        if settings.redis.url:
            redis_manager = DirectFanoutRedis if direct else socketio.AsyncRedisManager
            manager = redis_manager(
                settings.redis.url, channel=f"{settings.redis.channel}:socketio"
            )
        else:
            manager = DirectFanout() if direct else socketio.AsyncManager()
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
            websocket_compression=settings.server.websocket_compression,
            logger=False,
            engineio_logger=False,
            json=JsonCodec,
        )
        # The engine ignores websocket_compression; its websocket class is swapped for one that
        # honours it (see codec.py). The table is copied: the module-level one stays untouched.
        self.sio.eio._async = {
            **self.sio.eio._async,
            "websocket": websocket_class(settings.server.websocket_compression),
        }
        self.sio.on("connect", self._on_connect, namespace="*")
        self.sio.on("disconnect", self._on_disconnect, namespace="*")
        self.sio.on("*", self._on_event, namespace="*")
        self.presence: Presence = LocalPresence()
        self._services: Services | None = None

    def attach(self, app: web.Application) -> None:
        self.sio.attach(app)

    async def start(self, services: Services, redis: Any = None) -> None:
        """Bind the services; with ``redis`` (a client), presence and limits become cluster-wide."""
        self._services = services
        services.control.subscribe(self._on_tenant_changed)
        if redis is not None:
            self.presence = RedisPresence(
                redis,
                prefix=self.settings.redis.channel,
                node_id=services.control.node_id,
                ttl=self.settings.redis.node_ttl_seconds,
                on_leave=self._announce_leave,
            )

    async def close_sockets(self) -> None:
        """Disconnect every socket and close its transport. Runs while the web server is still
        up, so that pending long-polling requests are answered instead of holding shutdown for
        a ping interval."""
        for namespace in list(self.sio.manager.get_namespaces()):
            for sid, _ in list(self.sio.manager.get_participants(namespace, None)):
                await self.sio.disconnect(sid, namespace=namespace)
        # Close each transport without waiting for its queue to drain: the server no longer
        # accepts the next long-polling request that would drain it.
        for socket in list(self.sio.eio.sockets.values()):
            await socket.close(wait=False)

    async def stop(self) -> None:
        await self.close_sockets()
        if isinstance(self.presence, RedisPresence):
            await self.presence.close()
        await self.sio.shutdown()
        # The Redis manager's listener task and connection outlive sio.shutdown(); end them here.
        listener = getattr(self.sio.manager, "thread", None)
        if isinstance(listener, asyncio.Task):
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        for name in ("pubsub", "redis"):
            connection = getattr(self.sio.manager, name, None)
            if connection is not None:
                await connection.aclose()

    @property
    def services(self) -> Services:
        if self._services is None:
            raise Unavailable("the server is starting")
        return self._services

    # -- live state -----------------------------------------------------------------------------

    def live_slugs(self) -> set[str]:
        """Tenants with sockets (or pending ones) on this node."""
        return {ns[1:] for ns in self.sio.manager.get_namespaces() if ns != "/"}

    def local_connections(self, slug: str) -> int:
        namespace = "/" + slug
        if namespace not in self.sio.manager.rooms:
            return 0
        return len(self.sio.manager.rooms[namespace].get(None, {}))

    async def live_counts(self, slug: str) -> dict[str, int]:
        return {
            "connections": await self.presence.connections(slug),
            "rooms": len(await self.presence.rooms(slug)),
        }

    async def room_members(self, slug: str) -> dict[str, int]:
        return await self.presence.rooms(slug)

    async def broadcast(
        self, slug: str, row_wire: dict[str, Any], skip_sid: str | None = None
    ) -> None:
        """Send a stored message to its room (all of it, or all but ``skip_sid``)."""
        await self.sio.emit(
            "message",
            row_wire,
            room=room_key(row_wire["room"]),
            skip_sid=skip_sid,
            namespace="/" + slug,
        )

    async def disconnect_tenant(self, slug: str) -> None:
        namespace = "/" + slug
        if namespace not in self.sio.manager.rooms:
            return
        for sid, _ in list(self.sio.manager.get_participants(namespace, None)):
            await self.sio.disconnect(sid, namespace=namespace)

    async def _on_tenant_changed(self, slug: str) -> None:
        for name in self.live_slugs() if slug == "*" else {slug}:
            if self.local_connections(name) == 0:
                continue
            try:
                keys = await self.services.directory.lookup(name)
            except OrgcastError:
                continue  # database unavailable: the next connect or event checks again
            if keys is None or not keys.tenant.active:
                await self.disconnect_tenant(name)
                if keys is None:
                    await self.presence.forget_tenant(name)

    # -- connect / disconnect -------------------------------------------------------------------

    async def _on_connect(
        self, namespace: str, sid: str, environ: Any = None, auth: Any = None, *extra: Any
    ) -> dict[str, Any] | None:
        if self._is_client_event(sid, namespace):
            return _lifecycle_event_refused("connect")
        try:
            state = await self._admit(namespace, environ, auth)
        except OrgcastError as exc:
            raise socketio.exceptions.ConnectionRefusedError(exc.code, exc.to_dict()) from None
        except DB_ERRORS:
            raise _refusal("unavailable", "the tenant directory is unavailable; retry") from None
        except Exception:
            log.exception("connect to %s failed", namespace)
            raise _refusal("unavailable", "the server could not admit the connection") from None
        await self.sio.save_session(sid, {"state": state}, namespace=namespace)
        return None

    def _is_client_event(self, sid: str, namespace: str) -> bool:
        """A client may emit an event named ``connect`` or ``disconnect``: python-socketio hands it
        to the lifecycle handler. A genuine connect/disconnect runs while the sid is pending, so a
        fully connected sid means a client event, which must not re-admit or drop its rooms."""
        return bool(self.sio.manager.is_connected(sid, namespace))

    async def _admit(self, namespace: str, environ: dict[str, Any], auth: Any) -> SocketState:
        if namespace == "/":
            raise BadRequest("connect to a tenant namespace, e.g. /acme", code="namespace_required")
        slug = namespace[1:]
        keys = await self.services.directory.lookup(slug) if SLUG_RE.match(slug) else None
        if keys is None:
            raise NotFound(f"no tenant {slug!r}", code="tenant_not_found")
        if not keys.tenant.active:
            raise TenantSuspended()
        origin = environ.get("HTTP_ORIGIN")
        if keys.tenant.allowed_origins and origin and origin not in keys.tenant.allowed_origins:
            raise OriginForbidden(f"origin {origin!r} is not allowed for this tenant")
        token = auth.get("token") if isinstance(auth, dict) else None
        principal = verify_token(token, keys)
        # Last check: a slot taken here is given back in the disconnect handler.
        if not await self.presence.acquire(slug, keys.limits.max_connections):
            raise RateLimited(
                f"the tenant's limit of {keys.limits.max_connections} connections is reached",
                code="connection_limit",
            )
        return SocketState(slug=slug, tenant_id=keys.tenant.id, principal=principal)

    async def _on_disconnect(
        self, namespace: str, sid: str, reason: Any = None, *extra: Any
    ) -> dict[str, Any] | None:
        if self._is_client_event(sid, namespace):
            return _lifecycle_event_refused("disconnect")
        state = await self._state(sid, namespace)
        if state is None:
            return None
        for room in list(state.rooms):
            await self._leave(state, sid, namespace, room)
        await self.presence.release(state.slug)
        return None

    # -- events ---------------------------------------------------------------------------------

    async def _on_event(self, event: str, namespace: str, sid: str, *args: Any) -> dict[str, Any]:
        try:
            state = await self._state(sid, namespace)
            if state is None:
                raise UnknownEvent("this socket is not admitted")
            keys = await self._tenant(state)
            state.bucket.take(keys.limits.messages_per_second)
            return await self._dispatch(event, namespace, sid, state, keys, args)
        except OrgcastError as exc:
            return {"ok": False, "error": exc.to_dict()}
        except DB_ERRORS:
            return {"ok": False, "error": Unavailable().to_dict()}
        except Exception:
            log.exception("event %r on %s failed", event, namespace)
            return {"ok": False, "error": {"code": "internal", "message": "internal error"}}

    async def _dispatch(
        self,
        event: str,
        namespace: str,
        sid: str,
        state: SocketState,
        keys: TenantKeys,
        args: tuple[Any, ...],
    ) -> dict[str, Any]:
        if event == "message":
            return await self._message(namespace, sid, state, keys, payloads.payload(args))
        if event == "join":
            return await self._join(namespace, sid, state, keys, payloads.payload(args))
        if event == "leave":
            data = payloads.payload(args)
            room = payloads.room(data)
            if room not in state.rooms:
                raise NotJoined(f"not in room {room!r}")
            await self._leave(state, sid, namespace, room)
            return {"ok": True, "room": room}
        if event == "history":
            return await self._history(state, payloads.payload(args))
        if event == "presence":
            data = payloads.payload(args)
            room = self._allowed_room(state, data)
            members = await self.presence.members(state.slug, room)
            return {"ok": True, "room": room, "members": members}
        if event in keys.tenant.ephemeral_events:
            return await self._ephemeral(event, namespace, sid, state, keys, payloads.payload(args))
        raise UnknownEvent(f"unknown event {event[:64]!r}")

    async def _tenant(self, state: SocketState) -> TenantKeys:
        keys = self.services.directory.cached(state.slug)
        if keys is None:
            keys = await self.services.directory.lookup(state.slug)
        if keys is None or keys.tenant.id != state.tenant_id:
            raise TenantSuspended("the tenant no longer exists")
        if not keys.tenant.active:
            raise TenantSuspended()
        return keys

    async def _state(self, sid: str, namespace: str) -> SocketState | None:
        try:
            session = await self.sio.get_session(sid, namespace=namespace)
        except KeyError:
            return None
        state = session.get("state")
        return state if isinstance(state, SocketState) else None

    @staticmethod
    def _allowed_room(state: SocketState, data: dict[str, Any]) -> str:
        room = payloads.room(data)
        if not state.principal.may_join(room):
            raise RoomForbidden(f"the token does not allow room {room!r}")
        return room

    async def _message(
        self, namespace: str, sid: str, state: SocketState, keys: TenantKeys, data: dict[str, Any]
    ) -> dict[str, Any]:
        room = payloads.room(data)
        if room not in state.rooms:
            raise NotJoined(f"join room {room!r} before sending to it")
        if "body" not in data:
            raise BadRequest("body is required")
        client_id = payloads.client_id(data)
        encoded = encode_body(data["body"], keys.limits.max_message_bytes)
        principal = state.principal
        row = await self.services.messages.send(
            NewMessage(state.tenant_id, room, principal.user_id, principal.name, encoded, client_id)
        )
        if not row.duplicate:
            await self.sio.emit(
                "message",
                wire(row, raw_json),
                room=room_key(room),
                skip_sid=sid,
                namespace=namespace,
            )
        return {"ok": True, "id": row.id, "room": room, "seq": row.seq, "ts": row.ts}

    async def _join(
        self, namespace: str, sid: str, state: SocketState, keys: TenantKeys, data: dict[str, Any]
    ) -> dict[str, Any]:
        room = self._allowed_room(state, data)
        since = payloads.optional_seq(data, "since")
        if room not in state.rooms:
            if len(state.rooms) >= keys.limits.max_rooms_per_connection:
                raise RoomLimit(
                    f"at most {keys.limits.max_rooms_per_connection} rooms per connection"
                )
            state.rooms.add(room)
            await self.sio.enter_room(sid, room_key(room), namespace=namespace)
            member = state.principal.member()
            if await self.presence.join(state.slug, room, sid, member):
                await self.sio.emit(
                    "presence",
                    {"room": room, "action": "join", "member": member},
                    room=room_key(room),
                    skip_sid=sid,
                    namespace=namespace,
                )
        members = await self.presence.members(state.slug, room)
        ack: dict[str, Any] = {"ok": True, "room": room, "members": members}
        if since is None:
            ack["seq"] = await self.services.messages.room_seq(state.tenant_id, room)
            return ack
        replay = await self.services.messages.replay(
            state.tenant_id, room, since, self.settings.messages.replay_page, raw_json
        )
        ack.update(seq=replay.seq, missed=replay.missed, truncated=replay.truncated)
        if replay.expired:
            ack["expired"] = True
        return ack

    async def _leave(self, state: SocketState, sid: str, namespace: str, room: str) -> None:
        state.rooms.discard(room)
        await self.sio.leave_room(sid, room_key(room), namespace=namespace)
        member = state.principal.member()
        if await self.presence.leave(state.slug, room, sid, member["id"]):
            await self._announce_leave(state.slug, room, member)

    async def _announce_leave(self, slug: str, room: str, member: dict[str, str]) -> None:
        await self.sio.emit(
            "presence",
            {"room": room, "action": "leave", "member": member},
            room=room_key(room),
            namespace="/" + slug,
        )

    async def _history(self, state: SocketState, data: dict[str, Any]) -> dict[str, Any]:
        room = self._allowed_room(state, data)
        before = payloads.optional_seq(data, "before_seq")
        after = payloads.optional_seq(data, "after_seq")
        page = self.settings.messages.history_page
        limit = payloads.limit(data, min(50, page), page)
        messages, has_more = await self.services.messages.history(
            state.tenant_id, room, before_seq=before, after_seq=after, limit=limit, decode=raw_json
        )
        return {"ok": True, "room": room, "messages": messages, "has_more": has_more}

    async def _ephemeral(
        self,
        event: str,
        namespace: str,
        sid: str,
        state: SocketState,
        keys: TenantKeys,
        data: dict[str, Any],
    ) -> dict[str, Any]:
        room = payloads.room(data)
        if room not in state.rooms:
            raise NotJoined(f"join room {room!r} before sending to it")
        value = data.get("data")
        encode_body(value, keys.limits.max_message_bytes, "data")
        # Volatile: dropped for a recipient that is already behind (see fanout.py).
        await self.sio.manager.emit(
            event,
            {"room": room, "sender": state.principal.member(), "data": value},
            namespace,
            room=room_key(room),
            skip_sid=sid,
            volatile=True,
        )
        return {"ok": True}


def _lifecycle_event_refused(event: str) -> dict[str, Any]:
    return {"ok": False, "error": UnknownEvent(f"{event!r} is reserved").to_dict()}


def _refusal(code: str, message: str) -> socketio.exceptions.ConnectionRefusedError:
    return socketio.exceptions.ConnectionRefusedError(code, {"code": code, "message": message})
