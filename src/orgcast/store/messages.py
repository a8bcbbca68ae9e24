"""Queries for rooms and the append-only message log.

``write_batch`` is the heart of group commit: one upsert assigns the sequence numbers of every room
in the batch (``last_seq = last_seq + n``, which row-locks each room so concurrent writers on any
node queue behind each other), then one multi-row insert stores the messages. Rooms are upserted in
(tenant, name) order so that two writers never take the same row locks in opposite orders.

Webhooks' transactional outbox lives here too: the same write stores one ``message.created``
outbox row per message and subscribed endpoint, so an acked message always has its event. Which
tenants subscribe comes from the caller's cache (``Hooks``), trusted only while the endpoint
generation in the database is the one the cache was read at (see ``services.webhooks``).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import orjson
from sqlalchemy import Row, Table, and_, bindparam, delete, func, insert, or_, select, text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from . import webhooks
from .models import Message, Room

MESSAGES = cast(Table, Message.__table__)

__all__ = [
    "Hooks",
    "IntegrityError",
    "NewMessage",
    "StoredRow",
    "batch_is_one_statement",
    "delete_expired",
    "list_rooms",
    "message_range",
    "room_state",
    "rooms_last_seq",
    "write_batch",
    "write_batch_driver",
]


@dataclass(frozen=True, slots=True)
class NewMessage:
    tenant_id: int
    room: str
    sender_id: str
    sender_name: str | None
    body: str
    client_id: str | None


@dataclass(slots=True)
class Hooks:
    """The tenants with ``message.created`` subscriptions as of endpoint ``generation``;
    ``written`` is set when the write stored events (or may have: the exact path)."""

    tenants: frozenset[int]
    generation: int
    written: bool = False


@dataclass(frozen=True, slots=True)
class StoredRow:
    id: str
    room: str
    seq: int
    ts: int
    sender_id: str
    sender_name: str | None
    body: str
    client_id: str | None
    duplicate: bool = False


def new_message_id(now_ms: int) -> str:
    """32 hex digits: 48 bits of milliseconds then 80 random bits, so ids sort by time."""
    return f"{now_ms:012x}{os.urandom(10).hex()}"


def batch_is_one_statement(sessions: async_sessionmaker[AsyncSession]) -> bool:
    """Whether ``write_batch`` stores a batch without client ids in one atomic statement, so a
    session without a transaction (autocommit) can run it."""
    return bool(sessions.kw["bind"].dialect.name == "postgresql")


def one_statement(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def write_batch(
    session: AsyncSession, batch: Sequence[NewMessage], hooks: Hooks | None = None
) -> list[StoredRow]:
    """Store a batch; returns one row per input, in order (``duplicate`` for idempotent resends).
    With ``hooks``, messages get their ``message.created`` outbox rows in the same write."""
    now = int(time.time() * 1000)
    results: list[StoredRow | None] = [None] * len(batch)

    # Idempotent resends: same (tenant, room, sender, client_id) returns the stored original.
    first_of: dict[tuple[int, str, str, str], int] = {}
    keyed = [(i, m) for i, m in enumerate(batch) if m.client_id is not None]
    existing: dict[tuple[int, str, str, str], StoredRow] = {}
    if keyed:
        for row in await _find_by_client_ids(session, [m for _, m in keyed]):
            existing[(row.tenant_id, row.room, row.sender_id, row.client_id)] = StoredRow(
                row.id, row.room, row.seq, row.ts, row.sender_id, row.sender_name, row.body,
                row.client_id, duplicate=True,
            )  # fmt: skip
    fresh: list[int] = []
    for i, message in enumerate(batch):
        if message.client_id is not None:
            key = (message.tenant_id, message.room, message.sender_id, message.client_id)
            if key in existing:
                results[i] = existing[key]
                continue
            if key in first_of:
                continue  # resolved below to the first copy in this batch
            first_of[key] = i
        fresh.append(i)

    if fresh and one_statement(session):
        for i, stored in zip(
            fresh, await _insert_postgresql(session, batch, fresh, now, hooks), strict=True
        ):
            results[i] = stored
    elif fresh:
        counts: dict[tuple[int, str], int] = defaultdict(int)
        for i in fresh:
            counts[(batch[i].tenant_id, batch[i].room)] += 1
        ordered = sorted(counts)
        # SQLite only: PostgreSQL stores every batch in the one statement above.
        upsert = sqlite_insert(Room).values(
            [
                {"tenant_id": t, "name": r, "last_seq": counts[(t, r)], "created_at": now}
                for t, r in ordered
            ]
        )
        returning = upsert.on_conflict_do_update(
            index_elements=["tenant_id", "name"],
            set_={"last_seq": Room.last_seq + upsert.excluded.last_seq},
        ).returning(Room.id, Room.tenant_id, Room.name, Room.last_seq)
        rooms = {(r.tenant_id, r.name): r for r in (await session.execute(returning)).all()}
        next_seq = {key: rooms[key].last_seq - counts[key] + 1 for key in ordered}
        rows = []
        for i in fresh:
            message = batch[i]
            room_key = (message.tenant_id, message.room)
            seq = next_seq[room_key]
            next_seq[room_key] = seq + 1
            stored = StoredRow(
                new_message_id(now), message.room, seq, now, message.sender_id,
                message.sender_name, message.body, message.client_id,
            )  # fmt: skip
            results[i] = stored
            rows.append(
                {
                    "id": stored.id,
                    "tenant_id": message.tenant_id,
                    "room_id": rooms[room_key].id,
                    "seq": seq,
                    "ts": now,
                    "sender_id": message.sender_id,
                    "sender_name": message.sender_name,
                    "client_id": message.client_id,
                    "body": message.body,
                }
            )
        # The table, not the class: a Core executemany, without the ORM's bulk-insert bookkeeping.
        await session.execute(insert(MESSAGES), rows)
        if hooks is not None:
            await _insert_events(session, [(batch[i], results[i]) for i in fresh], hooks, now)

    for i, message in enumerate(batch):
        if results[i] is None:
            assert message.client_id is not None
            original = results[
                first_of[(message.tenant_id, message.room, message.sender_id, message.client_id)]
            ]
            assert original is not None
            results[i] = replace(original, duplicate=True)
    return [r for r in results if r is not None]


# One statement: upsert the batch's rooms (in (tenant, name) order, advancing last_seq by each
# room's count), then insert every message with seq = new last_seq - count + its ordinal in its
# room. A single statement is atomic without BEGIN/COMMIT, its text never changes (compiled and
# prepared once per connection), and the whole batch costs one round trip.
_INSERT_BATCH = text(
    """
WITH batch AS (
    SELECT * FROM unnest(
        CAST(:ids AS TEXT[]), CAST(:tenant_ids AS BIGINT[]), CAST(:rooms AS TEXT[]),
        CAST(:ordinals AS BIGINT[]), CAST(:counts AS BIGINT[]), CAST(:sender_ids AS TEXT[]),
        CAST(:sender_names AS TEXT[]), CAST(:client_ids AS TEXT[]), CAST(:bodies AS TEXT[])
    ) AS b(id, tenant_id, room, ordinal, n, sender_id, sender_name, client_id, body)
),
upserted AS (
    INSERT INTO rooms (tenant_id, name, last_seq, created_at)
    SELECT tenant_id, room, n, CAST(:now AS BIGINT) FROM batch WHERE ordinal = 1
    ORDER BY tenant_id, room
    ON CONFLICT (tenant_id, name) DO UPDATE SET last_seq = rooms.last_seq + excluded.last_seq
    RETURNING id, tenant_id, name, last_seq
)
INSERT INTO messages (id, tenant_id, room_id, seq, ts, sender_id, sender_name, client_id, body)
SELECT b.id, b.tenant_id, u.id, u.last_seq - b.n + b.ordinal, CAST(:now AS BIGINT), b.sender_id,
       b.sender_name, b.client_id, b.body
FROM batch b JOIN upserted u ON u.tenant_id = b.tenant_id AND u.name = b.room
RETURNING id, seq
"""
)


# The same statement, which also writes the outbox rows of message.created for every enabled
# endpoint that takes it: of the tenants in :hooked, or of any tenant when the endpoint generation
# is not :generation (the caller's cache is stale). ``data`` is the broadcast shape of the
# message; the body is the stored JSON text, cast to json (kept as written, not re-encoded).
_INSERT_BATCH_WITH_EVENTS = text(
    _INSERT_BATCH.text.replace(
        ")\nINSERT INTO messages (",
        "),\ninserted AS (\nINSERT INTO messages (",
    ).replace(
        "RETURNING id, seq\n",
        """RETURNING id, seq
),
events AS (
    INSERT INTO webhook_events (tenant_id, endpoint_id, event_id, type, created_at, data)
    SELECT b.tenant_id, e.id, 'evt_' || b.id, 'message.created', CAST(:now AS BIGINT),
           CAST(CASE WHEN b.client_id IS NULL THEN json_build_object(
               'id', b.id, 'room', b.room, 'seq', i.seq, 'ts', CAST(:now AS BIGINT),
               'sender', json_build_object('id', b.sender_id,
                                           'name', COALESCE(b.sender_name, b.sender_id)),
               'body', CAST(b.body AS json))
           ELSE json_build_object(
               'id', b.id, 'room', b.room, 'seq', i.seq, 'ts', CAST(:now AS BIGINT),
               'sender', json_build_object('id', b.sender_id,
                                           'name', COALESCE(b.sender_name, b.sender_id)),
               'body', CAST(b.body AS json), 'client_id', b.client_id)
           END AS TEXT)
    FROM batch b
    JOIN inserted i ON i.id = b.id
    JOIN webhook_endpoints e ON e.tenant_id = b.tenant_id AND e.enabled
         AND CAST(e.events AS jsonb) ?| ARRAY['message.created', '*']
    WHERE b.tenant_id = ANY(CAST(:hooked AS BIGINT[]))
       OR (SELECT generation FROM webhook_generation WHERE id = 1) <> CAST(:generation AS BIGINT)
    ORDER BY b.tenant_id, b.room, i.seq
)
SELECT id, seq FROM inserted
""",
    )
)


# The same statements for the driver itself, with numbered parameters in this order.
_PARAMS = ("ids", "tenant_ids", "rooms", "ordinals", "counts", "sender_ids", "sender_names",
           "client_ids", "bodies", "now", "hooked", "generation")  # fmt: skip


def _numbered(sql: str) -> str:
    # Longest names first, so that no name is replaced inside a longer one.
    for name in sorted(_PARAMS, key=len, reverse=True):
        sql = sql.replace(f":{name}", f"${_PARAMS.index(name) + 1}")
    return sql


_DRIVER_INSERT_BATCH = _numbered(_INSERT_BATCH.text)
_DRIVER_INSERT_BATCH_WITH_EVENTS = _numbered(_INSERT_BATCH_WITH_EVENTS.text)


async def write_batch_driver(
    connection: Any, batch: Sequence[NewMessage], hooks: Hooks | None = None
) -> list[StoredRow]:
    """``write_batch`` for a batch without client ids, on PostgreSQL, through the asyncpg
    connection itself: the same one statement, without the session, pool checkout and result
    machinery around it (most of a lone message's commit time)."""
    now = int(time.time() * 1000)
    statement, params, ids = _batch_statement(batch, range(len(batch)), now, hooks)
    sql = _DRIVER_INSERT_BATCH if statement is _INSERT_BATCH else _DRIVER_INSERT_BATCH_WITH_EVENTS
    args = [params[name] for name in _PARAMS if name in params]
    seqs: dict[str, int] = {row[0]: row[1] for row in await connection.fetch(sql, *args)}
    return [
        StoredRow(id_, m.room, seqs[id_], now, m.sender_id, m.sender_name, m.body, m.client_id)
        for id_, m in zip(ids, batch, strict=True)
    ]


def _batch_statement(
    batch: Sequence[NewMessage], fresh: Sequence[int], now: int, hooks: Hooks | None
) -> tuple[Any, dict[str, Any], list[str]]:
    """The one statement storing ``batch[i]`` for each ``i`` in ``fresh``, its parameters and
    the new message ids (in ``fresh`` order)."""
    counts: dict[tuple[int, str], int] = defaultdict(int)
    ordinals = []
    for i in fresh:
        key = (batch[i].tenant_id, batch[i].room)
        counts[key] += 1
        ordinals.append(counts[key])
    messages = [batch[i] for i in fresh]
    ids = [new_message_id(now) for _ in fresh]
    params = {
        "ids": ids,
        "tenant_ids": [m.tenant_id for m in messages],
        "rooms": [m.room for m in messages],
        "ordinals": ordinals,
        "counts": [counts[(m.tenant_id, m.room)] for m in messages],
        "sender_ids": [m.sender_id for m in messages],
        "sender_names": [m.sender_name for m in messages],
        "client_ids": [m.client_id for m in messages],
        "bodies": [m.body for m in messages],
        "now": now,
    }
    statement = _INSERT_BATCH
    if hooks is not None:
        statement = _INSERT_BATCH_WITH_EVENTS
        hooked = [t for t in {m.tenant_id for m in messages} if t in hooks.tenants]
        params.update(hooked=hooked, generation=hooks.generation)
        # Rows are written for these tenants, or for any if the generation moved: the caller
        # only needs to know whether to wake the worker, so a stale cache counts as written.
        hooks.written = bool(hooked) or hooks.generation < 0
    return statement, params, ids


async def _insert_postgresql(
    session: AsyncSession,
    batch: Sequence[NewMessage],
    fresh: list[int],
    now: int,
    hooks: Hooks | None,
) -> list[StoredRow]:
    """Store ``batch[i]`` for each ``i`` in ``fresh`` in one statement; rows in that order."""
    statement, params, ids = _batch_statement(batch, fresh, now, hooks)
    messages = [batch[i] for i in fresh]
    seqs: dict[str, int] = {row[0]: row[1] for row in await session.execute(statement, params)}
    return [
        StoredRow(id_, m.room, seqs[id_], now, m.sender_id, m.sender_name, m.body, m.client_id)
        for id_, m in zip(ids, messages, strict=True)
    ]


async def _insert_events(
    session: AsyncSession,
    stored: Sequence[tuple[NewMessage, StoredRow | None]],
    hooks: Hooks,
    now: int,
) -> None:
    """The outbox rows of ``message.created`` for messages just inserted (the path of SQLite,
    where the batch is a transaction of several statements)."""
    tenants = {m.tenant_id for m, _ in stored}
    if await webhooks.generation(session) == hooks.generation:
        tenants &= hooks.tenants
    endpoints = await webhooks.subscribed(session, tenants, webhooks.MESSAGE_CREATED)
    if not endpoints:
        return
    hooks.written = True
    events = []
    for message, row in stored:
        assert row is not None
        targets = [e for t, e in endpoints if t == message.tenant_id]
        if not targets:
            continue
        data: dict[str, Any] = {
            "id": row.id,
            "room": row.room,
            "seq": row.seq,
            "ts": row.ts,
            "sender": {"id": row.sender_id, "name": row.sender_name or row.sender_id},
            "body": orjson.Fragment(row.body),
        }
        if row.client_id is not None:
            data["client_id"] = row.client_id
        encoded = orjson.dumps(data).decode()
        events += [
            webhooks.NewEvent(
                message.tenant_id, e, "evt_" + row.id, webhooks.MESSAGE_CREATED, now, encoded
            )
            for e in targets
        ]
    await webhooks.insert_events(session, events)


async def _find_by_client_ids(
    session: AsyncSession, messages: Sequence[NewMessage]
) -> Sequence[Row]:  # type: ignore[type-arg]
    conditions = [
        and_(
            Message.tenant_id == m.tenant_id,
            Room.name == m.room,
            Message.sender_id == m.sender_id,
            Message.client_id == m.client_id,
        )
        for m in messages
    ]
    query = (
        select(
            Message.id,
            Message.tenant_id,
            Room.name.label("room"),
            Message.seq,
            Message.ts,
            Message.sender_id,
            Message.sender_name,
            Message.body,
            Message.client_id,
        )
        .join(Room, Room.id == Message.room_id)
        .where(or_(*conditions))
    )
    return (await session.execute(query)).all()


# Built once: constructing the expression per call (two comparisons, a select) cost more CPU
# than running it, and every join, replay, history page and gap read starts with it.
_ROOM_STATE = select(Room.id, Room.last_seq).where(
    Room.tenant_id == bindparam("tenant_id"), Room.name == bindparam("room")
)


async def room_state(session: AsyncSession, tenant_id: int, room: str) -> tuple[int, int] | None:
    """(room id, last_seq), or None for a room nothing was ever stored in."""
    result = await session.execute(_ROOM_STATE, {"tenant_id": tenant_id, "room": room})
    row = result.first()
    return None if row is None else (row[0], row[1])


async def rooms_last_seq(
    session: AsyncSession, tenant_id: int, rooms: Sequence[str]
) -> dict[str, int]:
    """The last stored seq of each named room that has messages (one query)."""
    query = select(Room.name, Room.last_seq).where(
        Room.tenant_id == tenant_id, Room.name.in_(rooms)
    )
    return {name: last for name, last in (await session.execute(query)).all()}


async def message_range(
    session: AsyncSession,
    tenant_id: int,
    room_id: int,
    *,
    after_seq: int | None,
    before_seq: int | None,
    limit: int,
    newest_first: bool,
) -> Sequence[Row]:  # type: ignore[type-arg]
    """An index range scan over (tenant_id, room_id, seq); plain rows with the message's
    attributes (no ORM instances: a replay reads up to thousands of them)."""
    query = select(*_MESSAGE_COLUMNS).where(
        Message.tenant_id == tenant_id, Message.room_id == room_id
    )
    if after_seq is not None:
        query = query.where(Message.seq > after_seq)
    if before_seq is not None:
        query = query.where(Message.seq < before_seq)
    order = Message.seq.desc() if newest_first else Message.seq.asc()
    return (await session.execute(query.order_by(order).limit(limit))).all()


_MESSAGE_COLUMNS = (
    Message.id, Message.seq, Message.ts, Message.sender_id, Message.sender_name, Message.body,
    Message.client_id,
)  # fmt: skip


async def list_rooms(
    session: AsyncSession, tenant_id: int, limit: int, after: str
) -> Sequence[Row]:  # type: ignore[type-arg]
    counts = (
        select(func.count(Message.id))
        .where(Message.tenant_id == Room.tenant_id, Message.room_id == Room.id)
        .scalar_subquery()
    )
    query = (
        select(Room.name, Room.last_seq, counts.label("message_count"))
        .where(Room.tenant_id == tenant_id, Room.name > after)
        .order_by(Room.name)
        .limit(limit)
    )
    return (await session.execute(query)).all()


async def delete_expired(session: AsyncSession, tenant_id: int, cutoff_ms: int, batch: int) -> int:
    """Delete at most ``batch`` messages older than ``cutoff_ms``; returns how many went."""
    victims = (
        select(Message.id)
        .where(Message.tenant_id == tenant_id, Message.ts < cutoff_ms)
        .limit(batch)
        .scalar_subquery()
    )
    result = await session.execute(delete(Message).where(Message.id.in_(victims)))
    return int(result.rowcount)  # type: ignore[attr-defined]
