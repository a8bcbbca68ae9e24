"""Tenant administration: create, change, delete, keys, and the per-node directory cache.

Every change is announced on the control bus after its transaction commits, so the realtime layer
(on this node and, with Redis, on every node) drops cached records and disconnects sockets of a
tenant that was suspended or deleted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from ..errors import KeyNotFound, TenantExists, TenantNotFound, Unavailable
from ..settings import LimitsSettings
from ..store import tenants as store
from ..store.engine import DB_ERRORS, Sessions
from ..store.models import ApiKey, SigningKey
from ..store.models import Tenant as TenantRow
from .control import ControlBus

log = logging.getLogger(__name__)

SLUG_PATTERN = r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$"
RESERVED_SLUGS = frozenset(
    {"admin", "api", "socket.io", "static", "health", "healthz", "readyz", "metrics", "system"}
)
# Events of the contract and of Socket.IO itself; ephemeral event names may not shadow them.
RESERVED_EVENTS = frozenset(
    {
        "join", "leave", "message", "history", "presence",
        "connect", "connect_error", "disconnect", "disconnecting",
        "newListener", "removeListener", "error", "ping", "pong", "open", "close",
    }
)  # fmt: skip
EVENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$")


def now_ms() -> int:
    return int(time.time() * 1000)


class TenantLimits(BaseModel):
    """Per-tenant overrides; a missing field means the configured default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_connections: int | None = Field(None, ge=1, le=10_000_000)
    max_message_bytes: int | None = Field(None, ge=1, le=1_048_576)
    max_rooms_per_connection: int | None = Field(None, ge=1, le=100_000)
    messages_per_second: float | None = Field(None, gt=0, le=100_000)
    history_retention_days: int | None = Field(None, ge=1, le=36_500)


Origin = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^https?://\S+$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]


def _check_events(names: list[str]) -> list[str]:
    for name in names:
        if not EVENT_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid event name (letters, digits, _.:-)")
        if name in RESERVED_EVENTS:
            raise ValueError(f"{name!r} is reserved and cannot be an ephemeral event")
    return sorted(set(names))


class TenantFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limits: TenantLimits | None = None
    ephemeral_events: list[str] | None = Field(None, max_length=64)
    allowed_origins: list[Origin] | None = Field(None, max_length=100)

    _events = field_validator("ephemeral_events")(
        lambda names: None if names is None else _check_events(names)
    )


class TenantCreate(TenantFields):
    slug: str
    name: Name

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not re.match(SLUG_PATTERN, value):
            raise ValueError(
                "must be 3-40 characters of a-z, 0-9 and '-', start with a letter, "
                "and not end with '-'"
            )
        if value in RESERVED_SLUGS:
            raise ValueError(f"{value!r} is reserved")
        return value


class TenantPatch(TenantFields):
    name: Name | None = None
    status: Literal["active", "suspended"] | None = None


@dataclass(frozen=True)
class Tenant:
    """A tenant as the rest of the application sees it."""

    id: int
    slug: str
    name: str
    status: str
    limits: dict[str, Any]
    ephemeral_events: frozenset[str]
    allowed_origins: tuple[str, ...]
    created_at: int
    updated_at: int

    @classmethod
    def from_row(cls, row: TenantRow) -> Tenant:
        return cls(
            id=row.id,
            slug=row.slug,
            name=row.name,
            status=row.status,
            limits=dict(row.limits or {}),
            ephemeral_events=frozenset(row.ephemeral_events or ()),
            allowed_origins=tuple(row.allowed_origins or ()),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    @property
    def active(self) -> bool:
        return self.status == "active"

    def to_dict(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "name": self.name,
            "status": self.status,
            "limits": self.limits,
            "ephemeral_events": sorted(self.ephemeral_events),
            "allowed_origins": list(self.allowed_origins),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class Limits:
    """A tenant's effective limits: its overrides over the configured defaults."""

    max_connections: int
    max_message_bytes: int
    max_rooms_per_connection: int
    messages_per_second: float
    history_retention_days: int

    @classmethod
    def resolve(cls, defaults: LimitsSettings, overrides: dict[str, Any]) -> Limits:
        values = defaults.model_dump()
        values.update({k: v for k, v in overrides.items() if v is not None and k in values})
        return cls(**values)


@dataclass(frozen=True)
class TenantKeys:
    """What a connect needs: the tenant and its active signing secrets by kid."""

    tenant: Tenant
    limits: Limits
    secrets: dict[str, str] = field(default_factory=dict)


def _new_secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def _hash_key(key: str) -> str:
    # API keys carry 256 random bits: a fast hash is enough, and lets the lookup be an index hit.
    return hashlib.sha256(key.encode()).hexdigest()


def signing_key_dict(key: SigningKey, *, with_secret: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "kid": key.kid,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
    }
    if with_secret:
        data["secret"] = key.secret
    return data


def api_key_dict(key: ApiKey, plain: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": key.id,
        "prefix": key.prefix,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
    }
    if plain is not None:
        data["key"] = plain
    return data


class TenantService:
    """Tenant use cases; each method is one transaction."""

    def __init__(self, sessions: Sessions, defaults: LimitsSettings, control: ControlBus) -> None:
        self._sessions = sessions
        self._defaults = defaults
        self._control = control

    def limits_for(self, tenant: Tenant) -> Limits:
        return Limits.resolve(self._defaults, tenant.limits)

    async def create(self, spec: TenantCreate) -> tuple[Tenant, dict[str, Any], dict[str, Any]]:
        """Create a tenant with its first signing key and API key (both returned in plain)."""
        now = now_ms()
        async with self._sessions.begin() as session:
            if await store.get_tenant(session, spec.slug) is not None:
                raise TenantExists(f"tenant {spec.slug!r} already exists")
            row = TenantRow(
                slug=spec.slug,
                name=spec.name,
                status="active",
                limits=(spec.limits or TenantLimits()).model_dump(exclude_none=True),
                ephemeral_events=spec.ephemeral_events or [],
                allowed_origins=spec.allowed_origins or [],
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            try:
                await session.flush()
            except store.IntegrityError:
                raise TenantExists(f"tenant {spec.slug!r} already exists") from None
            key = self._new_signing_key(row.id, now)
            api_key, plain = self._new_api_key(row.id, now)
            session.add_all([key, api_key])
        tenant = Tenant.from_row(row)
        await self._control.tenant_changed(tenant.slug)
        return tenant, signing_key_dict(key, with_secret=True), api_key_dict(api_key, plain)

    async def get(self, slug: str) -> Tenant:
        async with self._sessions() as session:
            row = await store.get_tenant(session, slug)
        if row is None:
            raise TenantNotFound(f"tenant {slug!r} not found")
        return Tenant.from_row(row)

    async def list_page(
        self, *, status: str | None = None, cursor: int = 0, limit: int = 50
    ) -> tuple[list[Tenant], int | None]:
        """A page of tenants in creation order; the second value is the next cursor, if any."""
        async with self._sessions() as session:
            rows = await store.list_tenants(
                session, status=status, after_id=cursor, limit=limit + 1
            )
        tenants = [Tenant.from_row(row) for row in rows[:limit]]
        next_cursor = tenants[-1].id if len(rows) > limit else None
        return tenants, next_cursor

    async def count_by_status(self) -> dict[str, int]:
        async with self._sessions() as session:
            return await store.count_tenants(session)

    async def update(self, slug: str, patch: TenantPatch) -> Tenant:
        values: dict[str, Any] = patch.model_dump(exclude_unset=True)
        if "limits" in values:
            values["limits"] = (patch.limits or TenantLimits()).model_dump(exclude_none=True)
        for key in ("name", "status", "ephemeral_events", "allowed_origins"):
            if key in values and values[key] is None:
                values[key] = [] if key in ("ephemeral_events", "allowed_origins") else None
        values = {k: v for k, v in values.items() if v is not None}
        async with self._sessions.begin() as session:
            row = await self._require(session, slug)
            if values:
                values["updated_at"] = now_ms()
                await store.update_tenant(session, row.id, values)
                await session.refresh(row)
        tenant = Tenant.from_row(row)
        await self._control.tenant_changed(slug)
        return tenant

    async def delete(self, slug: str) -> None:
        async with self._sessions.begin() as session:
            row = await self._require(session, slug)
            await store.delete_tenant(session, row.id)
        await self._control.tenant_changed(slug)

    async def signing_keys(self, slug: str) -> list[dict[str, Any]]:
        async with self._sessions() as session:
            row = await self._require(session, slug)
            return [signing_key_dict(k) for k in await store.list_signing_keys(session, row.id)]

    async def add_signing_key(self, slug: str) -> dict[str, Any]:
        now = now_ms()
        async with self._sessions.begin() as session:
            row = await self._require(session, slug)
            key = self._new_signing_key(row.id, now)
            session.add(key)
        await self._control.tenant_changed(slug)
        return signing_key_dict(key, with_secret=True)

    async def revoke_signing_key(self, slug: str, kid: str) -> None:
        async with self._sessions.begin() as session:
            row = await self._require(session, slug)
            if not await store.revoke_signing_key(session, row.id, kid, now_ms()):
                raise KeyNotFound(f"no active signing key {kid!r}")
        await self._control.tenant_changed(slug)

    async def api_keys(self, slug: str) -> list[dict[str, Any]]:
        async with self._sessions() as session:
            row = await self._require(session, slug)
            return [api_key_dict(k) for k in await store.list_api_keys(session, row.id)]

    async def add_api_key(self, slug: str) -> dict[str, Any]:
        now = now_ms()
        async with self._sessions.begin() as session:
            row = await self._require(session, slug)
            key, plain = self._new_api_key(row.id, now)
            session.add(key)
        return api_key_dict(key, plain)

    async def revoke_api_key(self, slug: str, key_id: str) -> None:
        async with self._sessions.begin() as session:
            row = await self._require(session, slug)
            if not await store.revoke_api_key(session, row.id, key_id, now_ms()):
                raise KeyNotFound(f"no active API key {key_id!r}")

    async def tenant_for_api_key(self, key: str) -> str | None:
        """The slug of the tenant this API key belongs to, or None for an unknown/revoked key."""
        async with self._sessions() as session:
            found = await store.find_api_key(session, _hash_key(key))
        return None if found is None else found[1].slug

    async def changed_since(self, since_ms: int) -> list[tuple[str, int]]:
        async with self._sessions() as session:
            return list(await store.changed_since(session, since_ms))

    async def existing(self, slugs: set[str]) -> set[str]:
        async with self._sessions() as session:
            return await store.existing_slugs(session, slugs)

    async def load_keys(self, slug: str) -> TenantKeys | None:
        """The tenant and its active signing secrets, or None when there is no such tenant."""
        async with self._sessions() as session:
            row = await store.get_tenant(session, slug)
            if row is None:
                return None
            keys = await store.active_signing_keys(session, row.id)
        tenant = Tenant.from_row(row)
        return TenantKeys(tenant, self.limits_for(tenant), {k.kid: k.secret for k in keys})

    async def _require(self, session: Any, slug: str) -> TenantRow:
        row = await store.get_tenant(session, slug)
        if row is None:
            raise TenantNotFound(f"tenant {slug!r} not found")
        return row

    @staticmethod
    def _new_signing_key(tenant_id: int, now: int) -> SigningKey:
        kid = "k" + secrets.token_hex(6)
        return SigningKey(tenant_id=tenant_id, kid=kid, secret=_new_secret(), created_at=now)

    @staticmethod
    def _new_api_key(tenant_id: int, now: int) -> tuple[ApiKey, str]:
        key_id = "ak_" + secrets.token_hex(8)
        plain = "oc_" + _new_secret()
        row = ApiKey(
            id=key_id,
            tenant_id=tenant_id,
            key_hash=_hash_key(plain),
            prefix=plain[:10],
            created_at=now,
        )
        return row, plain


class TenantDirectory:
    """A per-node cache of ``TenantKeys`` by slug, dropped the moment a tenant changes."""

    def __init__(self, service: TenantService, control: ControlBus) -> None:
        self._service = service
        self._cache: dict[str, TenantKeys] = {}
        self._loading: dict[str, asyncio.Future[TenantKeys | None]] = {}
        self._generation = 0
        control.subscribe(self.invalidate)

    async def invalidate(self, slug: str) -> None:
        """Drop a cached tenant ("*": all of them); the next lookup reads the database."""
        self._generation += 1
        # A load already under way may predate the change: later lookups start a new one.
        if slug == "*":
            self._cache.clear()
            self._loading.clear()
        else:
            self._cache.pop(slug, None)
            self._loading.pop(slug, None)

    def cached_slugs(self) -> set[str]:
        return set(self._cache)

    def cached(self, slug: str) -> TenantKeys | None:
        return self._cache.get(slug)

    async def lookup(self, slug: str) -> TenantKeys | None:
        if slug in self._cache:
            return self._cache[slug]
        # One query per slug at a time: a connect storm on a cold cache waits for one load
        # instead of sending a thousand identical queries (and growing the pool to match).
        pending = self._loading.get(slug)
        if pending is None:
            pending = asyncio.ensure_future(self._load(slug))
            self._loading[slug] = pending
            pending.add_done_callback(lambda done: self._forget_load(slug, done))
        return await asyncio.shield(pending)

    def _forget_load(self, slug: str, done: asyncio.Future[TenantKeys | None]) -> None:
        if self._loading.get(slug) is done:
            del self._loading[slug]

    async def _load(self, slug: str) -> TenantKeys | None:
        generation = self._generation
        try:
            keys = await self._service.load_keys(slug)
        except DB_ERRORS as exc:
            raise Unavailable("database unreachable") from exc
        # Unknown slugs are not cached (a probe of random names must not grow memory), and a
        # record loaded while a change was announced is not trusted.
        if keys is not None and generation == self._generation:
            self._cache[slug] = keys
        return keys


class TenantWatcher:
    """Finds tenant changes made by any process, Redis or not, by reading the tenant table.

    The control bus announces a change at once when it is made through this node or (with Redis)
    any node. A change made elsewhere (the CLI against the database, a node without Redis, an
    operator's SQL) is found here within ``interval`` seconds: tenants whose ``updated_at``
    moved, and watched tenants (cached, or with live sockets) that no longer exist, are announced
    to this node's subscribers, which drop caches and disconnect suspended or deleted tenants.
    """

    OVERLAP_MS = 2000  # re-read recent changes: a transaction may commit after a later one

    def __init__(
        self,
        service: TenantService,
        control: ControlBus,
        watched: Callable[[], set[str]],
        interval: float,
    ) -> None:
        self._service = service
        self._control = control
        self._watched = watched
        self._interval = interval
        self._seen: dict[str, int] = {}
        self._since = now_ms()

    async def check(self) -> set[str]:
        """One pass; returns the slugs announced."""
        changed: set[str] = set()
        newest = self._since
        for slug, updated in await self._service.changed_since(self._since - self.OVERLAP_MS):
            newest = max(newest, updated)
            if self._seen.get(slug) != updated:
                self._seen[slug] = updated
                changed.add(slug)
        self._since = newest
        self._seen = {s: t for s, t in self._seen.items() if t >= newest - self.OVERLAP_MS}
        watched = self._watched()
        changed |= watched - await self._service.existing(watched)
        for slug in sorted(changed):
            await self._control.deliver_local(slug)
        return changed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except DB_ERRORS:
                log.warning("tenant watcher: database unavailable; retrying")
            except Exception:
                log.exception("tenant watcher failed; retrying")
