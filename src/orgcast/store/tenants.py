"""Queries for tenants, their signing keys and their API keys."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from .models import (
    ApiKey,
    Message,
    Room,
    SigningKey,
    Tenant,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

__all__ = [
    "ApiKey",
    "IntegrityError",
    "SigningKey",
    "Tenant",
    "active_signing_keys",
    "changed_since",
    "count_tenants",
    "delete_tenant",
    "existing_slugs",
    "find_api_key",
    "get_tenant",
    "list_api_keys",
    "list_signing_keys",
    "list_tenants",
    "revoke_api_key",
    "revoke_signing_key",
]


async def get_tenant(session: AsyncSession, slug: str) -> Tenant | None:
    return await session.scalar(select(Tenant).where(Tenant.slug == slug))


async def list_tenants(
    session: AsyncSession, *, status: str | None, after_id: int, limit: int
) -> Sequence[Tenant]:
    query = select(Tenant).where(Tenant.id > after_id).order_by(Tenant.id).limit(limit)
    if status is not None:
        query = query.where(Tenant.status == status)
    return (await session.scalars(query)).all()


async def changed_since(session: AsyncSession, since_ms: int) -> Sequence[tuple[str, int]]:
    """(slug, updated_at) of the tenants changed at or after ``since_ms``."""
    query = select(Tenant.slug, Tenant.updated_at).where(Tenant.updated_at >= since_ms)
    return [(row[0], row[1]) for row in await session.execute(query)]


async def existing_slugs(session: AsyncSession, slugs: Collection[str]) -> set[str]:
    if not slugs:
        return set()
    return set(await session.scalars(select(Tenant.slug).where(Tenant.slug.in_(list(slugs)))))


async def count_tenants(session: AsyncSession) -> dict[str, int]:
    """How many tenants there are, by status."""
    rows = await session.execute(select(Tenant.status, func.count()).group_by(Tenant.status))
    return {status: int(count) for status, count in rows.all()}


async def update_tenant(session: AsyncSession, tenant_id: int, values: dict[str, Any]) -> None:
    await session.execute(update(Tenant).where(Tenant.id == tenant_id).values(**values))


async def delete_tenant(session: AsyncSession, tenant_id: int) -> None:
    # Explicit, child-first: does not depend on the database enforcing ON DELETE CASCADE.
    for model in (
        WebhookEvent, WebhookDelivery, WebhookEndpoint, Message, Room, SigningKey, ApiKey,
    ):  # fmt: skip
        await session.execute(delete(model).where(model.tenant_id == tenant_id))
    await session.execute(delete(Tenant).where(Tenant.id == tenant_id))


async def list_signing_keys(session: AsyncSession, tenant_id: int) -> Sequence[SigningKey]:
    query = select(SigningKey).where(SigningKey.tenant_id == tenant_id).order_by(SigningKey.id)
    return (await session.scalars(query)).all()


async def active_signing_keys(session: AsyncSession, tenant_id: int) -> Sequence[SigningKey]:
    query = (
        select(SigningKey)
        .where(SigningKey.tenant_id == tenant_id, SigningKey.revoked_at.is_(None))
        .order_by(SigningKey.id)
    )
    return (await session.scalars(query)).all()


async def revoke_signing_key(session: AsyncSession, tenant_id: int, kid: str, now: int) -> bool:
    result = await session.execute(
        update(SigningKey)
        .where(
            SigningKey.tenant_id == tenant_id,
            SigningKey.kid == kid,
            SigningKey.revoked_at.is_(None),
        )
        .values(revoked_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def list_api_keys(session: AsyncSession, tenant_id: int) -> Sequence[ApiKey]:
    query = select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
    return (await session.scalars(query)).all()


async def find_api_key(session: AsyncSession, key_hash: str) -> tuple[ApiKey, Tenant] | None:
    row = (
        await session.execute(
            select(ApiKey, Tenant)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def revoke_api_key(session: AsyncSession, tenant_id: int, key_id: str, now: int) -> bool:
    result = await session.execute(
        update(ApiKey)
        .where(ApiKey.tenant_id == tenant_id, ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
