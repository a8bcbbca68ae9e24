"""Live delivery in seq order, each message once per socket, whatever happened between nodes
(DESIGN §11).

Every stored message reaches this node by one of three ways: from this node's own commit, from
another node over Redis, or read back from the database. ``OrderedDelivery`` keeps, for each room
with members on this node, the last seq it delivered, and hands a message to the room's sockets
only when it is the next one:

- the next seq (the common case: one dict lookup and an int compare) goes out at once;
- an older seq was already delivered and is dropped;
- a later seq is held, at most ``messages.gap_wait_ms``; then the gap is read from the database
  and delivered first (seq has no gaps in the database, so the missing rows are there);
- while Redis is unreachable (``link_down``), every ``messages.gap_poll_seconds`` the rooms' new
  messages are read from the database; when it returns (``link_up``), one more pass;
- a gap with nothing after it (the last message of a node that died before publishing it, in a
  room that went quiet) has no later arrival to reveal it: every ``TAIL_CHECK`` polls, each
  tenant's rooms' last seqs are read in one query, and rooms behind are read like a gap.

A message read from the database does not say which socket sent it, and its sender must not get
it back. A socket's send is therefore announced (``sending``) before it is stored and until the
node delivered it (``sent``); a row read back that matches a send in flight waits for that send's
own delivery, which knows the sender.

Joining: a socket announced as ``joining`` gets nothing live while its join reads the log; what
the room receives meanwhile is kept for it. ``joined`` with the seq its ack reports releases it
right after the ack is queued: first what it missed while joining (above that seq), then live.
A socket whose ack says seq N never gets seq <= N live. A sender is kept the same way from the
moment its own message goes out here until its ack is queued (``deliver_own``, ``sent``), so its
ack keeps its place in the seq order of what it sees: the highest seq a client saw, acks
included, is a safe ``join { since }``.

Memory: state exists only for rooms with members on this node and goes with the last of them;
held messages are bounded by ``HELD_MAX`` per room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import Unavailable
from ..logs import Repeated
from ..settings import MessagesSettings
from ..store.messages import StoredRow
from ..tasks import cancel_and_wait

log = logging.getLogger(__name__)

SendKey = tuple[str, str]  # (sender id, stored body text): how a row read back is recognised
Reader = Callable[[int, str, int, int], Awaitable[list[StoredRow]]]  # tenant id, room, after, n
LastSeqs = Callable[[int, list[str]], Awaitable[dict[str, int]]]  # tenant id, rooms

UNKNOWN = -1  # a room's last delivered seq before its first join tells it
HELD_MAX = 10_000  # held messages per room before the gap is given up on (logged)
READ_PAGE = 1000  # rows per database read
TAIL_CHECK = 5  # gap_poll_seconds between checks for a gap at a quiet room's end


class Outlet(Protocol):
    """Where ordered messages go: this node's sockets (the transport implements it)."""

    def to_room(self, tenant: str, row: StoredRow, skip: str | list[str] | None) -> None: ...

    def to_socket(self, tenant: str, sid: str, row: StoredRow) -> None: ...


@dataclass(slots=True, eq=False)
class _Room:
    tenant_id: int
    last: int = UNKNOWN
    members: int = 0
    # seq -> (row, sender sid to skip, whether it was read back from the database)
    held: dict[int, tuple[StoredRow, str | None, bool]] = field(default_factory=dict)
    joining: dict[str, list[StoredRow]] | None = None  # sid -> rows delivered while it joins
    floors: dict[str, int] | None = None  # sid -> seq up to which it must not get messages
    sending: Counter[SendKey] | None = None
    # seq -> (sid, waiter): this node's sockets' own messages; when one goes out, its sender is
    # paused (like a joining socket) until its ack is queued, so the ack keeps its place in seq
    # order in the sender's stream.
    own: dict[int, tuple[str, asyncio.Future[None]]] | None = None
    timer: asyncio.TimerHandle | None = None
    repairing: bool = False


class OrderedDelivery:
    """Per-room ordered, exactly-once live delivery on one node (see the module docstring)."""

    def __init__(self, settings: MessagesSettings) -> None:
        self._wait = settings.gap_wait_ms / 1000
        self._poll = settings.gap_poll_seconds
        self._rooms: dict[tuple[str, str], _Room] = {}
        self._outlet: Outlet | None = None
        self._read: Reader | None = None
        self._last_seqs: LastSeqs | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._link_ok = True
        self._link_changed = asyncio.Event()
        self._read_failures = Repeated(log, interval=10.0)
        self.repaired = 0  # messages delivered from the database (gap repair or polling)
        # Called once per read that delivered messages, with how many (orgcast_gap_repairs_total).
        self.on_repair: Callable[[int], None] = lambda messages: None
        self.dropped = 0  # arrivals already delivered

    def bind(self, outlet: Outlet, read: Reader, last_seqs: LastSeqs) -> None:
        self._outlet = outlet
        self._read = read
        self._last_seqs = last_seqs

    # -- the hot path ---------------------------------------------------------------------------

    def deliver(self, tenant: str, row: StoredRow, skip: str | None = None) -> None:
        """A stored message arrived (this node's commit, or another node's over Redis)."""
        state = self._rooms.get((tenant, row.room))
        if state is None:
            return  # nobody here is in the room
        seq = row.seq
        if seq == state.last + 1 and not state.held:
            state.last = seq
            if state.joining is None and state.floors is None and state.own is None:
                assert self._outlet is not None
                self._outlet.to_room(tenant, row, skip)
            else:
                self._emit(tenant, state, row, skip)
            return
        if seq <= state.last:
            self.dropped += 1
            return
        if state.last == UNKNOWN and state.joining is None:
            state.last = seq - 1  # no join told where the room starts: its first arrival does
        held = state.held.get(seq)
        if held is None or held[2]:  # an arrival replaces a row read back
            state.held[seq] = (row, skip, False)
        self._drain(tenant, row.room, state)

    def deliver_own(self, tenant: str, row: StoredRow, sid: str) -> asyncio.Future[None] | None:
        """``deliver`` for a message that socket ``sid`` of this node sent. Returns None when it
        went out at once, else a future that resolves when it does (earlier messages first); the
        caller answers the sender after that, then ``sent`` releases it (see ``_emit``)."""
        state = self._rooms.get((tenant, row.room))
        if state is None or row.seq <= state.last:
            return None  # gone out already (a resend)
        if row.seq == state.last + 1 and not state.held:
            self.deliver(tenant, row, sid)  # out at once; then the sender waits for its ack
            if state.joining is None:
                state.joining = {}
            state.joining.setdefault(sid, [])
            return None
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if state.own is None:
            state.own = {}
        state.own[row.seq] = (sid, waiter)
        self.deliver(tenant, row, sid)
        if waiter.done():
            return None
        return waiter

    def disown(self, tenant: str, room: str, seq: int) -> None:
        """The sender was answered before its message went out (the wait was bounded)."""
        state = self._rooms.get((tenant, room))
        if state is not None and state.own is not None:
            state.own.pop(seq, None)
            if not state.own:
                state.own = None

    def _emit(self, tenant: str, state: _Room, row: StoredRow, skip: str | None) -> None:
        assert self._outlet is not None
        skips = [skip] if skip is not None else []
        if state.own is not None:
            owner = state.own.pop(row.seq, None)
            if not state.own:
                state.own = None
            if owner is not None:
                sid, waiter = owner
                if not waiter.done():
                    waiter.set_result(None)
                # Until its ack is queued, what follows is kept for the sender (``sent``).
                if state.joining is None:
                    state.joining = {}
                state.joining.setdefault(sid, [])
        below: list[str] = []  # sockets that have this seq already (from their join's ack)
        if state.floors is not None:
            for sid, floor in list(state.floors.items()):
                if row.seq <= floor:
                    below.append(sid)
                if row.seq >= floor:
                    del state.floors[sid]
            if not state.floors:
                state.floors = None
            skips += below
        if state.joining is not None:
            for sid, kept in state.joining.items():
                if sid != skip and sid not in below:
                    kept.append(row)
                skips.append(sid)
        self._outlet.to_room(tenant, row, skips)

    def _drain(self, tenant: str, room: str, state: _Room) -> None:
        """Deliver what is held and next in line; arm the gap timer for what is left."""
        if state.last == UNKNOWN:
            return  # the first join tells where the room starts
        held = state.held
        while held:
            entry = held.get(state.last + 1)
            if entry is None:
                break
            row, skip, read_back = entry
            if read_back and state.sending and state.sending.get((row.sender_id, row.body)):
                break  # maybe this node's own send: wait for its delivery (it knows the sender)
            del held[state.last + 1]
            state.last += 1
            self._emit(tenant, state, row, skip)
        if len(held) > HELD_MAX:
            first = min(held)
            log.warning("room %s/%s: gap before seq %d not repaired; skipping it", tenant,
                        room, first)  # fmt: skip
            state.last = first - 1
            self._drain(tenant, room, state)
            return
        if held and state.timer is None:
            loop = asyncio.get_running_loop()
            state.timer = loop.call_later(self._wait, self._gap_expired, tenant, room, state)

    def _gap_expired(self, tenant: str, room: str, state: _Room) -> None:
        state.timer = None
        if self._rooms.get((tenant, room)) is state and state.held:
            self._spawn(self._repair(tenant, room, state))

    # -- joins and leaves -----------------------------------------------------------------------

    def joining(self, tenant: str, room: str, tenant_id: int, sid: str) -> None:
        """Before the socket enters the room: from now on, the room's messages are kept for it."""
        state = self._rooms.get((tenant, room))
        if state is None:
            state = self._rooms[(tenant, room)] = _Room(tenant_id)
        state.members += 1
        if state.joining is None:
            state.joining = {}
        state.joining[sid] = []

    def joined(self, tenant: str, room: str, sid: str, seq: int | None) -> None:
        """Call right before the join ack is returned, with the seq the ack reports (None when
        the join failed and reported none). The socket gets live messages once the ack is
        queued: what it missed while joining above ``seq`` first, never anything <= ``seq``."""
        state = self._rooms.get((tenant, room))
        if state is None or state.joining is None or sid not in state.joining:
            return
        if state.last == UNKNOWN and seq is not None:
            # The room's first join: it starts after ``seq``. What arrived meanwhile up to
            # ``seq`` is not this socket's, but may be another joining socket's (its read may
            # have seen an older seq): kept for them, in order.
            state.last = seq
            for early in sorted(s for s in state.held if s <= seq):
                row, skip, _ = state.held.pop(early)
                for other, kept in state.joining.items():
                    if other != sid and other != skip:
                        kept.append(row)
            self._drain(tenant, room, state)
        # After this task step, in which the transport queues the ack.
        asyncio.get_running_loop().call_soon(self._release, tenant, room, state, sid, seq)

    def _release(self, tenant: str, room: str, state: _Room, sid: str, seq: int | None) -> None:
        if self._rooms.get((tenant, room)) is not state or state.joining is None:
            return
        kept = state.joining.pop(sid, None)
        if not state.joining:
            state.joining = None
        if kept is None:
            return
        floor = -1 if seq is None else seq
        assert self._outlet is not None
        for row in kept:
            if row.seq > floor:
                self._outlet.to_socket(tenant, sid, row)
        if state.last < floor:
            if state.floors is None:
                state.floors = {}
            state.floors[sid] = floor

    def last_seq(self, tenant: str, room: str) -> int | None:
        """The last seq this node delivered to ``room``, or None when it does not know (no
        socket here is in the room, or none has finished joining it). A join may report it as
        the room's seq instead of reading the database: every later message reaches the joining
        socket live, in seq order, once its ack is queued (a message stored but not yet
        delivered here is above it, so it follows the ack)."""
        state = self._rooms.get((tenant, room))
        if state is None or state.last == UNKNOWN:
            return None
        return state.last

    def left(self, tenant: str, room: str, sid: str) -> None:
        """The socket left the room (or disconnected); the last one takes the room's state."""
        state = self._rooms.get((tenant, room))
        if state is None:
            return
        if state.joining is not None:
            state.joining.pop(sid, None)
            if not state.joining:
                state.joining = None
        if state.floors is not None:
            state.floors.pop(sid, None)
            if not state.floors:
                state.floors = None
        state.members -= 1
        if state.members <= 0:
            if state.timer is not None:
                state.timer.cancel()
            for _, waiter in (state.own or {}).values():
                if not waiter.done():
                    waiter.set_result(None)
            del self._rooms[(tenant, room)]

    def sending(self, tenant: str, room: str, key: SendKey) -> None:
        """A socket of this node is storing a message (``key``: sender id and encoded body)."""
        state = self._rooms.get((tenant, room))
        if state is not None:
            if state.sending is None:
                state.sending = Counter()
            state.sending[key] += 1

    def sent(self, tenant: str, room: str, key: SendKey, sid: str) -> None:
        """The send announced by ``sending`` is over; call it right before the sender's ack is
        returned: what the sender was kept from meanwhile follows the ack."""
        state = self._rooms.get((tenant, room))
        if state is None:
            return
        if state.joining is not None and sid in state.joining:
            asyncio.get_running_loop().call_soon(self._release, tenant, room, state, sid, None)
        if state.sending is None:
            return
        state.sending[key] -= 1
        if state.sending[key] <= 0:
            del state.sending[key]
            if not state.sending:
                state.sending = None
                if state.held:
                    self._drain(tenant, room, state)

    # -- reading the database -------------------------------------------------------------------

    async def _repair(self, tenant: str, room: str, state: _Room) -> None:
        """The gap before the first held message outlived ``gap_wait_ms``: read it."""
        if state.repairing:
            return
        state.repairing = True
        try:
            for _ in range(100):  # pages; bounded
                if self._rooms.get((tenant, room)) is not state or not state.held:
                    return
                first = min(state.held)
                if first == state.last + 1:
                    break  # next in line, waiting for a send in flight: the timer retries
                missing = first - state.last - 1
                rows = await self._read_rows(state, room, state.last, min(missing, READ_PAGE))
                if rows is None:
                    break  # the database is unavailable: the timer retries
                before = state.last
                self._take(tenant, room, state, [r for r in rows if r.seq < first])
                if state.last == before and (not rows or rows[0].seq > before + 1):
                    # Not in the database any more (retention): nothing to wait for.
                    resume = rows[0].seq if rows and rows[0].seq < first else first
                    log.warning("room %s/%s: seq %d..%d are gone; skipping them", tenant, room,
                                before + 1, resume - 1)  # fmt: skip
                    state.last = resume - 1
                    self._take(tenant, room, state, [r for r in rows if r.seq < first])
        finally:
            state.repairing = False
        if self._rooms.get((tenant, room)) is state and state.held and state.timer is None:
            loop = asyncio.get_running_loop()
            state.timer = loop.call_later(self._wait, self._gap_expired, tenant, room, state)

    async def _read_rows(
        self, state: _Room, room: str, after: int, limit: int
    ) -> list[StoredRow] | None:
        assert self._read is not None
        try:
            rows = await self._read(state.tenant_id, room, after, limit)
        except Unavailable as exc:
            self._read_failures.warning("ordered delivery cannot read messages: %s", exc)
            return None
        self._read_failures.recovered("ordered delivery reads messages again")
        return rows

    def _take(self, tenant: str, room: str, state: _Room, rows: list[StoredRow]) -> None:
        """Rows read back, in seq order: held (as read back), then delivered in order."""
        taken = 0
        for row in rows:
            if row.seq <= state.last or row.seq in state.held:
                continue
            state.held[row.seq] = (row, None, True)
            taken += 1
        if taken:
            self.repaired += taken
            self.on_repair(taken)
        self._drain(tenant, room, state)

    async def catch_up(self) -> None:
        """Read every local room's messages past what was delivered (polling, or the repair
        pass when Redis returns)."""
        for (tenant, room), state in list(self._rooms.items()):
            for _ in range(10):  # pages per room per pass; bounded
                if self._rooms.get((tenant, room)) is not state or state.last == UNKNOWN:
                    break
                rows = await self._read_rows(state, room, state.last, READ_PAGE)
                if not rows:
                    break
                self._take(tenant, room, state, rows)
                if len(rows) < READ_PAGE:
                    break

    async def check_tails(self) -> None:
        """Rooms whose last stored seq is past what was delivered, with nothing held to reveal
        it: read what is missing."""
        assert self._last_seqs is not None
        tenants: dict[int, list[tuple[str, str, _Room]]] = {}
        for (tenant, room), state in self._rooms.items():
            if state.last != UNKNOWN and not state.held and not state.repairing:
                tenants.setdefault(state.tenant_id, []).append((tenant, room, state))
        for tenant_id, rooms in tenants.items():
            try:
                last = await self._last_seqs(tenant_id, [room for _, room, _ in rooms])
            except Unavailable as exc:
                self._read_failures.warning("ordered delivery cannot read messages: %s", exc)
                return
            for tenant, room, state in rooms:
                if self._rooms.get((tenant, room)) is not state or last.get(room, 0) <= state.last:
                    continue
                rows = await self._read_rows(state, room, state.last, READ_PAGE)
                if rows:
                    self._take(tenant, room, state, rows)

    # -- the link between nodes -----------------------------------------------------------------

    def link_down(self) -> None:
        """Cross-node delivery stopped (Redis unreachable): poll the database meanwhile."""
        if self._link_ok:
            self._link_ok = False
            self._link_changed.set()

    def link_up(self) -> None:
        """Cross-node delivery works (again): one pass closes what is left."""
        if not self._link_ok:
            self._link_ok = True
            self._link_changed.set()

    async def run(self) -> None:
        """Polls while the link is down, then one repair pass; checks quiet rooms' ends every
        ``TAIL_CHECK`` polls; until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll * TAIL_CHECK):
                    await self._link_changed.wait()
            if not self._link_changed.is_set():
                await self.check_tails()
                continue
            self._link_changed.clear()
            while not self._link_ok:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll):
                        await self._link_changed.wait()
                self._link_changed.clear()
                await self.catch_up()  # a poll
            await self.catch_up()  # the link is back: one pass closes what is left

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for state in self._rooms.values():
            if state.timer is not None:
                state.timer.cancel()
        self._rooms.clear()
        await cancel_and_wait(list(self._tasks))

    def tracked_rooms(self) -> int:
        return len(self._rooms)
