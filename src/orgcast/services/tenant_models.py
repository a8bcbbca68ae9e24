"""What a tenant is: its validated inputs (create, patch, limit overrides), the record the rest of
the application reads, its effective limits, and ``TenantKeys`` (what a connect needs)."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from ..names import is_slug
from ..settings import LimitsSettings
from ..store.models import Tenant as TenantRow

log = logging.getLogger(__name__)

RESERVED_SLUGS = frozenset(
    {"admin", "api", "socket.io", "static", "health", "healthz", "readyz", "metrics", "system"}
)
# Events of the contract and of Socket.IO itself; ephemeral event names may not shadow them.
RESERVED_EVENTS = frozenset(
    {
        "join", "leave", "message", "history", "presence",
        "refresh", "token_expiring", "closing",
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
    connection_rate: float | None = Field(None, gt=0, le=100_000)
    history_retention_days: int | None = Field(None, ge=1, le=36_500)
    api_requests_per_second: float | None = Field(None, gt=0, le=1_000_000)


Origin = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^https?://\S+$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]


def _check_events(names: list[str]) -> list[str]:
    for name in names:
        if not EVENT_NAME.fullmatch(name):
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
        if not is_slug(value):
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
    connection_rate: float
    api_requests_per_second: float

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
