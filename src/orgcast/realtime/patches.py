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
   Its loop is ``DirectFanout.put``, which never suspends: ordered delivery (services/ordering.py)
   relies on a message being on every recipient's queue before the next one is handled.
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
6. ``ClusterRedisManager`` (overrides the Redis manager's ``_redis_listen_with_retries``,
   ``_publish`` and ``_handle_emit``, and replaces its ``redis``/``pubsub`` clients): its own
   subscription loop with a 0.1 s doubling to 2 s back-off that reports each loss and return
   (the library's waits 1 s doubling to 60 s, silently), publishing with one retry on a fresh
   connection and failures logged once per interval, stored messages published from a queue in
   one pipelined round trip (the ack no longer waits for Redis) and handed to ordered delivery
   on arrival. Correctness (DESIGN §11): a Redis outage cost ~9,200 live deliveries per 6 s and up
   to a minute of silence after it; see RESULTS.md "Faults". Also relied on:
   ``AsyncServer._handle_event_internal`` queues an event's ack in the same step as its handler
   returns (ordered delivery releases a joining or sending socket right after, with
   ``call_soon``).
7. The guards against broken or hostile clients live in ``guards.py`` (their docstring lists
   each): the Engine.IO ``connect``/``message``/``disconnect`` handlers wrapped or replaced
   (``_handle_eio_message`` re-implemented with its own decoding: malformed and binary packets
   refused, the CLOSE-before-CONNECT ghost removed, namespace-less sockets timed out and
   capped), and ``PlainWebSocket.wait`` above checking each frame before the engine decodes
   it. Correctness and safety, not speed: each costs one constant check per packet.
8. Lean engine sockets (``install_lean_sockets``, with direct fan-out): when python-engineio
   creates a socket (its ``connect`` event, before the first ping is scheduled), the socket's
   ``asyncio.Queue`` is swapped for a ``LeanQueue`` (no deque, getter or join event until used),
   ``schedule_ping`` files the socket in the server's ``PingWheel`` (one timer for all sockets)
   instead of starting a task that sleeps a ping interval, and a websocket opened directly (not
   upgraded from polling) is served by ``lean_websocket_handler``, which reads in the request's
   own task instead of a task plus ``wait_for`` per read; its packets are written by a task
   started on demand (``LeanQueue.attach``), so an idle websocket has no writer task. The
   engine's service task (ping timeouts) sweeps once a second instead of a ``wait_for`` per
   socket: the pings still unanswered (``PingWheel.pinged``), and every socket every 10th sweep.
   Memory per idle joined websocket at 5,000 sockets: 31.4 -> 21.9 KiB
   (benchmarks/RESULTS.md, "Memory per idle joined websocket").
9. Frames written to the transport (``LeanQueue.attach`` with the server's ``WriteBatch``, for an
   uncompressed aiohttp websocket opened directly): a broadcast's packet is a ``FramePacket``
   that carries its complete websocket frame, built once for every recipient (the ping is one
   constant ``PING_PACKET``); a put files the socket in the server's ``WriteBatch``, one
   ``call_soon`` per loop turn that writes each filed socket's frames, joined, in one
   ``transport.write``. A writer task runs only for a paused transport (the client reads
   slowly: what waits stays in the queue, in order, and counts as its backlog for volatile
   emits), the closing marker, or a socket the engine closed. Reads aiohttp's
   ``WebSocketResponse._writer``/``_closed``/``_closing``, the writer's ``transport``,
   ``protocol`` and ``compress``, and the protocol's ``_paused``/``_drain_helper``. The read
   loop handles a pong ("3") as the engine's ``receive`` does, without decoding a packet, and
   an open websocket's environ keeps only ``ENVIRON_KEPT`` (``trim_environ``). Fan-out
   (1 room x 200, same invocation): 2.1x deliveries/s, 2.25x deliveries per server CPU-second,
   p99 at half saturation 121 -> 28 ms. Memory per idle socket -1.1 KiB (environ); idle CPU at
   19,500 sockets 12.6 -> 9.3 % with the service task's sweep above (RESULTS.md "Round 3").
10. The websocket after its handshake (``hand_over``, from ``PlainWebSocket.__call__`` for a
   new lean socket when compression is off): orgcast answers the handshake (aiohttp's
   ``WebSocketResponse._handshake`` checks it and gives the headers), gives the transport an
   ``EngineWire`` of its own as protocol and makes aiohttp's ``RequestHandler`` forget it (no
   transport, no parser, keep-alive off, force-closed, dropped by its server), so the request,
   the handler, their two tasks and every coroutine frame between them end with the handshake.
   The wire parses client frames itself (RFC 6455: unmasked client frames and reserved bits
   fail the connection with 1002, which aiohttp's reader let through; 1009 past the size
   limit, decided from the frame header; 1007 for bad UTF-8), answers pings and the close
   handshake, and hands messages to the engine socket as ``lean_websocket_handler`` did, from
   a task only while some wait. It is also the ``LeanQueue``'s websocket and protocol, so
   patch 9 writes to it unchanged. Reads the ``RequestHandler``'s ``transport``,
   ``_message_tail``, ``_buffer_paused``, ``_parser`` and ``_manager``; aiohttp's minor is
   pinned by tests/test_patches.py. A websocket upgrading a long-polling socket is handed
   over the same way (``PlainWebSocket.__call__`` for a connected lean socket), and the wire
   does the engine's upgrade (``AsyncSocket._websocket_handler``) itself: ``upgrading`` while
   it waits for the probe and the upgrade packet, the queue attached only once the upgrade
   completes (what waited in it is written first, in order); a failed upgrade leaves the
   socket on long-polling (``EngineWire.upgrade``). Reads and sets the engine socket's
   ``upgrading``/``upgraded`` and python-socketio's ``environ`` table (``orgcast_environs``).
   Any websocket with compression on keeps aiohttp's websocket (``lean_websocket_handler`` or
   the engine's). Memory per idle joined websocket at 5,000 sockets: 22.8 -> 5.4 KiB, and
   34.5 -> 5.5 KiB for one upgraded from long-polling (RESULTS.md "Round 4"). Reverted once
   for a CI failure that proved to be its test's (RESULTS.md "Round 5"), where an upgraded
   socket measured 5.4 KiB at 5,000 and 5.9 KiB at 19,500.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import struct
import time
import types
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import socketio
from aiohttp import web
from aiohttp._websocket.helpers import websocket_mask
from engineio import exceptions as engine_exceptions
from engineio import packet as engine_packet
from engineio.async_drivers import aiohttp as engine_aiohttp
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from socketio import packet as socket_packet

from ..logs import Repeated
from ..tasks import cancel_and_wait

log = logging.getLogger(__name__)

# The subscription's reconnect back-off: from LISTEN_RETRY_MIN, doubling, at most LISTEN_RETRY_MAX.
LISTEN_RETRY_MIN = 0.1
LISTEN_RETRY_MAX = 2.0
# Stored messages waiting to be published to the other nodes, at most.
OUTBOX_MAX = 10_000

# -- 1. the websocket class -------------------------------------------------------------------


FrameCheck = Callable[[str | None, Any], Any]


def websocket_class(
    compress: bool, check: FrameCheck | None = None
) -> type[engine_aiohttp.WebSocket]:
    """``check(eio_sid, frame)``, when given, sees each received frame before the engine decodes
    it and returns what the engine gets instead (see guards.py, ``GuardedFrames``)."""

    class PlainWebSocket(engine_aiohttp.WebSocket):  # type: ignore[misc]
        async def __call__(self, environ: dict[str, Any]) -> web.StreamResponse:
            request = environ["aiohttp.request"]
            socket: Any = getattr(self.handler, "__self__", None)
            lean = isinstance(getattr(socket, "queue", None), LeanQueue)
            if lean and not compress and HAND_OVER:
                if not socket.connected:
                    return hand_over(request, socket, environ, check)
                if socket.upgrading:
                    return web.json_response(UPGRADING_ERROR, status=400)
                return hand_over(request, socket, environ, check, upgrade=True)
            lean = lean and not socket.connected
            self._sock = web.WebSocketResponse(
                max_msg_size=self.server.max_http_buffer_size, compress=compress
            )
            await self._sock.prepare(request)
            self.environ = environ
            if lean:
                await lean_websocket_handler(socket, self)
            else:
                await self.handler(self)
            return self._sock

        async def wait(self) -> Any:
            frame = await super().wait()
            if check is None:
                return frame
            # The handler is the engine socket's bound _websocket_handler: its sid names it.
            return check(getattr(getattr(self.handler, "__self__", None), "sid", None), frame)

    return PlainWebSocket


def install_websocket(
    sio: socketio.AsyncServer, compress: bool, check: FrameCheck | None = None
) -> None:
    """The table is copied: the module-level one stays untouched for other servers."""
    sio.eio._async = {**sio.eio._async, "websocket": websocket_class(compress, check)}


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


# -- 6. lean engine sockets ---------------------------------------------------------------------


class LeanQueue:
    """The part of ``asyncio.Queue`` python-engineio and this module use, for one consumer (the
    socket's writer): nothing is allocated for an idle socket but the object itself. Items live
    in a deque only while some are waiting; getters and joiners in lists only while waiting.

    Once ``lean_websocket_handler`` attaches the websocket (``attach``), there is no waiting
    consumer at all. An uncompressed aiohttp websocket is written to its transport directly
    (patch 9): a put files the queue in the server's ``WriteBatch``, which writes each filed
    queue's frames, joined, in one transport write at the end of the loop turn; only a paused
    transport (the client reads slowly), the closing marker or a closed websocket start a writer
    task (``_drain``), which ends when the queue is empty. Otherwise (compression on, or another
    websocket class) a put starts the writer task unless one is running. So an idle websocket
    has no writer task, and a burst costs no task per socket."""

    __slots__ = ("_batch", "_getters", "_items", "_joiners", "_protocol", "_sock", "_socket",
                 "_transport", "_unfinished", "_writer", "_ws")  # fmt: skip

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None
        self._joiners: list[asyncio.Future[None]] | None = None
        self._unfinished = 0
        self._socket: Any = None
        self._ws: Any = None
        # A task, ``BATCHED`` (filed in ``_batch``, written at the end of the loop turn) or None.
        self._writer: Any = None
        # Set by ``attach`` for a websocket written to its transport directly (patch 9).
        self._batch: WriteBatch | None = None
        self._sock: Any = None
        self._transport: Any = None
        self._protocol: Any = None

    def attach(self, socket: Any, ws: Any, batch: WriteBatch | None = None) -> None:
        """Write what is queued, and every later put, to ``ws``: straight to its transport when
        ``batch`` is given and ``ws`` is an uncompressed aiohttp websocket, else with its
        ``send`` from an on-demand task."""
        self._socket, self._ws = socket, ws
        if isinstance(ws, EngineWire):
            if batch is not None:
                self._batch, self._sock = batch, ws
                self._transport, self._protocol = ws.transport, ws
            if self._items:
                self._start_task()
            return
        sock = getattr(ws, "_sock", None)
        writer = getattr(sock, "_writer", None)
        if batch is not None and writer is not None and not writer.compress:
            self._batch, self._sock = batch, sock
            self._transport, self._protocol = writer.transport, writer.protocol
        if self._items:
            self._start_task()

    def _start_task(self) -> None:
        """Start the writer task unless it runs (a filed queue becomes the task's)."""
        if self._ws is not None and (self._writer is None or self._writer is BATCHED):
            self._writer = asyncio.ensure_future(_drain(self))

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return False

    def put_nowait(self, item: Any) -> None:
        if self._socket is not None and self._ws is None:
            return  # its websocket is closed: nothing will write it (and ``join`` must not wait)
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        self._unfinished += 1
        if self._ws is None:
            self._wake_getter()
        elif self._writer is None:
            batch = self._batch
            if batch is not None and item is not None and not self._protocol._paused:
                self._writer = BATCHED
                batch.add(self)
            else:
                self._start_task()

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if not items:
            self._items = None
        return item

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                if self._getters is not None and getter in self._getters:
                    self._getters.remove(getter)
                if self._items and not getter.cancelled():
                    self._wake_getter()  # it was woken, then cancelled: pass the wake-up on
                raise
        return self.get_nowait()

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._joiners:
            joiners, self._joiners = self._joiners, None
            for joiner in joiners:
                if not joiner.done():
                    joiner.set_result(None)

    async def join(self) -> None:
        if self._unfinished:
            joiner = asyncio.get_running_loop().create_future()
            if self._joiners is None:
                self._joiners = []
            self._joiners.append(joiner)
            await joiner

    def _wake_getter(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                break
        if not getters:
            self._getters = None

    # -- patch 9: frames written to the transport ---------------------------------------------

    def _writable(self) -> bool:
        """The websocket may still carry data frames: aiohttp has not begun its close (sent or
        received), and the transport is open."""
        sock = self._sock
        return (
            not sock._closed
            and not sock._closing
            and self._protocol.transport is not None
            and not self._transport.is_closing()
        )

    def _write_frames(self) -> None:
        """Write every queued packet up to the closing marker (which stays queued) in one
        transport write."""
        items = self._items
        if not items:
            return
        frames = []
        while items and items[0] is not None:
            frames.append(items.popleft())
        if not items:
            self._items = None
        try:
            if len(frames) == 1:
                self._transport.write(frame_of(frames[0]))
            else:
                self._transport.write(b"".join([frame_of(pkt) for pkt in frames]))
        finally:
            for _ in frames:
                self.task_done()

    def _flush(self) -> None:
        """``WriteBatch``'s turn for this queue: write now, or leave it to the writer task."""
        if self._writer is not BATCHED:
            return  # the writer task took over meanwhile
        self._writer = None
        if self._protocol._paused or not self._writable():
            self._start_task()
            return
        try:
            self._write_frames()
        except Exception:
            log.debug("writing to a websocket failed", exc_info=True)
        if self._items or self._socket.closed:
            # The closing marker, a failed write, or the engine's CLOSE packet was the last
            # (its close puts no marker): the task closes the websocket.
            self._start_task()


class _Batched:
    """The marker a filed ``LeanQueue`` keeps in place of its writer task."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "BATCHED"


BATCHED: Any = _Batched()


class WriteBatch:
    """The lean websockets with frames waiting, written at the end of the current loop turn: one
    callback for the whole server, each websocket's frames in one transport write (a message
    handled with several others in one turn, as ordered delivery and group commit hand them out,
    costs one write per recipient instead of one per message and recipient)."""

    __slots__ = ("_handle", "_queues")

    def __init__(self) -> None:
        self._queues: list[LeanQueue] = []
        self._handle: asyncio.Handle | None = None

    def add(self, queue: LeanQueue) -> None:
        self._queues.append(queue)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        queues, self._queues = self._queues, []
        self._handle = None
        for queue in queues:
            queue._flush()


def _frame(encoded: str | bytes) -> bytes:
    """The unmasked, unfragmented websocket frame (RFC 6455 5.2) carrying one engine.io packet:
    text for a ``str``, binary for ``bytes``."""
    if isinstance(encoded, str):
        payload, first = encoded.encode(), 0x81
    else:
        payload, first = bytes(encoded), 0x82
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload


class FramePacket(engine_packet.Packet):  # type: ignore[misc]
    """An engine.io packet that carries its websocket frame, built once for every recipient
    (a broadcast's packet, the ping); still a plain ``Packet`` for long-polling and for the
    engine's own websocket writer."""

    def __init__(self, packet_type: int, data: Any = None) -> None:
        super().__init__(packet_type, data)
        self.frame = _frame(self.encode())


def frame_of(pkt: Any) -> bytes:
    if type(pkt) is FramePacket:
        return pkt.frame
    return _frame(pkt.encode())


# One ping packet for every socket: its frame is a constant. A pong is recognised by its text.
PING_PACKET = FramePacket(engine_packet.PING)
PONG = str(engine_packet.PONG)


class PingWheel:
    """Every socket's next ping, in one-second slots, served by one timer for the whole server
    (python-engineio starts a task per socket that sleeps a ping interval). A ping goes out up
    to a second late: well within the client's ping timeout."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._slots: dict[int, list[Any]] = {}
        self._timer: asyncio.TimerHandle | None = None
        # (sent at, socket) for every ping, in the order sent: the service task checks these for
        # a missing pong instead of every socket every second.
        self.pinged: deque[tuple[float, Any]] = deque()

    def add(self, socket: Any) -> None:
        loop = asyncio.get_running_loop()
        due = math.ceil(loop.time() + self._interval)
        slot = self._slots.get(due)
        if slot is None:
            self._slots[due] = [socket]
        else:
            slot.append(socket)
        if self._timer is None:
            self._timer = loop.call_at(due, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for due in [d for d in self._slots if d <= now]:
            for socket in self._slots.pop(due):
                _ping(socket)
                if socket.last_ping:
                    self.pinged.append((socket.last_ping, socket))
        self._timer = loop.call_at(min(self._slots), self._tick) if self._slots else None

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._slots.clear()
        self.pinged.clear()


def _schedule_ping(self: Any) -> None:
    """``AsyncSocket.schedule_ping`` through the server's ``PingWheel`` instead of a task."""
    if self.last_ping:
        self.last_ping = None
        self.server.orgcast_pings.add(self)


def _ping(socket: Any) -> None:
    if not socket.closing and not socket.closed:
        socket.last_ping = time.time()
        socket.queue.put_nowait(PING_PACKET)


def make_lean(socket: Any) -> None:
    """Swap a new engine socket's queue (keeping what is queued), ping and poll."""
    old: asyncio.Queue[Any] = socket.queue
    queue = LeanQueue()
    while not old.empty():
        queue.put_nowait(old.get_nowait())
    socket.queue = queue
    socket.schedule_ping = types.MethodType(_schedule_ping, socket)
    socket.poll = types.MethodType(_poll, socket)


def stop_pings(sio: socketio.AsyncServer) -> None:
    wheel = getattr(sio.eio, "orgcast_pings", None)
    if isinstance(wheel, PingWheel):
        wheel.stop()


# How often the lean service task looks for sockets whose client stopped answering pings (the
# pings sent, in order), and every how many of those it also looks at every socket.
SERVICE_SWEEP_SECONDS = 1.0
FULL_SWEEP_EVERY = 10


async def _service_task(self: Any) -> None:
    """``AsyncServer._service_task`` (closes sockets whose client stopped answering pings, drops
    closed ones) with one wait per sweep: the engine's waits once per socket, a ``wait_for`` task
    each, so 20,000 idle sockets cost it 1,000 tasks a second. Each sweep checks the pings sent
    more than a ping timeout ago (``PingWheel.pinged``, in order) whose pong has not come; every
    ``FULL_SWEEP_EVERY`` sweeps it also reads two attributes of every socket, as the engine's
    does (closed sockets, any ping not sent by the wheel). A socket is closed within a second of
    its ping timeout."""
    self.service_task_event = self.create_event()
    event = self.service_task_event
    wheel: PingWheel | None = getattr(self, "orgcast_pings", None)
    sweeps = 0
    while not event.is_set():
        now = time.time()
        timeout = self.ping_timeout
        try:
            if wheel is None or sweeps % FULL_SWEEP_EVERY == 0:
                sockets = []
                for sid, socket in list(self.sockets.items()):
                    if socket.closed:
                        self.sockets.pop(sid, None)
                    else:
                        sockets.append(socket)
            else:
                sockets = []
                pinged = wheel.pinged
                while pinged and now - pinged[0][0] > timeout:
                    sent, socket = pinged.popleft()
                    if socket.last_ping == sent:
                        sockets.append(socket)
            for socket in sockets:
                if not socket.closing and socket.last_ping and now - socket.last_ping > timeout:
                    await _ping_timed_out(socket)
        except Exception:
            self.logger.exception("service task exception")
        sweeps += 1
        try:
            await asyncio.wait_for(event.wait(), SERVICE_SWEEP_SECONDS)
        except TimeoutError:
            continue
        except asyncio.CancelledError:
            break


async def _ping_timed_out(socket: Any) -> None:
    await socket.check_ping_timeout()
    if socket.closed and isinstance(socket.queue, LeanQueue):
        # The engine's CLOSE packet is not sent after a ping timeout (its send checks the ping
        # first): the closing marker ends the websocket.
        socket.queue.put_nowait(None)


def install_lean_sockets(sio: socketio.AsyncServer) -> None:
    """Make every engine socket of ``sio`` lean as python-engineio creates it, and its service
    task sweep without a task per socket."""
    eio = sio.eio
    eio.orgcast_pings = PingWheel(eio.ping_interval)
    eio.orgcast_batch = WriteBatch()
    eio._service_task = types.MethodType(_service_task, eio)
    # python-socketio's environ of each connection: an upgrade trims it as ``hand_over`` does.
    eio.orgcast_environs = sio.environ
    on_connect = eio.handlers["connect"]

    async def connect(eio_sid: str, environ: dict[str, Any]) -> Any:
        socket = eio.sockets.get(eio_sid)
        if socket is not None:
            make_lean(socket)
        return await on_connect(eio_sid, environ)

    eio.handlers["connect"] = connect


async def _drain(queue: LeanQueue) -> None:
    """Write a lean websocket's queued packets in order, then end; ``None`` (the engine's
    "closing" marker), a failed write, or a socket that is closed once the queue is empty
    closes the websocket, as python-engineio's writer does when its poll ends. Packets stay in
    the queue until their turn, so its size is the socket's backlog (``VOLATILE_BACKLOG``)."""
    socket, ws = queue._socket, queue._ws
    try:
        if queue._transport is not None:
            written = await _write_frames(queue)
        else:
            written = await _write_queued(queue, ws)
        if written and not socket.closed:
            return
        queue._ws = None  # nothing more is written to this websocket
        while queue._items:  # what is still queued is never sent
            queue.get_nowait()
            queue.task_done()
        await ws.close()
    finally:
        queue._writer = None


async def _write_frames(queue: LeanQueue) -> bool:
    """``_write_queued`` for a websocket written to its transport (patch 9): wait while the
    transport is paused (the client reads slowly; meanwhile the queue is the backlog), then
    write everything queued in one transport write."""
    protocol = queue._protocol
    while queue._items:
        if protocol._paused:
            try:
                await protocol._drain_helper()
            except Exception:
                return False
            continue
        if queue._items[0] is None or not queue._writable():
            return False
        try:
            queue._write_frames()
        except Exception:
            return False
    return True


async def _write_queued(queue: LeanQueue, ws: Any) -> bool:
    """Write until the queue is empty (True) or the closing marker or a failed write (False)."""
    while queue._items:
        pkt = queue.get_nowait()
        try:
            if pkt is None:
                return False
            await ws.send(pkt.encode())
        except Exception:
            return False
        finally:
            queue.task_done()
    return True


# What is read from a websocket's WSGI environ once the websocket is open: python-socketio hands
# it to each namespace connect (handlers.py reads the request, or for a websocket handed over
# (``hand_over``) the client's address kept as ``orgcast.remote``, and the origin).
ENVIRON_KEPT = (
    "aiohttp.request",
    "HTTP_ORIGIN",
    "REQUEST_METHOD",
    "QUERY_STRING",
    "REMOTE_ADDR",
    "orgcast.remote",
)


def trim_environ(environ: dict[str, Any] | None) -> None:
    """Shrink the engine's environ of an open websocket to ``ENVIRON_KEPT``, in place (the
    engine's request frames and python-socketio's ``environ`` table share the one dict): its
    ~30 keys, most of them ``HTTP_*`` strings made per request, cost ~1 KB per socket."""
    if not environ:
        return
    kept = {key: environ[key] for key in ENVIRON_KEPT if key in environ}
    environ.clear()
    environ.update(kept)


async def lean_websocket_handler(socket: Any, ws: Any) -> None:
    """``AsyncSocket._websocket_handler`` for a websocket opened directly, reading in the calling
    task (python-engineio starts a task and a ``wait_for`` per read). Same outcomes: any read
    error, close or oversized packet ends the loop, the writer is told to stop, and the socket is
    closed as a transport close. Packets are written by an on-demand task (``LeanQueue``). The
    read has no timeout of its own: a client that stops answering pings is closed by the
    engine's ping check (``_service_task``), whose CLOSE packet makes the writer close the
    websocket, which ends this read."""
    server = socket.server
    socket.connected = True
    socket.upgraded = True
    trim_environ(getattr(ws, "environ", None))
    queue: LeanQueue = socket.queue
    queue.attach(socket, ws, getattr(server, "orgcast_batch", None))
    limit = server.max_http_buffer_size
    while True:
        try:
            # ``ws.wait`` as the engine reads: a close raises, and the frame guard sees each frame.
            data = await ws.wait()
        except (Exception, asyncio.CancelledError):  # as the engine: a cancelled read ends it too
            break
        if data == PONG:  # the engine's receive for a pong, without decoding a packet (patch 9)
            socket.schedule_ping()
            continue
        if not isinstance(data, str | bytes) or not data or len(data) > limit:
            break
        try:
            await socket.receive(engine_packet.Packet(encoded_packet=data))
        except engine_exceptions.UnknownPacketError:
            pass
        except engine_exceptions.SocketIsClosedError:
            break
        except Exception:
            server.logger.exception("Unknown receive error")
    queue.put_nowait(None)  # the writer closes the websocket after what is queued
    queue._start_task()
    while queue._writer is not None:
        await asyncio.shield(queue._writer)
    await socket.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)


# -- 10. the websocket after its handshake --------------------------------------------------------

# A new lean websocket is served by an ``EngineWire`` after its handshake (benchmarks turn this
# off to compare with aiohttp's websocket, ``ORGCAST_BENCH_WIRE=aiohttp``).
HAND_OVER = True
# RFC 6455 opcodes and the close codes this side sends.
_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_TEXT, CLOSE_TOO_BIG = 1000, 1002, 1007, 1009
# How long a close this side started waits for the client's close before the connection is cut.
CLOSE_TIMEOUT = 10.0
# How long a websocket upgrading a long-polling socket may take to send its probe and its
# upgrade packet before the upgrade is abandoned (the socket stays on long-polling).
UPGRADE_TIMEOUT = 10.0
# The answer to a second upgrade of a socket while its first is still going on.
UPGRADING_ERROR = {
    "error": {"code": "upgrade_in_progress", "message": "this session is already upgrading"}
}
# An upgrading wire's state: waiting for the probe ("2probe"), then for the upgrade ("5").
_PROBE, _UPGRADE = 1, 2
PROBE = "2probe"
PROBE_ANSWER = _frame("3probe")
UPGRADE = str(engine_packet.UPGRADE)
# Messages received while an earlier one is still being handled (a namespace connect waits for
# the database): past this many the connection stops being read until they are handled.
PENDING_MAX = 64


def _control(opcode: int, payload: bytes = b"") -> bytes:
    return bytes((0x80 | opcode, len(payload))) + payload


class EngineWire(asyncio.Protocol):
    """An engine.io websocket opened directly, served by orgcast once its handshake is answered:
    aiohttp's connection handler, request, response and their two tasks are let go (``hand_over``),
    so an idle socket is this object, its engine socket and its queue.

    Reads RFC 6455 frames from the client: every client frame must be masked and carry no
    reserved bits (else the connection fails with 1002; no extension is ever negotiated here), a
    message larger than ``limit`` bytes fails it with 1009, text that is not UTF-8 with 1007.
    Fragments are joined (control frames between them are answered at once), pings answered with
    a pong, a close answered with a close (1000) before the connection ends. Each message goes
    through the frame guard (``check``) to the engine socket as ``lean_websocket_handler`` hands
    it: a pong without decoding, others to ``socket.receive``, one at a time and in order, from a
    task that runs only while messages wait. Writes are the queue's (patch 9: this object is
    both its websocket and its protocol, with the same ``_paused``/``_drain_helper``
    backpressure); ``close`` sends a close and waits ``CLOSE_TIMEOUT`` for the client's."""

    __slots__ = ("_buffer", "_check", "_close_timer", "_closed", "_closing", "_drain_waiter",
                 "_ended", "_fragments", "_limit", "_paused", "_pending", "_read_paused",
                 "_socket", "_task", "_upgrade", "_upgrade_timer", "after_close",
                 "transport")  # fmt: skip

    def __init__(self, socket: Any, transport: Any, check: FrameCheck | None) -> None:
        self._socket = socket
        self.transport: Any = transport
        self._check = check
        self._limit: int = socket.server.max_http_buffer_size
        self._buffer: bytearray | None = None
        # A fragmented message being received: its opcode first, then its fragments.
        self._fragments: list[Any] | None = None
        self._pending: deque[Any] | None = None
        self._task: asyncio.Future[None] | None = None
        self._paused = False
        self._read_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        # ``_closing``: a close was sent (no data frame follows it); ``_closed``: the connection
        # is gone; ``_ended``: the engine socket has been told the transport is over.
        self._closing = False
        self._closed = False
        self._ended = False
        self._close_timer: asyncio.TimerHandle | None = None
        # Called once the connection is gone (the access log line of the handshake request).
        self.after_close: Callable[[], None] | None = None
        # For a websocket upgrading a long-polling socket (``upgrade``): ``_PROBE``, ``_UPGRADE``,
        # or 0 once it serves the socket (or was opened directly).
        self._upgrade = 0
        self._upgrade_timer: asyncio.TimerHandle | None = None

    # -- upgrading a long-polling socket --------------------------------------------------------

    def upgrade(self) -> None:
        """Serve a long-polling socket once its client completes the upgrade, as the engine's
        ``AsyncSocket._websocket_handler`` does: the socket is ``upgrading`` (its polls get a NOOP
        at once, what is queued for it stays queued), the client's probe ("2probe") is answered
        with "3probe" and a NOOP ends the poll in flight, and its upgrade packet ("5") makes this
        websocket the socket's transport: the queue is attached and writes, in order, whatever
        waited in it. Anything else first, a close, a lost connection or ``UPGRADE_TIMEOUT``
        without the upgrade abandons it: the websocket is closed and the socket goes on polling
        (the engine leaves a socket whose client closed before its probe ``upgrading`` for good,
        its polls answered with NOOPs until it times out, and waits for a probe forever)."""
        self._upgrade = _PROBE
        self._socket.upgrading = True
        loop = asyncio.get_running_loop()
        self._upgrade_timer = loop.call_later(UPGRADE_TIMEOUT, self._upgrade_timed_out)

    def _upgrade_timed_out(self) -> None:
        self._upgrade_timer = None
        if self._upgrade:
            socket = self._socket
            socket.server.logger.info("%s: Failed websocket upgrade, timed out", socket.sid)
            self._abandon()

    def _upgrading(self, data: Any) -> None:
        """One message while upgrading (after the frame guard)."""
        socket = self._socket
        if self._upgrade == _PROBE and data == PROBE:
            self._upgrade = _UPGRADE
            self.transport.write(PROBE_ANSWER)
            socket.queue.put_nowait(engine_packet.Packet(engine_packet.NOOP))  # ends the poll
            return
        if self._upgrade == _UPGRADE and data == UPGRADE and not (socket.closing or socket.closed):
            self._upgraded()
            return
        socket.server.logger.info(
            "%s: Failed websocket upgrade, received %r", socket.sid, str(data)[:32]
        )
        self._abandon()

    def _upgraded(self) -> None:
        socket = self._socket
        self._upgrade = 0
        timer, self._upgrade_timer = self._upgrade_timer, None
        if timer is not None:
            timer.cancel()
        environ = getattr(socket.server, "orgcast_environs", {}).get(socket.sid)
        if environ is not None:
            request = environ.get("aiohttp.request")
            trim_environ(environ)
            if request is not None:
                environ.pop("aiohttp.request", None)
                environ["orgcast.remote"] = request.remote
        socket.upgraded = True
        socket.upgrading = False
        socket.queue.attach(socket, self, getattr(socket.server, "orgcast_batch", None))

    def _abandon(self) -> None:
        """The upgrade failed: the socket stays on long-polling, this websocket closes."""
        self._end()
        self._start_close()

    # -- reading ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer is None:
            view: Any = data
        else:
            buffer += data
            view = buffer
        size = len(view)
        pos = 0
        while size - pos >= 2 and not self._closed:
            first, second = view[pos], view[pos + 1]
            if not second & 0x80 or first & 0x70:
                # RFC 6455 5.1: a server must close on an unmasked client frame; no extension
                # was negotiated, so no reserved bit may be set.
                self.fail(CLOSE_PROTOCOL_ERROR)
                return
            length = second & 0x7F
            head = 6
            if length == 126:
                if size - pos < 8:
                    break
                length = int.from_bytes(view[pos + 2 : pos + 4], "big")
                head = 8
            elif length == 127:
                if size - pos < 14:
                    break
                length = int.from_bytes(view[pos + 2 : pos + 10], "big")
                head = 14
            opcode = first & 0x0F
            if opcode >= _CLOSE:
                if length > 125 or not first & 0x80:
                    self.fail(CLOSE_PROTOCOL_ERROR)
                    return
            elif length + self._fragmented_size() > self._limit:
                self.fail(CLOSE_TOO_BIG)
                return
            end = pos + head + length
            if size < end:
                break
            payload = bytearray(view[pos + head : end])
            websocket_mask(bytes(view[pos + head - 4 : pos + head]), payload)
            pos = end
            self._frame(bool(first & 0x80), opcode, payload)
        if self._closed:
            self._buffer = None
        elif buffer is None:
            self._buffer = bytearray(view[pos:]) if pos < size else None
        elif pos >= size:
            self._buffer = None
        elif pos:
            del buffer[:pos]

    def _fragmented_size(self) -> int:
        fragments = self._fragments
        return sum(len(f) for f in fragments[1:]) if fragments else 0

    def _frame(self, fin: bool, opcode: int, payload: bytearray) -> None:
        if opcode == _PING:
            if not self._closing:
                self.transport.write(_control(_PONG, bytes(payload)))
            return
        if opcode == _PONG:
            return
        if opcode == _CLOSE:
            self._close_received(payload)
            return
        fragments = self._fragments
        if opcode == _CONTINUATION:
            if fragments is None:
                self.fail(CLOSE_PROTOCOL_ERROR)
                return
            fragments.append(payload)
            if not fin:
                return
            self._fragments = None
            opcode, payload = fragments[0], bytearray().join(fragments[1:])
        elif opcode in (_TEXT, _BINARY):
            if fragments is not None:
                self.fail(CLOSE_PROTOCOL_ERROR)
                return
            if not fin:
                self._fragments = [opcode, payload]
                return
        else:
            self.fail(CLOSE_PROTOCOL_ERROR)
            return
        if opcode == _TEXT:
            try:
                message: Any = payload.decode()
            except UnicodeDecodeError:
                self.fail(CLOSE_INVALID_TEXT)
                return
        else:
            message = bytes(payload)
        self._message(message)

    def _close_received(self, payload: bytearray) -> None:
        if len(payload) == 1:
            self.fail(CLOSE_PROTOCOL_ERROR)
            return
        if not self._closing:
            self._closing = True
            self.transport.write(_control(_CLOSE, CLOSE_NORMAL.to_bytes(2, "big")))
        self.transport.close()
        self._end()

    def _message(self, data: Any) -> None:
        """One message, as ``lean_websocket_handler`` handles what ``ws.wait`` returns."""
        if self._closing or self._ended:
            return
        socket = self._socket
        if self._check is not None:
            data = self._check(socket.sid, data)
        if self._upgrade:
            self._upgrading(data)
            return
        if data == PONG:
            socket.schedule_ping()
            return
        if not isinstance(data, str | bytes) or not data or len(data) > self._limit:
            self._end()
            return
        pending = self._pending
        if pending is None:
            pending = self._pending = deque()
        pending.append(data)
        if self._task is None:
            self._task = asyncio.ensure_future(self._receive())
        elif len(pending) >= PENDING_MAX and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    async def _receive(self) -> None:
        """Hand the waiting messages to the engine socket, in order, then end."""
        socket = self._socket
        try:
            while self._pending and not self._ended:
                data = self._pending.popleft()
                if self._read_paused and len(self._pending) < PENDING_MAX // 2:
                    self._read_paused = False
                    if not self._closed:
                        self.transport.resume_reading()
                try:
                    await socket.receive(engine_packet.Packet(encoded_packet=data))
                except engine_exceptions.UnknownPacketError:
                    pass
                except engine_exceptions.SocketIsClosedError:
                    self._end()
                    break
                except Exception:
                    socket.server.logger.exception("Unknown receive error")
        finally:
            self._pending = None
            self._task = None

    # -- closing ----------------------------------------------------------------------------

    def fail(self, code: int) -> None:
        """Fail the connection (RFC 6455 7.1.7): a close with ``code``, then the connection
        ends without waiting for the client's."""
        if not self._closing and not self._closed:
            self._closing = True
            self.transport.write(_control(_CLOSE, code.to_bytes(2, "big")))
        if not self._closed:
            self.transport.close()
        self._end()

    def _end(self) -> None:
        """Tell the engine socket its transport is over, once: the queue's writer closes the
        websocket after what is queued, then the socket closes as a transport close."""
        if self._ended:
            return
        self._ended = True
        self._pending = None
        if self._upgrade:
            # An upgrade that did not complete: the engine socket never used this websocket.
            self._upgrade = 0
            timer, self._upgrade_timer = self._upgrade_timer, None
            if timer is not None:
                timer.cancel()
            self._socket.upgrading = False
            return
        queue = self._socket.queue
        queue.put_nowait(None)
        queue._start_task()
        task = asyncio.ensure_future(self._finish())
        _finishing.add(task)
        task.add_done_callback(_finishing.discard)

    async def _finish(self) -> None:
        socket = self._socket
        queue = socket.queue
        while self._task is not None:
            await asyncio.shield(self._task)
        while queue._writer is not None:
            await asyncio.shield(queue._writer)
        server = socket.server
        await socket.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)
        if socket.closed and server.sockets.get(socket.sid) is socket:
            del server.sockets[socket.sid]  # as the engine does when its websocket handler ends

    async def close(self) -> None:
        """Start the close handshake (the queue's writer calls this once nothing more will be
        written): the connection ends when the client's close arrives, or after
        ``CLOSE_TIMEOUT``."""
        self._start_close()

    def _start_close(self) -> None:
        if self._closed:
            return
        if not self._closing:
            self._closing = True
            self.transport.write(_control(_CLOSE, CLOSE_NORMAL.to_bytes(2, "big")))
        if self._close_timer is None:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(CLOSE_TIMEOUT, self.transport.abort)

    async def send(self, data: str | bytes) -> None:
        """What the queue's writer calls when it does not write frames itself."""
        if self._closing or self._closed:
            raise ConnectionResetError("the websocket is closing")
        self.transport.write(_frame(data))

    # -- the transport ----------------------------------------------------------------------

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _drain_helper(self) -> None:
        if self._closed:
            raise ConnectionResetError("Connection lost")
        if not self._paused:
            return
        waiter = self._drain_waiter
        if waiter is None:
            waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(waiter)

    def eof_received(self) -> bool:
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._buffer = self._fragments = None
        timer, self._close_timer = self._close_timer, None
        if timer is not None:
            timer.cancel()
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("Connection lost"))
        self._end()
        after, self.after_close = self.after_close, None
        if after is not None:
            after()


_finishing: set[asyncio.Future[None]] = set()


class HandedOver(web.StreamResponse):
    """What aiohttp gets back for a websocket handed to an ``EngineWire``: its 101 is already
    written and the connection is no longer aiohttp's, so nothing more is written."""

    def __init__(self, wire: EngineWire) -> None:
        super().__init__(status=101)
        self.wire = wire

    async def prepare(self, request: Any) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None

    def when_closed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the connection ends (the access log's line for it)."""
        if self.wire._closed:
            callback()
        else:
            self.wire.after_close = callback


def hand_over(
    request: web.Request,
    socket: Any,
    environ: dict[str, Any],
    check: FrameCheck | None,
    *,
    upgrade: bool = False,
) -> HandedOver:
    """Answer a websocket handshake for a new lean engine socket and take its connection from
    aiohttp: the 101 is written here, the transport gets an ``EngineWire`` as its protocol, and
    aiohttp's handler forgets it (no transport, no parser, closed for reuse), so its request,
    handler task and connection task end as soon as the returned ``HandedOver`` is answered.

    Reads aiohttp's ``WebSocketResponse._handshake`` (the same checks and headers as its
    ``prepare``; a bad handshake raises its 400) and the ``RequestHandler``'s ``transport``,
    ``_message_tail`` (what the client sent after its handshake), ``_buffer_paused``, ``_parser``
    and ``_manager``. The environ keeps the client's address (``orgcast.remote``) instead of
    the request.

    With ``upgrade``, the websocket upgrades a connected long-polling socket (``EngineWire.
    upgrade``): this request's environ is not the socket's and is left alone, and the socket
    keeps its queue and transport until its client completes the upgrade."""
    headers = web.WebSocketResponse(compress=False)._handshake(request)[0]
    handler: Any = request.protocol
    transport: Any = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("Connection lost")
    remote = request.remote
    tail, handler._message_tail = handler._message_tail, b""
    wire = EngineWire(socket, transport, check)
    transport.set_protocol(wire)
    handler.transport = None  # so its force_close leaves the connection alone
    handler._parser = None  # nothing after the handshake is parsed as HTTP
    handler.keep_alive(False)  # its keep-alive timer would hold it for a minute
    handler.force_close()
    manager = handler._manager
    if manager is not None:
        manager.connection_lost(handler, None)  # drops it once its task ends
    if handler._buffer_paused:
        transport.resume_reading()
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    transport.write(f"HTTP/1.1 101 Switching Protocols\r\n{lines}\r\n".encode())
    if upgrade:
        wire.upgrade()
        if tail:
            wire.data_received(tail)
        return HandedOver(wire)
    trim_environ(environ)
    environ.pop("aiohttp.request", None)
    environ["orgcast.remote"] = remote
    socket.connected = True
    socket.upgraded = True
    socket.queue.attach(socket, wire, getattr(socket.server, "orgcast_batch", None))
    if tail:
        wire.data_received(tail)
    return HandedOver(wire)


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
        self.put(event, data, namespace, to or room, skip_sid, volatile)

    def put(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: str | None,
        skip_sid: Any = None,
        volatile: bool = False,
    ) -> None:
        """``emit`` to this process's sockets, without suspending: when this returns, every
        recipient's queue holds the packet (ordered delivery relies on it)."""
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
            FramePacket(engine_packet.MESSAGE, part)
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


# -- 6. the Redis manager: own reconnect, publishing off the ack path, ordered messages ------------


class ClusterRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    """python-socketio's Redis manager, with three changes for a cluster that must not go quiet:

    - The subscription reconnects on its own schedule, 0.1 s doubling to 2 s (the library's
      listener waits 1 s doubling to 60 s, so a long outage meant up to a minute of silence
      after Redis returned), and reports each loss and return through ``on_link``: ordered
      delivery polls the database meanwhile and makes one repair pass when it is back.
    - Publishing retries once on a fresh connection, then gives up quietly: repeated failures
      are logged once per interval with a count (the library logged two errors per message).
    - Stored messages travel as ``ordered`` emits and are handed to ``on_ordered`` (ordered
      delivery) instead of being emitted as they arrive.

    The Redis clients retry nothing themselves (redis-py's default would retry a command ten
    times with back-off, and reconnect a subscription silently, losing what was published
    meanwhile without anyone knowing).
    """

    on_ordered: Callable[[str, str, Any, Any], None] | None = None
    on_link: Callable[[bool], None] | None = None
    redis: Redis | None
    pubsub: PubSub | None

    def __init__(self, url: str, channel: str) -> None:
        super().__init__(url, channel=channel)
        self._listen_client: Redis | None = None
        self._outbox: collections.deque[dict[str, Any]] = collections.deque()
        self._outbox_ready = asyncio.Event()
        self._publisher: asyncio.Future[None] | None = None
        self._publish_failures = Repeated(log, interval=10.0)
        self._listen_failures = Repeated(log, interval=10.0)

    def _client(self, **options: Any) -> Redis:
        return Redis.from_url(self.redis_url, retry=Retry(NoBackoff(), 1),
                              socket_connect_timeout=1, **options)  # fmt: skip

    async def _publish(self, data: Any) -> None:
        if self.redis is None:
            self.redis = self._client(socket_timeout=2)
        try:
            await self.redis.publish(self.channel, self.json.dumps(data))
        except (RedisError, OSError) as exc:
            self._publish_failures.warning("publishing to Redis failed: %s", exc)
        else:
            self._publish_failures.recovered("publishing to Redis works again")

    def publish_ordered(self, namespace: str, room: str, message: Any, skip: Any) -> None:
        """Send a stored message to the other nodes (this node delivers it itself). Queued, in
        order, for a task that publishes whatever is waiting in one round trip: the sender's ack
        never waits for Redis, and a Redis outage costs the message path nothing."""
        if len(self._outbox) >= OUTBOX_MAX:
            # Redis is far behind: the oldest go unpublished (the other nodes' gap repair reads
            # them from the database).
            self._outbox.popleft()
            self._publish_failures.warning("publishing to Redis: outbox full, oldest dropped")
        self._outbox.append(
            {
                "method": "emit",
                "event": "message",
                "data": [message],
                "binary": False,
                "namespace": namespace,
                "room": room,
                "skip_sid": skip,
                "callback": None,
                "host_id": self.host_id,
                "ordered": True,
            }
        )
        self._outbox_ready.set()
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.ensure_future(self._publish_outbox())

    async def _publish_outbox(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                batch = [self._outbox.popleft() for _ in range(min(256, len(self._outbox)))]
                if self.redis is None:
                    self.redis = self._client(socket_timeout=2)
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for data in batch:
                            pipe.publish(self.channel, self.json.dumps(data))
                        await pipe.execute()
                except (RedisError, OSError) as exc:
                    self._publish_failures.warning("publishing to Redis failed: %s", exc)
                except Exception:
                    log.exception("publishing %d messages to Redis failed", len(batch))
                else:
                    self._publish_failures.recovered("publishing to Redis works again")

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        if message.get("ordered") and self.on_ordered is not None:
            (data,) = message["data"]
            self.on_ordered(message.get("namespace") or "/", message.get("room") or "", data,
                            message.get("skip_sid"))  # fmt: skip
            return
        await super()._handle_emit(message)

    async def _redis_listen_with_retries(self) -> AsyncIterator[Any]:
        delay = LISTEN_RETRY_MIN
        while True:
            await self._close_listener()
            self._listen_client = self._client()
            self.pubsub = self._listen_client.pubsub(ignore_subscribe_messages=True)
            try:
                await self.pubsub.subscribe(self.channel)
            except (RedisError, OSError) as exc:
                self._listen_failures.warning("subscribing to Redis failed: %s", exc)
                self._link(False)
                await asyncio.sleep(delay)
                delay = min(delay * 2, LISTEN_RETRY_MAX)
                continue
            delay = LISTEN_RETRY_MIN
            self._listen_failures.recovered("subscribed to Redis again")
            self._link(True)
            try:
                async for message in self.pubsub.listen():
                    yield message
            except (RedisError, OSError) as exc:
                self._listen_failures.warning("subscribing to Redis failed: %s", exc)
                self._link(False)

    def _link(self, up: bool) -> None:
        if self.on_link is not None:
            self.on_link(up)

    async def _close_listener(self) -> None:
        for connection in (self.pubsub, self._listen_client):
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.aclose()
        self.pubsub = None
        self._listen_client = None

    async def close(self) -> None:
        """End the listener task and close every connection (``sio.shutdown`` leaves them)."""
        listener = getattr(self, "thread", None)
        await cancel_and_wait(
            t for t in (listener, self._publisher) if isinstance(t, asyncio.Future)
        )
        self._publisher = None
        await self._close_listener()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
            self.redis = None


# -- 4. volatile across nodes --------------------------------------------------------------------


class DirectFanoutRedis(ClusterRedisManager, DirectFanout):
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
    if isinstance(sio.manager, ClusterRedisManager):
        await sio.manager.close()


def deliver_local(
    manager: socketio.AsyncManager, event: str, data: Any, namespace: str, room: str, skip: Any
) -> None:
    """Emit to this process's sockets only, in call order, without suspending the caller."""
    if isinstance(manager, DirectFanout):
        manager.put(event, data, namespace, room, skip)
        return
    # The library's managers (the A/B variant without direct fan-out): a task, started in order.
    extra = {"ignore_queue": True} if isinstance(manager, socketio.AsyncPubSubManager) else {}
    task = asyncio.ensure_future(
        manager.emit(event, data, namespace=namespace, room=room, skip_sid=skip, **extra)
    )
    _emitting.add(task)
    task.add_done_callback(_emitting.discard)


_emitting: set[asyncio.Future[None]] = set()
