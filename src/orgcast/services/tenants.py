"""Tenant administration: create, change, delete, and the tenant's keys; one transaction each.

Every change is announced on the control bus after its transaction commits, so the realtime layer
(on this node and, with Redis, on every node) drops cached records and disconnects sockets of a
tenant that was suspended or deleted. The models are in ``tenant_models.py``, the per-node cache
and the change watcher in ``directory.py``; their names are re-exported here.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any

from ..errors import KeyNotFound, TenantExists, TenantNotFound
from ..names import SLUG_PATTERN
from ..settings import LimitsSettings
from ..store import tenants as store
from ..store.engine import Sessions
from ..store.models import ApiKey, SigningKey
from ..store.models import Tenant as TenantRow
from . import db_boundary
from .control import ControlBus
from .directory import TenantDirectory, TenantWatcher
from .tenant_models import (
    RESERVED_SLUGS,
    Limits,
    Tenant,
    TenantCreate,
    TenantKeys,
    TenantLimits,
    TenantPatch,
    now_ms,
)

__all__ = [
    "RESERVED_SLUGS", "SLUG_PATTERN", "Limits", "Tenant", "TenantCreate", "TenantDirectory",
    "TenantKeys", "TenantLimits", "TenantPatch", "TenantService", "TenantWatcher", "now_ms",
]  # fmt: skip


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
    """Tenant use cases; each method is one transaction, and leaves a database failure as
    ``Unavailable`` (``db_boundary``)."""

    def __init__(self, sessions: Sessions, defaults: LimitsSettings, control: ControlBus) -> None:
        self._sessions = sessions
        self._defaults = defaults
        self._control = control

    def limits_for(self, tenant: Tenant) -> Limits:
        return Limits.resolve(self._defaults, tenant.limits)

    @db_boundary()
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

    @db_boundary()
    async def get(self, slug: str) -> Tenant:
        async with self._sessions() as session:
            row = await store.get_tenant(session, slug)
        if row is None:
            raise TenantNotFound(f"tenant {slug!r} not found")
        return Tenant.from_row(row)

    @db_boundary()
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

    @db_boundary()
    async def count_by_status(self) -> dict[str, int]:
        async with self._sessions() as session:
            return await store.count_tenants(session)

    @db_boundary()
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

    @db_boundary()
    async def delete(self, slug: str) -> None:
        async with self._sessions.begin() as session:
            row = await self._require(session, slug)
            await store.delete_tenant(session, row.id)
        await self._control.tenant_changed(slug)

    @db_boundary()
    async def signing_keys(self, slug: str) -> list[dict[str, Any]]:
        async with self._sessions() as session:
            row = await self._require(session, slug)
            return [signing_key_dict(k) for k in await store.list_signing_keys(session, row.id)]

    @db_boundary()
    async def add_signing_key(self, slug: str) -> dict[str, Any]:
        now = now_ms()
        async with self._sessions.begin() as session:
            row = await self._require(session, slug)
            key = self._new_signing_key(row.id, now)
            session.add(key)
        await self._control.tenant_changed(slug)
        return signing_key_dict(key, with_secret=True)

    @db_boundary()
    async def revoke_signing_key(self, slug: str, kid: str) -> None:
        async with self._sessions.begin() as session:
            row = await self._require(session, slug)
            now = now_ms()
            if not await store.revoke_signing_key(session, row.id, kid, now):
                raise KeyNotFound(f"no active signing key {kid!r}")
            # The tenant changes with its keys: a node that misses the announcement finds the
            # revocation through the tenant watcher and closes the sockets the key signed.
            await store.update_tenant(session, row.id, {"updated_at": now})
        await self._control.tenant_changed(slug)

    @db_boundary()
    async def api_keys(self, slug: str) -> list[dict[str, Any]]:
        async with self._sessions() as session:
            row = await self._require(session, slug)
            return [api_key_dict(k) for k in await store.list_api_keys(session, row.id)]

    @db_boundary()
    async def add_api_key(self, slug: str) -> dict[str, Any]:
        now = now_ms()
        async with self._sessions.begin() as session:
            row = await self._require(session, slug)
            key, plain = self._new_api_key(row.id, now)
            session.add(key)
        return api_key_dict(key, plain)

    @db_boundary()
    async def revoke_api_key(self, slug: str, key_id: str) -> None:
        async with self._sessions.begin() as session:
            row = await self._require(session, slug)
            if not await store.revoke_api_key(session, row.id, key_id, now_ms()):
                raise KeyNotFound(f"no active API key {key_id!r}")

    @db_boundary()
    async def tenant_for_api_key(self, key: str) -> str | None:
        """The slug of the tenant this API key belongs to, or None for an unknown/revoked key."""
        async with self._sessions() as session:
            found = await store.find_api_key(session, _hash_key(key))
        return None if found is None else found[1].slug

    @db_boundary()
    async def changed_since(self, since_ms: int) -> list[tuple[str, int]]:
        async with self._sessions() as session:
            return list(await store.changed_since(session, since_ms))

    @db_boundary()
    async def existing(self, slugs: set[str]) -> set[str]:
        async with self._sessions() as session:
            return await store.existing_slugs(session, slugs)

    @db_boundary("database unreachable")
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
