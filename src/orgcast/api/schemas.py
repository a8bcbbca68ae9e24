"""Request and response bodies of the HTTP API.

Request models validate what comes in. Response models are the documented shape of what goes out:
the OpenAPI document is generated from them, and the test suite validates every real response
against them (``extra="forbid"``), so an undocumented field fails a test instead of drifting.
Timestamps are milliseconds since the Unix epoch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..names import ROOM_PATTERN, SLUG_PATTERN
from ..services.tenant_models import RESERVED_SLUGS, TenantCreate, TenantLimits
from ..services.webhooks import EVENT_TYPES, EndpointCreate


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests -----------------------------------------------------------------------------------


class CreateTenantRequest(TenantCreate):
    """A new tenant. Omitted limits take the configured defaults."""

    # The slug rule is spelled out for the document only; validation stays the parent's, whose
    # messages say which rule failed.
    slug: str = Field(
        description="Namespace name; not one of the reserved names.",
        json_schema_extra={"pattern": SLUG_PATTERN, "not": {"enum": [*sorted(RESERVED_SLUGS)]}},
    )


class TokenRequest(Body):
    sub: str = Field(min_length=1, max_length=128, description="User id.")
    name: str | None = Field(None, max_length=200, description="Display name.")
    rooms: list[str] | None = Field(
        None, max_length=100, description="Glob patterns of rooms the user may join; absent = any."
    )
    ttl_seconds: int = Field(3600, ge=1, le=30 * 24 * 3600)


class Sender(Body):
    id: str = Field(min_length=1, max_length=128)
    name: str | None = Field(None, max_length=200)


class PublishRequest(Body):
    body: Any = Field(description="Any JSON value, up to the tenant's max_message_bytes encoded.")
    sender: Sender | None = Field(None, description='Absent: {"id": "system", "name": "system"}.')
    client_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Idempotency key: the same sender and client_id in a room is stored once.",
    )


class ListQuery(Body):
    limit: int = Field(50, ge=1, le=200)
    cursor: int = Field(0, ge=0, description="next_cursor of the previous page.")
    status: Literal["active", "suspended"] | None = None


class HistoryQuery(Body):
    before_seq: int | None = Field(None, ge=0, description="Only messages with a lower seq.")
    after_seq: int | None = Field(
        None, ge=0, description="Only messages with a higher seq; the page starts right after it."
    )
    limit: int | None = Field(None, ge=1, description="At most messages.history_page.")


class RoomsQuery(Body):
    limit: int = Field(100, ge=1, le=1000)
    cursor: str = Field("", max_length=128, description="next_cursor of the previous page.")


# -- responses ----------------------------------------------------------------------------------


class FieldError(Body):
    field: str
    message: str


class ErrorDetail(Body):
    code: str = Field(description="Stable machine-readable code, e.g. tenant_not_found.")
    message: str = Field(description="Human-readable explanation.")
    details: list[FieldError] | None = Field(None, description="Per-field validation errors.")
    retry_after_ms: int | None = Field(None, description="With rate_limited: when to retry.")


class ErrorResponse(Body):
    error: ErrorDetail


class Status(Body):
    status: str


class Tenant(Body):
    slug: str
    name: str
    status: Literal["active", "suspended"]
    limits: TenantLimits = Field(description="The tenant's overrides of the configured defaults.")
    ephemeral_events: list[str]
    allowed_origins: list[str]
    created_at: int
    updated_at: int


class EffectiveLimits(Body):
    max_connections: int
    max_message_bytes: int
    max_rooms_per_connection: int
    messages_per_second: float
    history_retention_days: int
    connection_rate: float
    api_requests_per_second: float


class SigningKey(Body):
    kid: str
    created_at: int
    revoked_at: int | None


class NewSigningKey(SigningKey):
    secret: str = Field(description="The HS256 secret; shown only in this response.")


class ApiKey(Body):
    id: str
    prefix: str = Field(description="The first characters of the key, to recognise it.")
    created_at: int
    revoked_at: int | None


class NewApiKey(ApiKey):
    key: str = Field(description="The API key; shown only in this response.")


class CreatedTenant(Tenant):
    signing_key: NewSigningKey
    api_key: NewApiKey


class TenantDetail(Tenant):
    effective_limits: EffectiveLimits
    connections: int = Field(description="Live sockets (cluster-wide when Redis is configured).")
    rooms: int = Field(description="Rooms with live members.")
    signing_keys: list[SigningKey]
    api_keys: list[ApiKey]


class TenantPage(Body):
    tenants: list[Tenant]
    next_cursor: str | None = Field(
        description="Pass as cursor for the next page; null at the end."
    )


class Token(Body):
    token: str
    kid: str
    expires_at: int = Field(description="Seconds since the Unix epoch (the JWT's exp).")


class RoomInfo(Body):
    room: str
    last_seq: int
    message_count: int = Field(description="Messages still stored (retention deletes old ones).")
    members: int = Field(description="Distinct users in the room now.")


class RoomPage(Body):
    rooms: list[RoomInfo]
    next_cursor: str | None


class Member(Body):
    id: str
    name: str


class Message(Body):
    id: str
    room: str
    seq: int
    ts: int
    sender: Member
    body: Any
    client_id: str | None = None


class History(Body):
    room: str
    messages: list[Message] = Field(description="Oldest first.")
    has_more: bool


class Published(Body):
    id: str
    room: str
    seq: int
    ts: int
    duplicate: bool = Field(description="True when client_id matched an already stored message.")


# -- webhooks -----------------------------------------------------------------------------------


class CreateWebhookRequest(EndpointCreate):
    """A new endpoint; its signing secret is generated and shown once, in the answer."""

    events: list[str] = Field(
        min_length=1,
        max_length=16,
        description="Event types to send; * = all.",
        json_schema_extra={"items": {"enum": ["*", *EVENT_TYPES]}},
    )


class Webhook(Body):
    id: str
    url: str
    events: list[str]
    enabled: bool
    description: str | None
    disabled_reason: str | None = Field(
        description="Why the server disabled it: gone (HTTP 410) or failing; null otherwise."
    )
    created_at: int
    updated_at: int


class NewWebhook(Webhook):
    secret: str = Field(description="whsec_...: the signing secret; shown only in this response.")


class WebhookList(Body):
    webhooks: list[Webhook]


class RotatedSecret(Body):
    id: str
    secret: str = Field(description="The new whsec_ secret; shown only in this response.")
    previous_secret_expires_at: int = Field(
        description="Until then deliveries carry both signatures, space-separated."
    )


class Delivery(Body):
    id: str = Field(description="Sent as the webhook-id header.")
    event_ids: list[str] = Field(description="The events of the batch, oldest first.")
    attempt: int = Field(description="Attempts made so far.")
    status: Literal["pending", "delivered", "failed"]
    http_status: int | None = Field(description="Of the last attempt; null if none answered.")
    latency_ms: int | None
    error: str | None = Field(description="Why the last attempt failed.")
    next_attempt_at: int | None
    created_at: int


class DeliveryPage(Body):
    deliveries: list[Delivery] = Field(description="Newest first.")
    next_cursor: str | None


class DeliveriesQuery(Body):
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, max_length=64, description="next_cursor of the previous page.")


# -- access and server control ---------------------------------------------------------------


class DisconnectRequest(Body):
    reason: str | None = Field(
        None, max_length=200, description="Sent to the user's sockets as the closing message."
    )


class Disconnected(Body):
    disconnected: int = Field(description="Sockets closed, on every node that answered.")


class RoomPresence(Body):
    room: str
    members: list[Member] = Field(description="Each user once, cluster-wide; as `presence`.")


MAX_BATCH = 100


class BatchItem(Body):
    """One message of a batch; validated on its own, so a bad item fails alone."""

    room: str = Field(pattern=ROOM_PATTERN)
    body: Any = Field(description="Any JSON value, up to the tenant's max_message_bytes encoded.")
    sender: Sender | None = Field(None, description='Absent: {"id": "system", "name": "system"}.')
    client_id: str | None = Field(None, min_length=1, max_length=128)


class BatchPublishRequest(Body):
    """The documented shape. The view checks the list itself and each item on its own, so that a
    bad item gets its own error instead of failing the request."""

    messages: list[BatchItem] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        description=f"1-{MAX_BATCH} messages, stored in one transaction; more is refused (413).",
    )


class BatchItemError(Body):
    code: str
    message: str


class BatchResult(Body):
    ok: bool
    id: str | None = None
    room: str | None = None
    seq: int | None = None
    ts: int | None = None
    error: BatchItemError | None = None


class BatchPublished(Body):
    results: list[BatchResult] = Field(description="One per item, in input order.")
