"""Guards against broken or hostile clients, below the event handlers.

python-socketio and python-engineio trust their peers more than a public service can: a malformed
packet raises out of the library and is logged with a traceback, binary attachments are buffered
as announced, a socket may stay without a namespace forever. Each guard here changes one of those
behaviours; every one of them costs a constant check on the packet path, nothing per byte.

Patches on the libraries' internals (listed as patch 7 in ``patches.py``; the pinned minors and
``tests/test_patches.py`` fail when these internals change):

1. ``PacketGuard.on_message`` replaces the server's Engine.IO ``message`` handler
   (``AsyncServer._handle_eio_message``). It decodes the Socket.IO packet itself, so a packet
   that does not decode (truncated JSON, ``1e400``, ``NaN``, lone surrogates, nesting deeper than
   1024) or whose event name is not a non-empty string gets a ``bad_request`` error ack when its
   ack id is known, and never an exception. Binary packets (types 5 and 6) are refused at decode
   time and their attachments are never buffered: the contract has no binary payloads.
   It then calls the same ``_handle_connect``/``_handle_event``/... the library would.
2. The same handler closes the race of an Engine.IO CLOSE that arrives while a namespace CONNECT
   is being admitted: the library registers the sid after the socket is gone, leaving a "ghost"
   member for good; the guard disconnects it again.
3. ``PacketGuard.on_connect`` / ``on_disconnect`` wrap the Engine.IO ``connect``/``disconnect``
   handlers: a socket that has not connected to a namespace within
   ``server.unauthenticated_timeout_seconds`` is closed, and a node holds at most
   ``server.max_unauthenticated`` of them (more handshakes are refused with 401).
4. Namespace CONNECT packets are throttled per socket (a token bucket), so one socket cannot
   turn into a stream of tenant lookups.
5. ``GuardedFrames`` checks each websocket frame before the engine decodes it (the engine's own
   decoder raises out of its receive loop on a frame that is not an Engine.IO packet): binary
   frames and frames that are not Engine.IO packets are dropped and counted.
6. ``ClientErrorLog`` is a logging filter on the libraries' loggers: tracebacks caused by client
   input are counted instead of written, and summed up in one WARNING per interval.
7. ``polling_body_limit`` (an aiohttp middleware) answers a long-polling POST whose
   ``Content-Length`` exceeds ``server.max_packet_bytes`` with 413 before the engine reads the
   body, and closes that connection.

A socket that keeps sending what the guards refuse (``STRIKES`` within ``STRIKE_WINDOW`` seconds)
is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from socketio import packet as sio_packet

from ..errors import BadRequest, RateLimited
from ..services.limits import TokenBucket
from ..settings import Settings
from . import patches

log = logging.getLogger(__name__)

STRIKES = 20
STRIKE_WINDOW = 10.0
CONNECTS_PER_SECOND = 2.0  # per socket, with bursts of a few
ENGINE_PACKET_TYPES = frozenset("0123456")
NOOP_FRAME = "6"  # what a refused websocket frame becomes: the engine ignores it


class ClientErrorLog(logging.Filter):
    """Counts client mistakes and logs them once per ``interval``, never with a traceback.

    Installed as a filter on the libraries' loggers, it swallows records that carry a traceback
    (the libraries log client-caused exceptions that way) and aiohttp's reports of unparsable
    requests; ``note`` counts mistakes the guards refuse themselves. The first mistake after a
    quiet interval is logged at once, the rest are summed up in the next report.
    """

    LIBRARY_LOGGERS = ("engineio.server", "socketio.server", "aiohttp.server")

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self.total = 0
        self._next_report = 0.0

    def install(self) -> None:
        for name in self.LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            for existing in list(logger.filters):
                if isinstance(existing, ClientErrorLog):
                    logger.removeFilter(existing)
            logger.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None:
            return True
        exc = record.exc_info[1]
        if record.name == "aiohttp.server":
            if not isinstance(exc, HttpProcessingError | ConnectionError):
                return True  # a fault of the server itself keeps its traceback
            self.note("unparsable_http_request")
            return False
        self.note(f"malformed_packet:{type(exc).__name__}")
        return False

    def note(self, kind: str) -> None:
        self.counts[kind] += 1
        self.total += 1
        now = time.monotonic()
        if now >= self._next_report:
            self._next_report = now + self.interval
            summary = ", ".join(f"{k}={n}" for k, n in self.counts.most_common(8))
            log.warning(
                "client errors refused (%d since the last report; next report in %.0f s): %s",
                sum(self.counts.values()),
                self.interval,
                summary,
            )
            self.counts.clear()


class PacketGuard:
    """The Socket.IO server's Engine.IO handlers, guarded (see the module docstring)."""

    def __init__(
        self,
        sio: Any,
        errors: ClientErrorLog,
        *,
        unauthenticated_timeout: float,
        max_unauthenticated: int,
    ) -> None:
        self.sio = sio
        self.errors = errors
        self.unauthenticated_timeout = unauthenticated_timeout
        self.max_unauthenticated = max_unauthenticated
        # Engine.IO sids without a namespace yet, with the timer that closes them.
        self.unauthenticated: dict[str, asyncio.TimerHandle] = {}
        self._strikes: dict[str, tuple[float, int]] = {}
        self._connects: dict[str, TokenBucket] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._lib_connect: Callable[..., Any] = sio._handle_eio_connect
        self._lib_disconnect: Callable[..., Any] = sio._handle_eio_disconnect

    def install(self) -> None:
        eio = self.sio.eio
        eio.on("connect", self.on_connect)
        eio.on("message", self.on_message)
        eio.on("disconnect", self.on_disconnect)

    # -- Engine.IO lifecycle --------------------------------------------------------------------

    async def on_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        if len(self.unauthenticated) >= self.max_unauthenticated:
            self.errors.note("unauthenticated_limit")
            return {
                "code": "connection_limit",
                "message": "too many sockets without a namespace on this node; retry",
            }
        await self._lib_connect(eio_sid, environ)
        self._arm(eio_sid)
        return None

    async def on_disconnect(self, eio_sid: str, reason: Any = None) -> None:
        self._disarm(eio_sid)
        self._strikes.pop(eio_sid, None)
        self._connects.pop(eio_sid, None)
        await self._lib_disconnect(eio_sid, reason)

    def _arm(self, eio_sid: str) -> None:
        if eio_sid in self.unauthenticated:
            return
        loop = asyncio.get_running_loop()
        self.unauthenticated[eio_sid] = loop.call_later(
            self.unauthenticated_timeout, self._expire, eio_sid
        )

    def _disarm(self, eio_sid: str) -> None:
        timer = self.unauthenticated.pop(eio_sid, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, eio_sid: str) -> None:
        self.unauthenticated.pop(eio_sid, None)
        self._close(eio_sid)

    def _close(self, eio_sid: str) -> None:
        task = asyncio.ensure_future(self._close_socket(eio_sid))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_socket(self, eio_sid: str) -> None:
        """Disconnect the socket and end its transport too: a peer that ignores the Engine.IO
        CLOSE packet does not keep its websocket open."""
        eio = self.sio.eio
        socket = eio.sockets.get(eio_sid)
        if socket is None:
            return
        await socket.close(wait=False, reason=eio.reason.SERVER_DISCONNECT)
        eio.sockets.pop(eio_sid, None)
        socket.queue.put_nowait(None)  # the websocket writer ends, closing the transport

    def strike(self, eio_sid: str, kind: str) -> None:
        """Count one refused packet; the socket is closed at ``STRIKES`` within the window."""
        self.errors.note(kind)
        now = time.monotonic()
        since, count = self._strikes.get(eio_sid, (now, 0))
        if now - since > STRIKE_WINDOW:
            since, count = now, 0
        count += 1
        self._strikes[eio_sid] = (since, count)
        if count >= STRIKES:
            self._strikes.pop(eio_sid, None)
            self.errors.note("closed_for_garbage")
            self._close(eio_sid)

    # -- Socket.IO packets ----------------------------------------------------------------------

    async def on_message(self, eio_sid: str, data: Any) -> None:
        sio = self.sio
        if not isinstance(data, str):
            # A binary frame (or an Engine.IO message the engine decoded as JSON): orgcast has
            # no binary payloads and buffers no attachments.
            self.strike(eio_sid, "binary_frame" if isinstance(data, bytes) else "bad_message")
            return
        kind = data[:1]
        if kind in ("5", "6"):
            await self._refuse(eio_sid, data, "binary payloads are not supported", "binary_packet")
            return
        try:
            pkt = sio.packet_class(encoded_packet=data)
        except (ValueError, TypeError, IndexError, RecursionError):
            await self._refuse(eio_sid, data, "the packet is not valid JSON", "malformed_packet")
            return
        namespace = pkt.namespace or "/"
        kind_code = pkt.packet_type
        if kind_code == sio_packet.EVENT:
            event = pkt.data[0] if isinstance(pkt.data, list) and pkt.data else None
            if not isinstance(event, str) or not event:
                message = "the event name must be a non-empty string"
                await self._refuse(eio_sid, data, message, "bad_event_name", pkt=pkt)
                return
            await sio._handle_event(eio_sid, namespace, pkt.id, pkt.data)
        elif kind_code == sio_packet.CONNECT:
            await self._connect(eio_sid, namespace, pkt.data)
        elif kind_code == sio_packet.DISCONNECT:
            await sio._handle_disconnect(eio_sid, namespace, sio.reason.CLIENT_DISCONNECT)
            if not self._namespaces(eio_sid) and eio_sid in sio.eio.sockets:
                self._arm(eio_sid)
        elif kind_code == sio_packet.ACK:
            await sio._handle_ack(eio_sid, namespace, pkt.id, pkt.data)
        else:
            self.strike(eio_sid, "bad_packet_type")

    async def _connect(self, eio_sid: str, namespace: str, auth: Any) -> None:
        sio = self.sio
        bucket = self._connects.setdefault(eio_sid, TokenBucket())
        try:
            bucket.take(CONNECTS_PER_SECOND)
        except RateLimited as exc:
            self.strike(eio_sid, "connect_throttled")
            error = RateLimited(
                "too many namespace connects on this socket", retry_after_ms=exc.retry_after_ms
            ).to_dict()
            await sio._send_packet(
                eio_sid,
                sio.packet_class(
                    sio_packet.CONNECT_ERROR,
                    data={"message": error["code"], "data": error},
                    namespace=namespace,
                ),
            )
            return
        if not self._open(eio_sid):
            return  # closed while this packet waited: nothing to admit
        try:
            await sio._handle_connect(eio_sid, namespace, auth)
        except KeyError:
            pass  # the socket went away during admission (the library reads its environ)
        sid = sio.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not sio.manager.is_connected(sid, namespace):
            return
        if self._open(eio_sid):
            self._disarm(eio_sid)
        else:
            # The Engine.IO socket closed while the connect handler ran; the library's
            # disconnect skipped this sid then (it was still pending), so it goes now.
            await sio._handle_disconnect(eio_sid, namespace, sio.reason.CLIENT_DISCONNECT)

    def _open(self, eio_sid: str) -> bool:
        socket = self.sio.eio.sockets.get(eio_sid)
        return (
            socket is not None
            and not socket.closed
            and not socket.closing
            and eio_sid in self.sio.environ
        )

    def _namespaces(self, eio_sid: str) -> list[str]:
        manager = self.sio.manager
        return [
            ns
            for ns in list(manager.get_namespaces())
            if manager.sid_from_eio_sid(eio_sid, ns) is not None
        ]

    async def _refuse(
        self, eio_sid: str, data: str, message: str, kind: str, *, pkt: Any = None
    ) -> None:
        """Count a refused packet and answer it with a ``bad_request`` ack when it asked for one
        on a namespace this socket is connected to."""
        self.strike(eio_sid, kind)
        packet_type, namespace, ack_id = (
            (pkt.packet_type, pkt.namespace or "/", pkt.id) if pkt is not None else header(data)
        )
        if ack_id is None or packet_type not in (sio_packet.EVENT, sio_packet.BINARY_EVENT):
            return
        sid = self.sio.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.sio.manager.is_connected(sid, namespace):
            return
        error = {"ok": False, "error": BadRequest(message).to_dict()}
        await self.sio._send_packet(
            eio_sid,
            self.sio.packet_class(sio_packet.ACK, namespace=namespace, id=ack_id, data=[error]),
        )


def header(data: str) -> tuple[int | None, str, int | None]:
    """Type, namespace and ack id of a Socket.IO packet whose payload does not decode, read the
    way python-socketio's decoder reads them (attachment count, ``/namespace,``, digits)."""
    if not data or not data[0].isdigit():
        return None, "/", None
    packet_type = int(data[0])
    rest = data[1:]
    dash = rest.find("-")
    if 0 < dash <= 10 and rest[:dash].isdigit():
        rest = rest[dash + 1 :]
    namespace = "/"
    if rest.startswith("/"):
        comma = rest.find(",")
        namespace, rest = (rest, "") if comma == -1 else (rest[:comma], rest[comma + 1 :])
        namespace = namespace.split("?", 1)[0]
    digits = 0
    while digits < len(rest) and digits < 100 and rest[digits].isdigit():
        digits += 1
    ack_id = int(rest[:digits]) if digits else None
    return packet_type, namespace, ack_id


class GuardedFrames:
    """Checks a websocket frame before the engine decodes it (see the module docstring, 5)."""

    def __init__(self, guard: PacketGuard) -> None:
        self.guard = guard

    def check(self, eio_sid: str | None, frame: Any) -> Any:
        if isinstance(frame, str) and frame[:1] in ENGINE_PACKET_TYPES:
            return frame
        if eio_sid is not None:
            kind = "binary_frame" if isinstance(frame, bytes) else "bad_engine_packet"
            self.guard.strike(eio_sid, kind)
        return NOOP_FRAME


def polling_body_limit(limit: int) -> Callable[..., Any]:
    """An aiohttp middleware: a long-polling POST announcing more than ``limit`` bytes gets 413
    before anything reads its body, and its connection is closed (not drained)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST" and request.path.startswith("/socket.io"):
            length = request.content_length
            if length is not None and length > limit:
                response = web.json_response(
                    {
                        "error": {
                            "code": "too_large",
                            "message": f"the body exceeds the limit of {limit} bytes "
                            "(server.max_packet_bytes)",
                        }
                    },
                    status=413,
                )
                response.force_close()
                return response
        return await handler(request)

    return middleware


def install(sio: Any, settings: Settings) -> PacketGuard:
    """Put every guard on ``sio`` (a ``socketio.AsyncServer``); returns the packet guard."""
    errors = ClientErrorLog()
    errors.install()
    guard = PacketGuard(
        sio,
        errors,
        unauthenticated_timeout=settings.server.unauthenticated_timeout_seconds,
        max_unauthenticated=settings.server.max_unauthenticated,
    )
    guard.install()
    frames = GuardedFrames(guard)
    patches.install_websocket(sio, settings.server.websocket_compression, frames.check)
    return guard
