"""Webhooks: tenants' endpoints, the events they take, signatures, and the delivery log.

An endpoint subscribes to event types (``*`` = all). Events reach it through the outbox: each
event is a row written in the transaction of what it reports (``message.created`` in the
message's own write, see ``store.messages``; presence-like events when they are decided, see
``record``), and the delivery worker (``services.deliveries``) turns rows into signed batches.

Which tenants have an enabled endpoint subscribed to ``message.created`` is kept in memory
(``message_tenants``) with the endpoint ``generation`` it was read at; every endpoint change
bumps the generation in its own transaction. A message write stores events for the cached
tenants only, unless the generation it sees in the database differs from the cached one: then it
looks the subscriptions up itself. So a tenant without endpoints costs the message path one
lookup of a one-row table per batch, and an endpoint takes every message committed after it, on
every node, without waiting for the cache. The cache is reloaded when this node changes an
endpoint, when the control bus announces a change (other nodes, the CLI), and every
``database.watch_interval_seconds`` by the worker.

Signatures follow the Standard Webhooks specification: ``webhook-signature`` is ``v1,`` and the
base64 HMAC-SHA256 of ``{webhook-id}.{webhook-timestamp}.{body}`` keyed with the secret's bytes
(the base64 after ``whsec_``); while a rotated secret overlaps, both signatures are sent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from typing import Annotated, Any
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from ..errors import DeliveryNotFound, TargetForbidden, WebhookLimit, WebhookNotFound
from ..settings import WebhooksSettings
from ..store import webhooks as store
from ..store.engine import Sessions
from ..store.models import WebhookDelivery, WebhookEndpoint
from . import db_boundary
from .control import ControlBus

log = logging.getLogger(__name__)

MESSAGE_CREATED = store.MESSAGE_CREATED
EVENT_TYPES = (
    "message.created",
    "member.joined",
    "member.left",
    "user.online",
    "user.offline",
    "room.occupied",
    "room.vacated",
)


def now_ms() -> int:
    return int(time.time() * 1000)


# -- input ----------------------------------------------------------------------------------------


def _check_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError on a malformed port)
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if any(c.isspace() for c in value):
        raise ValueError("must not contain whitespace")
    return value


def _check_events(names: list[str]) -> list[str]:
    for name in names:
        if name != "*" and name not in EVENT_TYPES:
            raise ValueError(f"unknown event type {name!r}; known: *, {', '.join(EVENT_TYPES)}")
    return sorted(set(names), key=lambda n: (n != "*", n))


Url = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
Description = Annotated[str, StringConstraints(max_length=500)]


class EndpointFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    _url = field_validator("url", check_fields=False)(
        lambda value: None if value is None else _check_url(value)
    )
    _events = field_validator("events", check_fields=False)(
        lambda names: None if names is None else _check_events(names)
    )


class EndpointCreate(EndpointFields):
    """A new endpoint; the secret is generated and returned once."""

    url: Url = Field(description="http:// or https:// URL events are POSTed to.")
    events: list[str] = Field(
        min_length=1, max_length=16, description="Event types to send; * = all."
    )
    enabled: bool = True
    description: Description | None = None


class EndpointPatch(EndpointFields):
    url: Url | None = None
    events: list[str] | None = Field(None, min_length=1, max_length=16)
    enabled: bool | None = Field(None, description="Enabling clears disabled_reason.")
    description: Description | None = None


# -- signatures and targets --------------------------------------------------------------------


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secrets_: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,<base64>`` per secret, space-separated."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    signatures = []
    for secret in secrets_:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        digest = hmac.new(key, content, hashlib.sha256).digest()
        signatures.append("v1," + base64.b64encode(digest).decode())
    return " ".join(signatures)


def forbidden_address(address: str) -> bool:
    """Loopback, private, link-local (cloud metadata lives there), multicast, unspecified or
    reserved: nothing a tenant's public endpoint may resolve to."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_reserved
        or not ip.is_global
    )


def literal_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


async def check_target(url: str, allow_private: bool) -> None:
    """Refuse a URL whose host is or resolves to a forbidden address. A name that does not
    resolve now is accepted: the worker checks every connection again (DNS can change)."""
    if allow_private:
        return
    host = urlsplit(url).hostname or ""
    literal = literal_ip(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError):
            return
        addresses = [str(info[4][0]) for info in infos]
    refused = [a for a in addresses if forbidden_address(a)]
    if refused:
        where = f"{host} is" if literal is not None else f"{host} resolves to {refused[0]},"
        raise TargetForbidden(
            f"{where} a loopback, private, link-local or metadata address "
            "(webhooks.allow_private_targets is off)"
        )


# -- shapes ---------------------------------------------------------------------------------------


def endpoint_dict(row: WebhookEndpoint, *, secret: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": row.id,
        "url": row.url,
        "events": list(row.events),
        "enabled": row.enabled,
        "description": row.description,
        "disabled_reason": row.disabled_reason,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }
    if secret:
        data["secret"] = row.secret
    return data


def delivery_dict(row: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": row.id,
        "event_ids": list(row.event_ids),
        "attempt": row.attempt,
        "status": row.status,
        "http_status": row.http_status,
        "latency_ms": row.latency_ms,
        "error": row.error,
        "next_attempt_at": row.next_attempt_at if row.status == "pending" else None,
        "created_at": row.created_at,
    }


# -- the service ----------------------------------------------------------------------------------


class WebhookService:
    """Endpoint administration, the delivery log, and what the message path asks of webhooks."""

    def __init__(self, sessions: Sessions, settings: WebhooksSettings, control: ControlBus) -> None:
        self.sessions = sessions
        self.settings = settings
        self._control = control
        self.message_tenants: frozenset[int] = frozenset()
        self.generation = -1  # none read yet: message writes look subscriptions up
        self.event_tenants: frozenset[int] = frozenset()  # any enabled endpoint
        self._types: dict[int, frozenset[str]] = {}
        self._wake: list[Callable[[bool], None]] = []
        self._refreshed: list[Callable[[], None]] = []
        control.subscribe(self._on_change)

    def wants(self, tenant_id: int, types: Iterable[str]) -> bool:
        """Whether an enabled endpoint of the tenant takes one of these types (as cached)."""
        subscribed = self._types.get(tenant_id, frozenset())
        return "*" in subscribed or any(t in subscribed for t in types)

    # The worker registers here to hear of new outbox rows written by this node, and of a
    # delivery made due at once (``due``: a redeliver).
    def on_written(self, callback: Callable[[bool], None]) -> None:
        self._wake.append(callback)

    # Told after every refresh of the cached subscriptions (presence webhooks adopt the sockets
    # of a tenant that has just subscribed to user.*).
    def on_refreshed(self, callback: Callable[[], None]) -> None:
        self._refreshed.append(callback)

    def written(self, *, due: bool = False) -> None:
        for callback in self._wake:
            callback(due)

    async def refresh(self) -> None:
        async with self.sessions() as session:
            generation = await store.generation(session)
            rows = await store.subscriptions(session)
        self.generation = generation
        self.event_tenants = frozenset(t for t, _ in rows)
        types: dict[int, set[str]] = {}
        for tenant_id, events in rows:
            types.setdefault(tenant_id, set()).update(events)
        self._types = {t: frozenset(names) for t, names in types.items()}
        self.message_tenants = frozenset(
            t for t, events in rows if store.subscribes(events, MESSAGE_CREATED)
        )
        for callback in self._refreshed:
            callback()

    async def _on_change(self, slug: str) -> None:
        try:
            await self.refresh()
        except Exception:  # the worker's periodic refresh catches up
            log.warning("webhooks: could not reload the endpoint set after a change of %s", slug)

    async def _changed(self, slug: str) -> None:
        await self.refresh()
        await self._control.tenant_changed(slug)

    # -- endpoints ------------------------------------------------------------------------------

    @db_boundary()
    async def create(self, tenant_id: int, slug: str, spec: EndpointCreate) -> dict[str, Any]:
        await check_target(spec.url, self.settings.allow_private_targets)
        now = now_ms()
        limit = self.settings.max_endpoints_per_tenant
        async with self.sessions.begin() as session:
            if await store.count_endpoints(session, tenant_id) >= limit:
                raise WebhookLimit(f"a tenant may have at most {limit} webhook endpoints")
            row = WebhookEndpoint(
                id=store.new_id("ep_", now)[:32],
                tenant_id=tenant_id,
                url=spec.url,
                events=spec.events,
                enabled=spec.enabled,
                description=spec.description,
                secret=new_secret(),
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            await store.bump_generation(session)
        await self._changed(slug)
        return endpoint_dict(row, secret=True)

    @db_boundary()
    async def list_endpoints(self, tenant_id: int) -> list[dict[str, Any]]:
        async with self.sessions() as session:
            return [endpoint_dict(r) for r in await store.list_endpoints(session, tenant_id)]

    @db_boundary()
    async def get_endpoint(self, tenant_id: int, endpoint_id: str) -> dict[str, Any]:
        async with self.sessions() as session:
            return endpoint_dict(await self._require(session, tenant_id, endpoint_id))

    @db_boundary()
    async def update(
        self, tenant_id: int, slug: str, endpoint_id: str, patch: EndpointPatch
    ) -> dict[str, Any]:
        values = {k: v for k, v in patch.model_dump(exclude_unset=True).items()}
        for key in ("url", "events", "enabled"):
            if key in values and values[key] is None:
                del values[key]
        if "url" in values:
            await check_target(values["url"], self.settings.allow_private_targets)
        async with self.sessions.begin() as session:
            row = await self._require(session, tenant_id, endpoint_id, lock=True)
            for key, value in values.items():
                setattr(row, key, value)
            if values.get("enabled"):
                row.disabled_reason = None
                row.failing_since = None
            row.updated_at = now_ms()
            await store.bump_generation(session)
        await self._changed(slug)
        return endpoint_dict(row)

    @db_boundary()
    async def delete(self, tenant_id: int, slug: str, endpoint_id: str) -> None:
        async with self.sessions.begin() as session:
            if not await store.delete_endpoint(session, tenant_id, endpoint_id):
                raise WebhookNotFound(f"no webhook endpoint {endpoint_id!r}")
        await self._changed(slug)

    @db_boundary()
    async def rotate_secret(self, tenant_id: int, endpoint_id: str) -> dict[str, Any]:
        """A new secret; the old one keeps signing for ``rotation_overlap_hours``."""
        now = now_ms()
        async with self.sessions.begin() as session:
            row = await self._require(session, tenant_id, endpoint_id, lock=True)
            row.previous_secret = row.secret
            row.previous_secret_until = now + int(self.settings.rotation_overlap_hours * 3600_000)
            row.secret = new_secret()
            row.updated_at = now
        return {
            "id": row.id,
            "secret": row.secret,
            "previous_secret_expires_at": row.previous_secret_until,
        }

    # -- the delivery log -----------------------------------------------------------------------

    @db_boundary()
    async def deliveries(
        self, tenant_id: int, endpoint_id: str, *, cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        async with self.sessions() as session:
            await self._require(session, tenant_id, endpoint_id)
            rows = await store.list_deliveries(
                session, tenant_id, endpoint_id, before=cursor, limit=limit + 1
            )
        page = [delivery_dict(r) for r in rows[:limit]]
        return page, (page[-1]["id"] if len(rows) > limit else None)

    @db_boundary()
    async def redeliver(self, tenant_id: int, endpoint_id: str, delivery_id: str) -> dict[str, Any]:
        """Send a delivery's events again, as a new delivery (its own id and attempts)."""
        now = now_ms()
        async with self.sessions.begin() as session:
            await self._require(session, tenant_id, endpoint_id)
            original = await store.get_delivery(session, tenant_id, endpoint_id, delivery_id)
            if original is None:
                raise DeliveryNotFound(f"no delivery {delivery_id!r}")
            copy = WebhookDelivery(
                id=store.new_id("msg_", now),
                tenant_id=tenant_id,
                endpoint_id=endpoint_id,
                event_ids=list(original.event_ids),
                body=original.body,
                status="pending",
                attempt=0,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
            session.add(copy)
        self.written(due=True)
        return delivery_dict(copy)

    # -- events decided outside the message path ------------------------------------------------

    async def record(
        self, tenant_id: int, event_type: str, data: dict[str, Any], event_id: str | None = None
    ) -> int:
        """Write one event to the outbox of every endpoint of the tenant that takes it; returns
        how many rows were written. A retry passes the ``event_id`` of its first try, so a write
        that did commit before its connection failed is delivered twice under one id."""
        if tenant_id not in self.event_tenants:
            return 0
        now = now_ms()
        event_id = event_id or store.new_id("evt_", now)
        encoded = orjson.dumps(data).decode()
        async with self.sessions.begin() as session:
            targets = await store.subscribed(session, [tenant_id], event_type)
            await store.insert_events(
                session,
                [
                    store.NewEvent(tenant_id, endpoint, event_id, event_type, now, encoded)
                    for _, endpoint in targets
                ],
            )
        if targets:
            self.written()
        return len(targets)

    @staticmethod
    async def _require(
        session: Any, tenant_id: int, endpoint_id: str, *, lock: bool = False
    ) -> WebhookEndpoint:
        row = await store.get_endpoint(session, tenant_id, endpoint_id, lock=lock)
        if row is None:
            raise WebhookNotFound(f"no webhook endpoint {endpoint_id!r}")
        return row
