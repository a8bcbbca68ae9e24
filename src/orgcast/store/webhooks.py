"""Queries for webhook endpoints, the event outbox and the delivery log.

The outbox (``webhook_events``) holds events not yet put into a delivery: one row per event and
endpoint, written in the transaction of what the event reports (``message.created`` rows are
written by ``store.messages.write_batch`` itself). ``claim`` is the worker's one transaction per
round: it leases due retries and turns outbox rows into new deliveries, one per endpoint, oldest
events first. On PostgreSQL both reads take ``FOR UPDATE SKIP LOCKED``, so nodes claiming at the
same moment never take the same row; SQLite has one writer at a time and one node.

On PostgreSQL the new deliveries are made by one statement (``_CLAIM_NEW``): it locks the oldest
outbox rows, cuts them into batches, writes each batch's request body, inserts the deliveries,
deletes the rows and returns one row per delivery. No event row crosses into the node: the
worker runs on the node's one event loop beside the message path, and a claim that read and
encoded every event there cost that path more than the database spends doing it.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from sqlalchemy import Table, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Tenant, WebhookDelivery, WebhookEndpoint, WebhookEvent, WebhookGeneration

EVENTS = cast(Table, WebhookEvent.__table__)
DELIVERIES = cast(Table, WebhookDelivery.__table__)
MESSAGE_CREATED = "message.created"

__all__ = [
    "Claimed",
    "Delivered",
    "NewEvent",
    "backlog",
    "bump_generation",
    "claim",
    "count_endpoints",
    "delete_endpoint",
    "generation",
    "get_delivery",
    "get_endpoint",
    "insert_events",
    "list_deliveries",
    "list_endpoints",
    "new_id",
    "prune",
    "record_attempt",
    "record_delivered",
    "relaxed_commit",
    "subscribed",
    "subscriptions",
]


def new_id(prefix: str, now_ms: int) -> str:
    """``prefix`` then 32 hex digits: 48 bits of milliseconds and 80 random bits (sort by time)."""
    return f"{prefix}{now_ms:012x}{os.urandom(10).hex()}"


def subscribes(events: Iterable[str], event_type: str) -> bool:
    return any(name in ("*", event_type) for name in events)


# -- endpoints ------------------------------------------------------------------------------------


async def generation(session: AsyncSession) -> int:
    """The endpoint generation: read it before the subscriptions it goes with."""
    value = await session.scalar(
        select(WebhookGeneration.generation).where(WebhookGeneration.id == 1)
    )
    return int(value or 0)


async def bump_generation(session: AsyncSession) -> None:
    """In the transaction that changes an endpoint: every node's cached set is now suspect."""
    await session.execute(
        update(WebhookGeneration)
        .where(WebhookGeneration.id == 1)
        .values(generation=WebhookGeneration.generation + 1)
    )


async def subscriptions(session: AsyncSession) -> list[tuple[int, list[str]]]:
    """(tenant id, event types) of every enabled endpoint."""
    rows = await session.execute(
        select(WebhookEndpoint.tenant_id, WebhookEndpoint.events).where(
            WebhookEndpoint.enabled.is_(True)
        )
    )
    return [(tenant_id, list(events)) for tenant_id, events in rows]


async def subscribed(
    session: AsyncSession, tenant_ids: Collection[int], event_type: str
) -> list[tuple[int, str]]:
    """(tenant id, endpoint id) of the enabled endpoints of these tenants that take the type."""
    if not tenant_ids:
        return []
    rows = await session.execute(
        select(WebhookEndpoint.tenant_id, WebhookEndpoint.id, WebhookEndpoint.events).where(
            WebhookEndpoint.tenant_id.in_(list(tenant_ids)), WebhookEndpoint.enabled.is_(True)
        )
    )
    return [(t, e) for t, e, events in rows if subscribes(events, event_type)]


async def count_endpoints(session: AsyncSession, tenant_id: int) -> int:
    query = select(func.count()).where(WebhookEndpoint.tenant_id == tenant_id)
    return int(await session.scalar(query) or 0)


async def list_endpoints(session: AsyncSession, tenant_id: int) -> Sequence[WebhookEndpoint]:
    query = (
        select(WebhookEndpoint)
        .where(WebhookEndpoint.tenant_id == tenant_id)
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    )
    return (await session.scalars(query)).all()


async def get_endpoint(
    session: AsyncSession, tenant_id: int, endpoint_id: str, *, lock: bool = False
) -> WebhookEndpoint | None:
    query = select(WebhookEndpoint).where(
        WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.id == endpoint_id
    )
    if lock:
        query = query.with_for_update()
    return await session.scalar(query)


async def delete_endpoint(session: AsyncSession, tenant_id: int, endpoint_id: str) -> bool:
    await bump_generation(session)
    # Child rows first: does not depend on the database enforcing ON DELETE CASCADE.
    for model in (WebhookEvent, WebhookDelivery):
        await session.execute(
            delete(model).where(model.tenant_id == tenant_id, model.endpoint_id == endpoint_id)
        )
    result = await session.execute(
        delete(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.id == endpoint_id
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# -- the outbox -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewEvent:
    tenant_id: int
    endpoint_id: str
    event_id: str
    type: str
    created_at: int
    data: str


async def insert_events(session: AsyncSession, events: Sequence[NewEvent]) -> None:
    if events:
        await session.execute(
            insert(EVENTS),
            [
                {
                    "tenant_id": e.tenant_id,
                    "endpoint_id": e.endpoint_id,
                    "event_id": e.event_id,
                    "type": e.type,
                    "created_at": e.created_at,
                    "data": e.data,
                }
                for e in events
            ],
        )


# -- claiming and recording deliveries -----------------------------------------------------------


async def relaxed_commit(session: AsyncSession) -> None:
    """Do not wait for this transaction's commit to reach the disk (PostgreSQL). A claim or an
    attempt's record lost in a database crash only means the delivery is attempted again, which
    at-least-once allows; waiting for the flush made every delivery wait for two of them."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SET LOCAL synchronous_commit = off"))


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this node holds the lease of, with what an attempt needs."""

    id: str
    tenant_id: int
    endpoint_id: str
    url: str
    secrets: tuple[str, ...]
    body: bytes
    attempt: int
    created_at: int
    failing: bool  # the endpoint had failed since its last success, when claimed
    slug: str
    events: int  # in the body


def _secrets(row: Any, now: int) -> tuple[str, ...]:
    if row.previous_secret and (row.previous_secret_until or 0) > now:
        return (row.secret, row.previous_secret)
    return (row.secret,)


_ENDPOINT_COLUMNS = (
    WebhookEndpoint.url,
    WebhookEndpoint.secret,
    WebhookEndpoint.previous_secret,
    WebhookEndpoint.previous_secret_until,
    WebhookEndpoint.failing_since,
)


_DELIVERY_COLUMNS = (
    WebhookDelivery.id, WebhookDelivery.tenant_id, WebhookDelivery.endpoint_id,
    WebhookDelivery.body, WebhookDelivery.attempt, WebhookDelivery.created_at,
    WebhookDelivery.event_ids,
)  # fmt: skip
_EVENT_COLUMNS = (
    WebhookEvent.id, WebhookEvent.tenant_id, WebhookEvent.endpoint_id, WebhookEvent.event_id,
    WebhookEvent.type, WebhookEvent.created_at, WebhookEvent.data,
)  # fmt: skip


async def claim(
    session: AsyncSession,
    *,
    now: int,
    lease_ms: int,
    busy: Mapping[str, int],
    per_endpoint: int,
    limit: int,
    max_batch: int,
    due: bool = True,
) -> list[Claimed]:
    """Lease deliveries for endpoints with a free slot (``per_endpoint`` minus ``busy``): due
    retries first (unless ``due`` is false), then new deliveries of up to ``max_batch`` outbox
    events each, oldest events first. Run it inside a transaction; the leases hold once it
    commits."""
    free = {endpoint: per_endpoint - count for endpoint, count in busy.items()}
    claimed: list[Claimed] = []
    if due:
        claimed = await _claim_due(session, now, lease_ms, free, per_endpoint, limit)
        if len(claimed) >= limit:
            return claimed
    make = _claim_new if session.get_bind().dialect.name == "postgresql" else _claim_new_portable
    claimed += await make(
        session, now, lease_ms, free, per_endpoint, limit - len(claimed), max_batch
    )
    return claimed


async def _claim_due(
    session: AsyncSession,
    now: int,
    lease_ms: int,
    free: dict[str, int],
    per_endpoint: int,
    limit: int,
) -> list[Claimed]:
    D, E = WebhookDelivery, WebhookEndpoint
    full = sorted(e for e, n in free.items() if n <= 0)
    claimed: list[Claimed] = []
    due = (
        select(*_DELIVERY_COLUMNS, Tenant.slug, *_ENDPOINT_COLUMNS)
        .join(E, E.id == D.endpoint_id)
        .join(Tenant, Tenant.id == D.tenant_id)
        .where(
            D.status == "pending",
            D.next_attempt_at <= now,
            or_(D.lease_until.is_(None), D.lease_until <= now),
            E.enabled.is_(True),
        )
        .order_by(D.next_attempt_at, D.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=D)
    )
    if full:
        due = due.where(D.endpoint_id.not_in(full))
    for row in await session.execute(due):
        if free.setdefault(row.endpoint_id, per_endpoint) <= 0:
            continue
        free[row.endpoint_id] -= 1
        claimed.append(
            Claimed(
                row.id, row.tenant_id, row.endpoint_id, row.url, _secrets(row, now),
                row.body.encode(), row.attempt, row.created_at, row.failing_since is not None,
                row.slug, len(row.event_ids),
            )
        )  # fmt: skip
    if claimed:
        await session.execute(
            update(D).where(D.id.in_([c.id for c in claimed])).values(lease_until=now + lease_ms)
        )
    return claimed


# New deliveries in one statement (PostgreSQL). ``picked``: the oldest outbox rows of enabled
# endpoints with a free slot, locked (rows another node holds are skipped). ``parts`` numbers
# each endpoint's rows into batches of :max_batch; ``batches`` keeps as many of an endpoint's
# batches as it has free slots (:free_ids/:free_counts, else :per_endpoint); ``chosen`` ranks the
# batches by their oldest event and at most :deliveries of them are made. The body is the JSON
# the portable path encodes, built from the stored ``data`` text as it is; each delivery takes
# the id at its rank in :ids. Rows picked but not chosen stay in the outbox, for a later round.
_CLAIM_NEW = text(
    """
WITH picked AS (
    SELECT v.id, v.tenant_id, v.endpoint_id, v.event_id, v.type, v.created_at, v.data
    FROM webhook_events v
    JOIN webhook_endpoints e ON e.id = v.endpoint_id
    WHERE e.enabled AND v.endpoint_id <> ALL(CAST(:full AS VARCHAR[]))
    ORDER BY v.id
    LIMIT CAST(:rows AS INTEGER)
    FOR UPDATE OF v SKIP LOCKED
),
parts AS (
    SELECT p.*, (row_number() OVER (PARTITION BY p.endpoint_id ORDER BY p.id) - 1)
                / CAST(:max_batch AS INTEGER) AS part
    FROM picked p
),
batches AS (
    SELECT p.*, min(p.id) OVER (PARTITION BY p.endpoint_id, p.part) AS first_id
    FROM parts p
    LEFT JOIN unnest(CAST(:free_ids AS VARCHAR[]), CAST(:free_counts AS INTEGER[]))
        AS f(endpoint_id, free) ON f.endpoint_id = p.endpoint_id
    WHERE p.part < COALESCE(f.free, CAST(:per_endpoint AS INTEGER))
),
chosen AS (
    SELECT b.*, dense_rank() OVER (ORDER BY b.first_id) AS ordinal
    FROM batches b
),
taken AS (
    DELETE FROM webhook_events v
    USING chosen c
    WHERE v.id = c.id AND c.ordinal <= CAST(:deliveries AS INTEGER)
),
made AS (
    INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_ids, body, status, attempt,
                                    next_attempt_at, lease_until, created_at, updated_at)
    SELECT (CAST(:ids AS VARCHAR[]))[c.ordinal], min(c.tenant_id), min(c.endpoint_id),
           json_agg(c.event_id ORDER BY c.id),
           '{"events":[' || string_agg(
               '{"id":' || to_json(c.event_id) || ',"type":' || to_json(c.type)
               || ',"tenant":' || to_json(t.slug) || ',"created_at":' || c.created_at
               || ',"data":' || c.data || '}',
               ',' ORDER BY c.id) || ']}',
           'pending', 0, CAST(:now AS BIGINT), CAST(:lease_until AS BIGINT),
           CAST(:now AS BIGINT), CAST(:now AS BIGINT)
    FROM chosen c
    JOIN tenants t ON t.id = c.tenant_id
    WHERE c.ordinal <= CAST(:deliveries AS INTEGER)
    GROUP BY c.ordinal
    RETURNING id, tenant_id, endpoint_id, body, json_array_length(event_ids) AS events
)
SELECT m.id, m.tenant_id, m.endpoint_id, m.body, m.events, t.slug, e.url, e.secret,
       e.previous_secret, e.previous_secret_until, e.failing_since
FROM made m
JOIN webhook_endpoints e ON e.id = m.endpoint_id
JOIN tenants t ON t.id = m.tenant_id
ORDER BY array_position(CAST(:ids AS VARCHAR[]), m.id)
"""
)


async def _claim_new(
    session: AsyncSession,
    now: int,
    lease_ms: int,
    free: dict[str, int],
    per_endpoint: int,
    limit: int,
    max_batch: int,
) -> list[Claimed]:
    if limit <= 0:
        return []
    rows = await session.execute(
        _CLAIM_NEW,
        {
            "full": sorted(e for e, n in free.items() if n <= 0),
            "rows": max_batch * per_endpoint,
            "max_batch": max_batch,
            "free_ids": list(free),
            "free_counts": [max(0, n) for n in free.values()],
            "per_endpoint": per_endpoint,
            "deliveries": limit,
            "ids": [new_id("msg_", now) for _ in range(limit)],
            "now": now,
            "lease_until": now + lease_ms,
        },
    )
    claimed = []
    for row in rows:
        claimed.append(
            Claimed(
                row.id, row.tenant_id, row.endpoint_id, row.url, _secrets(row, now),
                row.body.encode(), 0, now, row.failing_since is not None, row.slug, row.events,
            )
        )  # fmt: skip
    return claimed


async def _claim_new_portable(
    session: AsyncSession,
    now: int,
    lease_ms: int,
    free: dict[str, int],
    per_endpoint: int,
    limit: int,
    max_batch: int,
) -> list[Claimed]:
    """The same as ``_CLAIM_NEW``, a step at a time (SQLite: one node, one writer)."""
    E, V = WebhookEndpoint, WebhookEvent
    claimed: list[Claimed] = []
    full = sorted(e for e, n in free.items() if n <= 0)
    pending = (
        select(*_EVENT_COLUMNS, Tenant.slug, *_ENDPOINT_COLUMNS)
        .join(E, E.id == V.endpoint_id)
        .join(Tenant, Tenant.id == V.tenant_id)
        .where(E.enabled.is_(True))
        .order_by(V.id)
        .limit(max_batch * per_endpoint)
        .with_for_update(skip_locked=True, of=V)
    )
    if full:
        pending = pending.where(V.endpoint_id.not_in(full))
    # Consecutive events of one endpoint, cut into batches of max_batch, as many as it has
    # free slots; rows beyond that stay for a later round.
    batches: list[list[Any]] = []
    open_batch: dict[str, list[Any]] = {}
    for event in await session.execute(pending):
        endpoint = event.endpoint_id
        batch = open_batch.get(endpoint)
        if batch is None or len(batch) >= max_batch:
            if free.setdefault(endpoint, per_endpoint) <= 0 or len(batches) >= limit:
                continue
            free[endpoint] -= 1
            batch = open_batch[endpoint] = []
            batches.append(batch)
        batch.append(event)
    if not batches:
        return claimed
    used: list[int] = []
    deliveries: list[dict[str, Any]] = []
    for rows in batches:
        body = orjson.dumps(
            {
                "events": [
                    {
                        "id": r.event_id,
                        "type": r.type,
                        "tenant": r.slug,
                        "created_at": r.created_at,
                        "data": orjson.Fragment(r.data),
                    }
                    for r in rows
                ]
            }
        )
        first = rows[0]
        delivery_id = new_id("msg_", now)
        deliveries.append(
            {
                "id": delivery_id,
                "tenant_id": first.tenant_id,
                "endpoint_id": first.endpoint_id,
                "event_ids": [r.event_id for r in rows],
                "body": body.decode(),
                "status": "pending",
                "attempt": 0,
                "next_attempt_at": now,
                "lease_until": now + lease_ms,
                "created_at": now,
                "updated_at": now,
            }
        )
        used += [r.id for r in rows]
        claimed.append(
            Claimed(
                delivery_id, first.tenant_id, first.endpoint_id, first.url, _secrets(first, now),
                body, 0, now, first.failing_since is not None, first.slug, len(rows),
            )
        )  # fmt: skip
    await session.execute(insert(DELIVERIES), deliveries)
    await session.execute(delete(V).where(V.id.in_(used)))
    return claimed


async def backlog(session: AsyncSession, now: int) -> tuple[int, float]:
    """Events not delivered yet (in the outbox, or in pending deliveries) and the age in seconds
    of the oldest of them."""
    D, V = WebhookDelivery, WebhookEvent
    outbox = (await session.execute(select(func.count(), func.min(V.created_at)))).one()
    pending = (
        await session.execute(
            select(func.sum(func.json_array_length(D.event_ids)), func.min(D.created_at)).where(
                D.status == "pending"
            )
        )
    ).one()
    count = int(outbox[0] or 0) + int(pending[0] or 0)
    oldest = min((t for t in (outbox[1], pending[1]) if t is not None), default=now)
    return count, max(0.0, (now - oldest) / 1000)


async def record_attempt(
    session: AsyncSession,
    delivery: Claimed,
    *,
    now: int,
    status: str,
    http_status: int | None,
    latency_ms: int,
    error: str | None,
    next_attempt_at: int | None,
) -> None:
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery.id)
        .values(
            attempt=WebhookDelivery.attempt + 1,
            status=status,
            http_status=http_status,
            latency_ms=latency_ms,
            error=None if error is None else error[:500],
            next_attempt_at=next_attempt_at,
            lease_until=None,
            updated_at=now,
        )
    )


@dataclass(frozen=True, slots=True)
class Delivered:
    """A successful attempt not recorded yet."""

    id: str
    http_status: int
    latency_ms: int


async def record_delivered(session: AsyncSession, delivered: Sequence[Delivered], now: int) -> None:
    """Record successful attempts, one statement for all of them."""
    if not delivered:
        return
    await session.execute(
        update(DELIVERIES)
        .where(DELIVERIES.c.id == bindparam("delivery_id"))
        .values(
            attempt=DELIVERIES.c.attempt + 1,
            status="delivered",
            http_status=bindparam("status_code"),
            latency_ms=bindparam("latency"),
            error=None,
            next_attempt_at=None,
            lease_until=None,
            updated_at=now,
        ),
        [
            {"delivery_id": d.id, "status_code": d.http_status, "latency": d.latency_ms}
            for d in delivered
        ],
    )


async def endpoint_succeeded(session: AsyncSession, endpoint_id: str) -> None:
    await session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.failing_since.is_not(None))
        .values(failing_since=None)
    )


async def endpoint_failed(
    session: AsyncSession, endpoint_id: str, *, now: int, disable_after_ms: int
) -> bool:
    """Note a failure; disable the endpoint when it has failed for ``disable_after_ms`` without a
    success. Returns whether it was disabled now."""
    E = WebhookEndpoint
    await session.execute(
        update(E).where(E.id == endpoint_id, E.failing_since.is_(None)).values(failing_since=now)
    )
    result = await session.execute(
        update(E)
        .where(E.id == endpoint_id, E.enabled.is_(True), E.failing_since <= now - disable_after_ms)
        .values(enabled=False, disabled_reason="failing", updated_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def disable_endpoint(session: AsyncSession, endpoint_id: str, reason: str, now: int) -> None:
    await session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id)
        .values(enabled=False, disabled_reason=reason, updated_at=now)
    )


# -- the delivery log ---------------------------------------------------------------------------


async def list_deliveries(
    session: AsyncSession, tenant_id: int, endpoint_id: str, *, before: str | None, limit: int
) -> Sequence[WebhookDelivery]:
    """Newest first; ``before`` is the id the previous page ended at."""
    D = WebhookDelivery
    query = select(D).where(D.tenant_id == tenant_id, D.endpoint_id == endpoint_id)
    if before:
        query = query.where(D.id < before)
    return (await session.scalars(query.order_by(D.id.desc()).limit(limit))).all()


async def get_delivery(
    session: AsyncSession, tenant_id: int, endpoint_id: str, delivery_id: str
) -> WebhookDelivery | None:
    D = WebhookDelivery
    return await session.scalar(
        select(D).where(D.tenant_id == tenant_id, D.endpoint_id == endpoint_id, D.id == delivery_id)
    )


async def prune(
    session: AsyncSession, *, finished_before: int, stale_before: int, limit: int
) -> int:
    """Delete at most ``limit`` finished deliveries last touched before ``finished_before``, and
    outbox events older than ``stale_before`` (left by disabled endpoints)."""
    D, V = WebhookDelivery, WebhookEvent
    victims = (
        select(D.id)
        .where(D.status.in_(("delivered", "failed")), D.updated_at < finished_before)
        .limit(limit)
        .scalar_subquery()
    )
    deleted = await session.execute(delete(D).where(D.id.in_(victims)))
    stale = select(V.id).where(V.created_at < stale_before).limit(limit).scalar_subquery()
    await session.execute(delete(V).where(V.id.in_(stale)))
    return int(deleted.rowcount)  # type: ignore[attr-defined]
