"""The durable message log: group-committed writes, history, replay and retention.

Senders hand a message to ``MessageService.send`` and wait; a single writer task drains the queue
in batches, stores each batch in one transaction (or one statement) and resolves every sender's
future when it commits. An ack therefore always means "stored".

Batching is adaptive: a message that finds the writer idle is committed at once, with no timer;
whatever arrives while a commit is in flight forms the next batch (up to ``batch_max_size``). So
batches grow with the load by themselves, and a lone message waits for nothing but its own commit.
``batch_max_delay_ms`` > 0 additionally lets a busy writer (one that found messages already
waiting when its previous commit ended) linger that long to fill its batch; never an idle one.
The queue is bounded: when the database falls behind, ``send`` fails fast with ``rate_limited``
instead of buffering without limit.

``send`` enqueues without suspending, so messages from one socket keep the order they arrived in.

On PostgreSQL the writer keeps one pooled connection and runs its one statement on the driver's
connection directly (``store.write_batch_driver``): the session, pool checkout and result layers
around it cost more than the statement itself (a lone message's commit ~1.5 -> ~0.6 ms here).
A statement that fails or is cancelled gives that connection up; the next batch takes another.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from ..errors import BadRequest, Internal, RateLimited, TooLarge, Unavailable
from ..logs import Repeated
from ..metrics import Metrics, NullMetrics
from ..settings import MessagesSettings
from ..store import messages as store
from ..store.engine import (
    DB_ERRORS,
    Sessions,
    drop_driver_connection,
    hold_driver_connection,
)
from ..store.messages import NewMessage, StoredRow
from . import db_boundary

# What a message's wire shape adds to its body (id, room, seq, ts, sender), counted against
# ``messages.replay_max_bytes``.
WIRE_OVERHEAD = 160

log = logging.getLogger(__name__)

__all__ = ["MessageService", "NewMessage", "StoredRow", "encode_body", "wire"]


def encode_body(value: Any, limit: int, what: str = "body") -> str:
    """Encode a body as compact JSON; refuses non-JSON values and more than ``limit`` bytes."""
    try:
        raw: bytes | None = orjson.dumps(value)
    except TypeError:
        raw = None  # beyond 64-bit integers, lone surrogates, non-string keys: see below
    # orjson writes NaN and Infinity as null, so output with a null in it is checked again by the
    # standard library, which refuses them (and decides every case orjson refused).
    if raw is None or b"null" in raw:
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            raw = text.encode()
        except (TypeError, ValueError):
            raise BadRequest(
                f"{what} must be a JSON value (no binary data, NaN or Infinity)"
            ) from None
        except RecursionError:
            raise BadRequest(f"{what} is nested too deeply") from None
    if len(raw) > limit:
        raise TooLarge(f"{what} is {len(raw)} bytes encoded; the limit is {limit}")
    return raw.decode()


BodyDecoder = Callable[[str], Any]


def wire(row: StoredRow, decode: BodyDecoder = json.loads) -> dict[str, Any]:
    """The broadcast/history shape of a stored message; ``decode`` turns the stored JSON text of
    the body into what the caller's encoder writes (a value, or a pre-encoded fragment)."""
    data: dict[str, Any] = {
        "id": row.id,
        "room": row.room,
        "seq": row.seq,
        "ts": row.ts,
        "sender": {"id": row.sender_id, "name": row.sender_name or row.sender_id},
        "body": decode(row.body),
    }
    if row.client_id is not None:
        data["client_id"] = row.client_id
    return data


class Outbox(Protocol):
    """What the writer asks of webhooks: which tenants' messages need ``message.created`` rows
    (as of which endpoint generation), and whom to tell that some were written."""

    @property
    def message_tenants(self) -> frozenset[int]: ...

    @property
    def generation(self) -> int: ...

    def written(self) -> None: ...


@dataclass(slots=True)
class _Pending:
    message: NewMessage
    future: asyncio.Future[StoredRow]


@dataclass(slots=True)
class _SeqReads:
    """One room's seq reads (``MessageService.room_seq``): the one running, and the one that
    starts after it, which new callers wait for."""

    running: asyncio.Future[int] | None = None
    next: asyncio.Future[int] | None = None


def _retrieve(future: asyncio.Future[Any]) -> None:
    """A shared read's failure belongs to its callers; one left with none is not an error."""
    if not future.cancelled():
        future.exception()


@dataclass(frozen=True)
class Replay:
    seq: int
    missed: list[dict[str, Any]]
    truncated: bool
    expired: bool


class MessageService:
    """Stores and reads messages; owns the batching writer task (``run``)."""

    # Whether the writer stores one-statement batches on a connection it keeps (see above).
    hold_connection = True

    def __init__(
        self,
        sessions: Sessions,
        settings: MessagesSettings,
        autocommit: Sessions | None = None,
        metrics: Metrics | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics or NullMetrics()
        # A database that is down fails every batch: one warning a minute, with the count.
        self._db_down = Repeated(log)
        self._outbox = outbox
        self._autocommit = autocommit or sessions
        self._settings = settings
        self._one_statement = autocommit is not None and store.batch_is_one_statement(autocommit)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=settings.queue_max)
        self._held: tuple[Any, Any] | None = None  # (pooled connection, driver connection)
        self._seq_reads: dict[tuple[int, str], _SeqReads] = {}
        self.batches = 0
        self.stored = 0

    def send(self, message: NewMessage) -> asyncio.Future[StoredRow]:
        """Queue a message for storage; the future resolves once it is committed."""
        future: asyncio.Future[StoredRow] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(message, future))
        except asyncio.QueueFull:
            raise RateLimited(
                "the message store is busy; retry shortly", retry_after_ms=100
            ) from None
        return future

    def queue_depth(self) -> int:
        """Messages waiting for the writer."""
        return self._queue.qsize()

    async def send_many(self, messages: list[NewMessage]) -> list[StoredRow]:
        """Store ``messages`` together, in one transaction, outside the group-commit queue (a
        batch from a tenant backend is already a batch); rows in input order. All are stored
        or none: ``Unavailable`` when the database fails."""
        if not messages:
            return []
        try:
            try:
                return await self._write(messages)
            except store.IntegrityError:
                # A client_id stored meanwhile by another writer: a second pass finds it.
                return await self._write(messages)
        except DB_ERRORS:
            raise Unavailable("the message store is unavailable; retry") from None

    async def run(self) -> None:
        """The writer loop: take a batch, store it, answer its senders; until cancelled."""
        limit = self._settings.batch_max_size
        delay = self._settings.batch_max_delay_ms / 1000
        queue = self._queue
        try:
            while True:
                busy = not queue.empty()  # messages arrived while the previous commit was busy
                batch = [await queue.get()]
                try:
                    while len(batch) < limit and not queue.empty():
                        batch.append(queue.get_nowait())
                    if busy and len(batch) < limit and delay > 0:
                        # One timer for the whole wait (wait_for would start a task per message).
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(delay):
                                while len(batch) < limit:
                                    batch.append(await queue.get())
                    await self._flush(batch)
                except asyncio.CancelledError:
                    self._fail(batch, Unavailable("server shutting down"))
                    raise
                finally:
                    for _ in batch:
                        queue.task_done()
        finally:
            await self._drop_held()

    async def drain(self, within: float = 10.0) -> None:
        """Wait until the writer has stored everything queued so far (bounded): at shutdown,
        before sockets are closed, so that queued senders still get their acks."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), within)

    async def _flush(self, batch: list[_Pending]) -> None:
        try:
            rows = await self._write([p.message for p in batch], writer=True)
        except store.IntegrityError:
            # Another node stored one of these client_ids between our check and our insert:
            # retry one by one, so each resend finds its original.
            for pending in batch:
                await self._flush_one(pending)
            return
        except DB_ERRORS as exc:
            self._metrics.database_error()
            self._db_down.warning(
                "message batch not stored: database unavailable (%s)", exc.__class__.__name__
            )
            self._fail(batch, Unavailable("the message store is unavailable; retry"))
            return
        except Exception:
            log.exception("message batch of %d failed", len(batch))
            self._fail(batch, Internal("the message could not be stored"))
            return
        for pending, row in zip(batch, rows, strict=True):
            if not pending.future.done():
                pending.future.set_result(row)

    async def _flush_one(self, pending: _Pending) -> None:
        try:
            (row,) = await self._write([pending.message])
        except DB_ERRORS:
            self._metrics.database_error()
            self._fail([pending], Unavailable("the message store is unavailable; retry"))
        except Exception:
            log.exception("message could not be stored")
            self._fail([pending], Internal("the message could not be stored"))
        else:
            if not pending.future.done():
                pending.future.set_result(row)

    async def _write(self, messages: list[NewMessage], writer: bool = False) -> list[StoredRow]:
        """Store ``messages``; ``writer``: called by the writer task (the only user of its held
        connection: a connection runs one statement at a time)."""
        outbox = self._outbox
        hooks = None if outbox is None else store.Hooks(outbox.message_tenants, outbox.generation)
        if self._one_statement and all(m.client_id is None for m in messages):
            # One atomic statement: no BEGIN/COMMIT round trips around it.
            if writer and self.hold_connection:
                rows = await self._write_held(messages, hooks)
            else:
                async with self._autocommit() as session:
                    rows = await store.write_batch(session, messages, hooks)
        else:
            async with self._sessions.begin() as session:
                rows = await store.write_batch(session, messages, hooks)
        if hooks is not None and outbox is not None and hooks.written:
            outbox.written()
        self.batches += 1
        self.stored += len(messages)
        self._metrics.batch(len(messages))
        self._db_down.recovered("message store available again")
        return rows

    async def _write_held(
        self, messages: list[NewMessage], hooks: store.Hooks | None
    ) -> list[StoredRow]:
        if self._held is None:
            self._held = await hold_driver_connection(self._autocommit)
        try:
            return await store.write_batch_driver(self._held[1], messages, hooks)
        except BaseException:
            # Failed or cancelled mid-statement: the connection's state is unknown.
            await self._drop_held()
            raise

    async def _drop_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            with contextlib.suppress(Exception):
                await drop_driver_connection(held[0])

    @staticmethod
    def _fail(batch: list[_Pending], error: Exception) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)

    async def room_seq(self, tenant_id: int, room: str) -> int:
        """The room's last seq, read by a query that starts after this call (a join relies on
        that: what the room stores after its read reaches the joining socket live).

        Calls for one room share reads: while a read of the room runs, every call waits for the
        next one, which starts when it ends. So a burst of joins into one room (sockets of a
        reconnecting node, a connect storm) costs two reads, not one per socket held in the
        pool's queue with its session meanwhile."""
        key = (tenant_id, room)
        reads = self._seq_reads.get(key)
        if reads is None:
            reads = self._seq_reads[key] = _SeqReads()
        if reads.next is None:
            reads.next = asyncio.ensure_future(self._next_seq_read(key, reads))
            reads.next.add_done_callback(_retrieve)
        return await asyncio.shield(reads.next)

    async def _next_seq_read(self, key: tuple[int, str], reads: _SeqReads) -> int:
        if reads.running is not None:
            await asyncio.wait([reads.running])  # its outcome is its own callers'
        me = reads.next
        reads.next, reads.running = None, me  # from here on, new calls wait for the next read
        try:
            return await self._read_room_seq(*key)
        finally:
            reads.running = None
            if reads.next is None:
                self._seq_reads.pop(key, None)

    @db_boundary()
    async def _read_room_seq(self, tenant_id: int, room: str) -> int:
        async with self._autocommit() as session:
            state = await store.room_state(session, tenant_id, room)
        return 0 if state is None else state[1]

    @db_boundary()
    async def replay(
        self, tenant_id: int, room: str, since: int, page: int, decode: BodyDecoder = json.loads
    ) -> Replay:
        """Messages with seq > since, oldest first, at most ``page`` of them."""
        async with self._autocommit() as session:
            state = await store.room_state(session, tenant_id, room)
            if state is None:
                return Replay(0, [], False, False)
            room_id, last_seq = state
            rows = await store.message_range(
                session, tenant_id, room_id, after_seq=since, before_seq=None,
                limit=page, newest_first=False,
            )  # fmt: skip
        rows = self._within_bytes(rows)
        missed = [wire(_row(m, room), decode) for m in rows]
        # seq has no gaps, so a first message later than since+1 means retention removed some.
        expired = since < last_seq and (not rows or rows[0].seq > since + 1)
        truncated = bool(rows) and rows[-1].seq < last_seq
        # A batch committed between the two reads may be in ``missed``: report the newer seq.
        return Replay(max(last_seq, rows[-1].seq if rows else 0), missed, truncated, expired)

    @db_boundary()
    async def read_after(
        self, tenant_id: int, room: str, after: int, limit: int
    ) -> list[StoredRow]:
        """Up to ``limit`` stored messages of a room with seq > ``after``, oldest first."""
        async with self._autocommit() as session:
            state = await store.room_state(session, tenant_id, room)
            if state is None:
                return []
            rows = await store.message_range(
                session, tenant_id, state[0], after_seq=after, before_seq=None,
                limit=limit, newest_first=False,
            )  # fmt: skip
        return [_row(m, room) for m in rows]

    @db_boundary()
    async def last_seqs(self, tenant_id: int, rooms: list[str]) -> dict[str, int]:
        """The last stored seq of each of ``rooms`` (those with messages)."""
        async with self._autocommit() as session:
            return await store.rooms_last_seq(session, tenant_id, rooms)

    @db_boundary()
    async def history(
        self,
        tenant_id: int,
        room: str,
        *,
        before_seq: int | None,
        after_seq: int | None,
        limit: int,
        decode: BodyDecoder = json.loads,
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of history, oldest first. With only ``after_seq`` the page starts there; else
        it is the newest ``limit`` below ``before_seq`` (or overall)."""
        async with self._autocommit() as session:
            state = await store.room_state(session, tenant_id, room)
            if state is None:
                return [], False
            newest_first = after_seq is None
            rows = list(
                await store.message_range(
                    session,
                    tenant_id,
                    state[0],
                    after_seq=after_seq,
                    before_seq=before_seq,
                    limit=limit + 1,
                    newest_first=newest_first,
                )
            )
        kept = self._within_bytes(rows[:limit])
        has_more = len(rows) > len(kept)
        rows = kept
        if newest_first:
            rows.reverse()
        return [wire(_row(m, room), decode) for m in rows], has_more

    def _within_bytes(self, rows: Sequence[Any]) -> list[Any]:
        """The leading rows whose bodies fit in ``replay_max_bytes`` (at least one, so a reader
        always moves on): a small request never turns into a huge answer."""
        budget = self._settings.replay_max_bytes
        kept: list[Any] = []
        for row in rows:
            body = row.body
            budget -= (len(body) if body.isascii() else len(body.encode())) + WIRE_OVERHEAD
            if budget < 0 and kept:
                break
            kept.append(row)
        return kept

    @db_boundary()
    async def rooms(self, tenant_id: int, *, limit: int, after: str) -> list[dict[str, Any]]:
        async with self._autocommit() as session:
            rows = await store.list_rooms(session, tenant_id, limit, after)
        return [
            {"room": r.name, "last_seq": r.last_seq, "message_count": r.message_count} for r in rows
        ]

    @db_boundary()
    async def delete_expired(self, tenant_id: int, retention_days: int) -> int:
        """Delete this tenant's messages past retention, batch by batch; returns the count."""
        cutoff = int(time.time() * 1000) - retention_days * 86_400_000
        total = 0
        while True:
            async with self._sessions.begin() as session:
                deleted = await store.delete_expired(
                    session, tenant_id, cutoff, self._settings.retention_batch
                )
            total += deleted
            if deleted < self._settings.retention_batch:
                return total
            await asyncio.sleep(0)  # let the message path in between batches


def _row(message: Any, room: str) -> StoredRow:
    return StoredRow(
        message.id, room, message.seq, message.ts, message.sender_id, message.sender_name,
        message.body, message.client_id,
    )  # fmt: skip
