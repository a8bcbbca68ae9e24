"""One exception tree for everything orgcast refuses or fails at.

Each class carries ``code``, the stable wire error code, and ``status``, its HTTP status. Services
raise these; the edges translate them: HTTP views into ``{"error": {code, message, details?}}`` with
``status``, Socket.IO handlers into ``{ok: false, error: {code, message}}`` acks, and the connect
handler into ``ConnectionRefusedError(code, {code, message})``.

    OrgcastError
    ├── BadRequest              bad_request          400
    │   ├── NotJoined           not_joined           400
    │   ├── UnknownEvent        unknown_event        400
    │   ├── RoomLimit           room_limit           400
    │   ├── NamespaceRequired   namespace_required   400
    │   ├── InvalidJson         invalid_json         400
    │   └── NotConfirmed        not_confirmed        400  (CLI: a delete without --yes)
    ├── Unauthorized            auth_required        401
    │   ├── AuthInvalid         auth_invalid         401
    │   └── AuthExpired         auth_expired         401
    ├── Forbidden               forbidden            403
    │   ├── RoomForbidden       room_forbidden       403
    │   ├── OriginForbidden     origin_forbidden     403
    │   └── TenantSuspended     tenant_suspended     403
    ├── NotFound                not_found            404
    │   ├── TenantNotFound      tenant_not_found     404
    │   ├── KeyNotFound         key_not_found        404
    │   ├── WebhookNotFound     webhook_not_found    404
    │   └── DeliveryNotFound    delivery_not_found   404
    ├── Conflict                conflict             409
    │   ├── TenantExists        tenant_exists        409
    │   └── WebhookLimit        webhook_limit        409
    ├── TooLarge                too_large            413
    ├── Invalid                 validation_failed    422
    │   └── TargetForbidden     target_forbidden     422
    ├── RateLimited             rate_limited         429
    │   ├── ConnectionLimit     connection_limit     429
    │   └── ConnectionRate      connection_rate      429
    ├── Unavailable             unavailable          503
    │   ├── DatabaseUnavailable unavailable          503  (the database did not answer)
    │   └── SchemaBehind        schema_not_at_head   503  (run orgcast db upgrade)
    ├── Internal                internal             500
    ├── SettingsError           invalid_settings     500  (a setting is missing or malformed)
    └── CommandError            failed               500  (a CLI failure: exit 1, no traceback)

``Invalid.from_validation`` is the one place a pydantic ``ValidationError`` becomes ``Invalid``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails


class OrgcastError(Exception):
    code = "internal"
    status = 500
    default_message = "internal error"

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        self.message = message or self.default_message
        self.details = details
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class BadRequest(OrgcastError):
    code = "bad_request"
    status = 400
    default_message = "bad request"


class NotJoined(BadRequest):
    code = "not_joined"
    default_message = "join the room first"


class UnknownEvent(BadRequest):
    code = "unknown_event"
    default_message = "unknown event"


class RoomLimit(BadRequest):
    code = "room_limit"
    default_message = "too many rooms joined on this connection"


class NamespaceRequired(BadRequest):
    code = "namespace_required"
    default_message = "connect to a tenant namespace, e.g. /acme"


class InvalidJson(BadRequest):
    code = "invalid_json"
    default_message = "the body is not valid JSON"


class NotConfirmed(BadRequest):
    code = "not_confirmed"
    default_message = "not confirmed"


class Unauthorized(OrgcastError):
    code = "auth_required"
    status = 401
    default_message = "authentication required"


class AuthInvalid(Unauthorized):
    code = "auth_invalid"
    default_message = "invalid token"


class AuthExpired(Unauthorized):
    code = "auth_expired"
    default_message = "the token has expired"


class Forbidden(OrgcastError):
    code = "forbidden"
    status = 403
    default_message = "forbidden"


class RoomForbidden(Forbidden):
    code = "room_forbidden"
    default_message = "the token does not allow this room"


class OriginForbidden(Forbidden):
    code = "origin_forbidden"
    default_message = "origin not allowed for this tenant"


class TenantSuspended(Forbidden):
    code = "tenant_suspended"
    default_message = "tenant is suspended"


class NotFound(OrgcastError):
    code = "not_found"
    status = 404
    default_message = "not found"


class TenantNotFound(NotFound):
    code = "tenant_not_found"
    default_message = "no such tenant"


class KeyNotFound(NotFound):
    code = "key_not_found"
    default_message = "no such active key"


class Conflict(OrgcastError):
    code = "conflict"
    status = 409
    default_message = "conflict"


class TenantExists(Conflict):
    code = "tenant_exists"
    default_message = "the tenant already exists"


class TooLarge(OrgcastError):
    code = "too_large"
    status = 413
    default_message = "too large"


class Invalid(OrgcastError):
    code = "validation_failed"
    status = 422
    default_message = "validation failed"

    @classmethod
    def from_validation(
        cls,
        exc: ValidationError,
        *,
        subject: str = "request",
        message: Callable[[ErrorDetails], str] = lambda error: error["msg"],
    ) -> Invalid:
        """One detail per offending field; the message names the first three.

        The HTTP API keeps pydantic's messages as they are (they are on the wire); the command
        line passes ``readable_message`` and its own ``subject``.
        """
        details = [
            {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": message(e)}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:3])
        return cls(f"invalid {subject}: {summary}", details=details)


def readable_message(error: ErrorDetails) -> str:
    """A pydantic error message for people: no "Value error, " prefix, "unknown key" for extras."""
    if error["type"] == "extra_forbidden":
        return "unknown key"
    return error["msg"].removeprefix("Value error, ")


class RateLimited(OrgcastError):
    code = "rate_limited"
    status = 429
    default_message = "rate limit exceeded"

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        if self.retry_after_ms is not None:
            body["retry_after_ms"] = self.retry_after_ms
        return body


class ConnectionLimit(RateLimited):
    code = "connection_limit"
    default_message = "the tenant's connection limit is reached"


class ConnectionRate(RateLimited):
    """Too many connects per second from one user of a tenant or from one client address."""

    code = "connection_rate"
    default_message = "too many connects per second; retry later"


class Unavailable(OrgcastError):
    code = "unavailable"
    status = 503
    default_message = "service unavailable, try again"


class DatabaseUnavailable(Unavailable):
    """The database did not answer (``services.db_boundary``); counted in
    ``orgcast_database_errors_total``. Same wire code as ``Unavailable``."""


class SchemaBehind(Unavailable):
    """The database is not at the Alembic head and may not be migrated implicitly."""

    code = "schema_not_at_head"
    default_message = "the database schema is behind this version: run orgcast db upgrade"


class Internal(OrgcastError):
    code = "internal"
    status = 500
    default_message = "internal error"


class SettingsError(OrgcastError):
    """A setting is missing, malformed or out of range; the message names it."""

    code = "invalid_settings"
    default_message = "invalid settings"


class CommandError(OrgcastError):
    """A failure to report to the user (exit 1), without a traceback."""

    code = "failed"
    default_message = "the command failed"


class WebhookNotFound(NotFound):
    """No such webhook endpoint (or one of another tenant)."""

    code = "webhook_not_found"
    default_message = "no such webhook endpoint"


class DeliveryNotFound(NotFound):
    code = "delivery_not_found"
    default_message = "no such delivery"


class WebhookLimit(Conflict):
    """A tenant already has ``webhooks.max_endpoints_per_tenant`` endpoints."""

    code = "webhook_limit"
    default_message = "the tenant has as many webhook endpoints as allowed"


class TargetForbidden(Invalid):
    """A webhook URL resolves to a loopback, private, link-local or metadata address."""

    code = "target_forbidden"
    default_message = "the webhook URL points at a private address"
