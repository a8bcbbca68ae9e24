"""The Socket.IO event handlers: parse the payload, call the Hub, turn the outcome into an ack.

Every refusal at connect is a ``connect_error`` whose message is a stable code and whose data is
``{code, message}``; nothing escapes the connect handler, since an exception there leaves the
client hanging. Every event is answered ``{ok: true, ...}`` or ``{ok: false, error}``. The
socket's ``Connection`` lives in its Socket.IO session, never on this object.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import socketio

from ..errors import BadRequest, DatabaseUnavailable, OrgcastError, UnknownEvent
from ..logs import bind, unbind
from ..metrics import STANDARD_EVENTS, Metrics, NullMetrics
from ..services.hub import Connection, Hub
from . import payloads
from .codec import raw_json

if TYPE_CHECKING:
    from ..services.tenant_models import TenantKeys

log = logging.getLogger(__name__)


class Handlers:
    """Registers the catch-all namespace handlers on ``sio``; ``hub()`` gives the Hub (or raises
    ``Unavailable`` while the node starts)."""

    def __init__(
        self,
        sio: socketio.AsyncServer,
        hub: Callable[[], Hub],
        history_page: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.sio = sio
        self.hub = hub
        self.history_page = history_page
        self.metrics = metrics or NullMetrics()

    def register(self) -> None:
        self.sio.on("connect", self.on_connect, namespace="*")
        self.sio.on("disconnect", self.on_disconnect, namespace="*")
        self.sio.on("*", self.on_event, namespace="*")

    @staticmethod
    async def connection(sio: socketio.AsyncServer, sid: str, namespace: str) -> Connection | None:
        try:
            session = await sio.get_session(sid, namespace=namespace)
        except KeyError:
            return None
        conn = session.get("state")
        return conn if isinstance(conn, Connection) else None

    def _is_client_event(self, sid: str, namespace: str) -> bool:
        """A client may emit an event named ``connect`` or ``disconnect``: python-socketio hands it
        to the lifecycle handler. A genuine connect/disconnect runs while the sid is pending, so a
        fully connected sid means a client event, which must not re-admit or drop its rooms."""
        return bool(self.sio.manager.is_connected(sid, namespace))

    # -- connect / disconnect ---------------------------------------------------------------------

    async def on_connect(
        self, namespace: str, sid: str, environ: Any = None, auth: Any = None, *extra: Any
    ) -> dict[str, Any] | None:
        if self._is_client_event(sid, namespace):
            return _lifecycle_event_refused("connect")
        token = bind(tenant=namespace[1:64] or None, sid=sid)
        try:
            environ = environ or {}
            # A websocket handed over by the engine's handshake keeps only the client's address.
            request = environ.get("aiohttp.request")
            address = request.remote if request is not None else environ.get("orgcast.remote")
            conn = await self.hub().admit(
                namespace, sid, environ.get("HTTP_ORIGIN"), auth, address=address
            )
        except OrgcastError as exc:
            self.metrics.refused(exc.code)
            if isinstance(exc, DatabaseUnavailable):
                self.metrics.database_error()
            log.debug("connect refused: %s", exc.code)
            raise socketio.exceptions.ConnectionRefusedError(exc.code, exc.to_dict()) from None
        except Exception:
            self.metrics.refused("unavailable")
            log.exception("connect to %s failed", namespace)
            raise _refusal("unavailable", "the server could not admit the connection") from None
        finally:
            unbind(token)
        await self.sio.save_session(sid, {"state": conn}, namespace=namespace)
        return None

    async def on_disconnect(
        self, namespace: str, sid: str, reason: Any = None, *extra: Any
    ) -> dict[str, Any] | None:
        if self._is_client_event(sid, namespace):
            return _lifecycle_event_refused("disconnect")
        conn = await self.connection(self.sio, sid, namespace)
        if conn is not None:
            await self.hub().disconnected(conn)
        return None

    # -- events -----------------------------------------------------------------------------------

    async def on_event(self, event: str, namespace: str, sid: str, *args: Any) -> dict[str, Any]:
        start = time.perf_counter()
        conn: Connection | None = None
        keys: TenantKeys | None = None
        result = "ok"
        token = None
        try:
            conn = await self.connection(self.sio, sid, namespace)
            if conn is None:
                raise UnknownEvent("this socket is not admitted")
            token = bind(tenant=conn.slug, sid=sid, user=conn.principal.user_id, event=event[:64])
            hub = self.hub()
            keys = await hub.check_event(conn)
            return await self._dispatch(hub, event, conn, keys, args)
        except OrgcastError as exc:
            result = exc.code
            if isinstance(exc, DatabaseUnavailable):
                self.metrics.database_error()
            return {"ok": False, "error": exc.to_dict()}
        except Exception:
            result = "internal"
            log.exception("event %r on %s failed", event, namespace)
            return {"ok": False, "error": {"code": "internal", "message": "internal error"}}
        finally:
            seconds = time.perf_counter() - start
            if event in STANDARD_EVENTS:
                label = event
            elif keys is not None and event in keys.tenant.ephemeral_events:
                label = "ephemeral"
            else:
                label = "other"
            self.metrics.event(conn.slug if conn else None, label, result, seconds)
            if log.isEnabledFor(logging.DEBUG):
                latency_ms = round(seconds * 1000, 3)
                log.debug(
                    "event %s: %s in %.1f ms", label, result, latency_ms,
                    extra={"result": result, "latency_ms": latency_ms},
                )  # fmt: skip
            if token is not None:
                unbind(token)

    async def _dispatch(
        self, hub: Hub, event: str, conn: Connection, keys: TenantKeys, args: tuple[Any, ...]
    ) -> dict[str, Any]:
        if event == "message":
            data = payloads.payload(args)
            room = payloads.room(data)
            hub.require_joined(conn, room)
            if "body" not in data:
                raise BadRequest("body is required")
            client_id = payloads.client_id(data)
            row = await hub.send(conn, keys, room, data["body"], client_id)
            return {"ok": True, "id": row.id, "room": room, "seq": row.seq, "ts": row.ts}
        if event == "join":
            data = payloads.payload(args)
            room = payloads.room(data)
            hub.check_room(conn, room)
            since = payloads.optional_seq(data, "since")
            joined = await hub.join(conn, keys, room, since, raw_json)
            ack: dict[str, Any] = {
                "ok": True, "room": room, "members": members_json(joined.members),
                "seq": joined.seq,
            }  # fmt: skip
            if joined.missed is not None:
                ack.update(missed=joined.missed, truncated=joined.truncated)
                if joined.expired:
                    ack["expired"] = True
            return ack
        if event == "leave":
            room = payloads.room(payloads.payload(args))
            await hub.leave(conn, room)
            return {"ok": True, "room": room}
        if event == "history":
            data = payloads.payload(args)
            room = payloads.room(data)
            hub.check_room(conn, room)
            before = payloads.optional_seq(data, "before_seq")
            after = payloads.optional_seq(data, "after_seq")
            page = self.history_page
            limit = payloads.limit(data, min(50, page), page)
            messages, has_more = await hub.history(
                conn, room, before_seq=before, after_seq=after, limit=limit, decode=raw_json
            )
            return {"ok": True, "room": room, "messages": messages, "has_more": has_more}
        if event == "presence":
            room = payloads.room(payloads.payload(args))
            members = members_json(await hub.members(conn, room))
            return {"ok": True, "room": room, "members": members}
        if event == "refresh":
            exp = await hub.refresh(conn, keys, payloads.payload(args).get("token"))
            return {"ok": True, "exp": exp}
        if event in keys.tenant.ephemeral_events:
            data = payloads.payload(args)
            await hub.relay(conn, keys, event, payloads.room(data), data.get("data"))
            return {"ok": True}
        raise UnknownEvent(f"unknown event {event[:64]!r}")


def members_json(members: list[dict[str, str]]) -> Any:
    """A member list, encoded once for its ack. The library walks an ack's data for binary
    parts before encoding it: over a list of member dicts that walk cost more than the encoding
    and grew with the room; a pre-encoded fragment is one value to it."""
    return raw_json(orjson.dumps(members).decode())


def _lifecycle_event_refused(event: str) -> dict[str, Any]:
    return {"ok": False, "error": UnknownEvent(f"{event!r} is reserved").to_dict()}


def _refusal(code: str, message: str) -> socketio.exceptions.ConnectionRefusedError:
    return socketio.exceptions.ConnectionRefusedError(code, {"code": code, "message": message})
