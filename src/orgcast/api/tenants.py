"""Tenant administration and the tenant backend API (``/api/v1/tenants...``).

Who may call what: every route needs ``Authorization: Bearer <token>``. The admin token opens
everything; a tenant API key opens only the routes marked for tenants, and only for its own slug.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import BadRequest, Forbidden, Invalid, NotFound, Unauthorized
from ..realtime.payloads import ROOM_RE
from ..services.admin import same_secret
from ..services.auth import mint_token
from ..services.messages import NewMessage, encode_body, wire
from ..services.tenants import TenantCreate, TenantPatch
from ..state import REALTIME, SERVICES, Services

PREFIX = "/api/v1/tenants"


# -- request bodies -----------------------------------------------------------------------------


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sub: str = Field(min_length=1, max_length=128)
    name: str | None = Field(None, max_length=200)
    rooms: list[str] | None = Field(None, max_length=100)
    ttl_seconds: int = Field(3600, ge=1, le=30 * 24 * 3600)


class Sender(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    name: str | None = Field(None, max_length=200)


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    body: Any
    sender: Sender | None = None
    client_id: str | None = Field(None, min_length=1, max_length=128)


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(50, ge=1, le=200)
    cursor: int = Field(0, ge=0)
    status: Literal["active", "suspended"] | None = None


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    before_seq: int | None = Field(None, ge=0)
    after_seq: int | None = Field(None, ge=0)
    limit: int | None = Field(None, ge=1)


class RoomsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(100, ge=1, le=1000)
    cursor: str = ""


def _validate(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:3])
        raise Invalid(f"invalid request: {summary}", details=details) from None


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    if not request.can_read_body:
        raise BadRequest("a JSON body is required", code="invalid_json")
    try:
        data = await request.json()
    except ValueError:
        raise BadRequest("the body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    return _validate(model, data)


def _query(request: web.Request, model: type[BaseModel]) -> Any:
    return _validate(model, dict(request.query))


# -- authentication -----------------------------------------------------------------------------


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("send Authorization: Bearer <token>")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'", code="auth_invalid")
    return token.strip()


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def require_admin(request: web.Request) -> None:
    services = _services(request)
    token = _bearer(request)
    if same_secret(token, services.admin_token):
        return
    if await services.tenants.tenant_for_api_key(token) is not None:
        raise Forbidden("this route needs the admin token")
    raise Unauthorized("invalid token", code="auth_invalid")


async def require_tenant(request: web.Request, slug: str) -> None:
    """The admin token, or an API key of this very tenant."""
    services = _services(request)
    token = _bearer(request)
    if same_secret(token, services.admin_token):
        return
    owner = await services.tenants.tenant_for_api_key(token)
    if owner is None:
        raise Unauthorized("invalid token", code="auth_invalid")
    if not same_secret(owner, slug):
        raise Forbidden("this API key belongs to another tenant")


# -- tenants ------------------------------------------------------------------------------------


async def create_tenant(request: web.Request) -> web.Response:
    await require_admin(request)
    spec = await _body(request, TenantCreate)
    tenant, signing_key, api_key = await _services(request).tenants.create(spec)
    body = {**tenant.to_dict(), "signing_key": signing_key, "api_key": api_key}
    return web.json_response(body, status=201, headers={"Location": f"{PREFIX}/{tenant.slug}"})


async def list_tenants(request: web.Request) -> web.Response:
    await require_admin(request)
    query = _query(request, ListQuery)
    tenants, next_cursor = await _services(request).tenants.list(
        status=query.status, cursor=query.cursor, limit=query.limit
    )
    return web.json_response(
        {
            "tenants": [t.to_dict() for t in tenants],
            "next_cursor": None if next_cursor is None else str(next_cursor),
        }
    )


async def get_tenant(request: web.Request) -> web.Response:
    await require_admin(request)
    slug = request.match_info["slug"]
    services = _services(request)
    tenant = await services.tenants.get(slug)
    body = tenant.to_dict()
    body["effective_limits"] = services.tenants.limits_for(tenant).__dict__
    body.update(await request.app[REALTIME].live_counts(slug))
    body["signing_keys"] = await services.tenants.signing_keys(slug)
    body["api_keys"] = await services.tenants.api_keys(slug)
    return web.json_response(body)


async def patch_tenant(request: web.Request) -> web.Response:
    await require_admin(request)
    patch = await _body(request, TenantPatch)
    tenant = await _services(request).tenants.update(request.match_info["slug"], patch)
    return web.json_response(tenant.to_dict())


async def delete_tenant(request: web.Request) -> web.Response:
    await require_admin(request)
    await _services(request).tenants.delete(request.match_info["slug"])
    return web.Response(status=204)


# -- keys ---------------------------------------------------------------------------------------


async def add_signing_key(request: web.Request) -> web.Response:
    await require_admin(request)
    key = await _services(request).tenants.add_signing_key(request.match_info["slug"])
    return web.json_response(key, status=201)


async def revoke_signing_key(request: web.Request) -> web.Response:
    await require_admin(request)
    await _services(request).tenants.revoke_signing_key(
        request.match_info["slug"], request.match_info["kid"]
    )
    return web.Response(status=204)


async def add_api_key(request: web.Request) -> web.Response:
    await require_admin(request)
    key = await _services(request).tenants.add_api_key(request.match_info["slug"])
    return web.json_response(key, status=201)


async def revoke_api_key(request: web.Request) -> web.Response:
    await require_admin(request)
    await _services(request).tenants.revoke_api_key(
        request.match_info["slug"], request.match_info["key_id"]
    )
    return web.Response(status=204)


async def mint(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    await require_tenant(request, slug)
    spec = await _body(request, TokenRequest)
    keys = await _services(request).directory.lookup(slug)
    if keys is None:
        raise NotFound(f"tenant {slug!r} not found", code="tenant_not_found")
    return web.json_response(
        mint_token(
            keys, sub=spec.sub, name=spec.name, rooms=spec.rooms, ttl_seconds=spec.ttl_seconds
        )
    )


# -- rooms and messages (tenant backend) ----------------------------------------------------------


def _room(request: web.Request) -> str:
    room = request.match_info["room"]
    if not ROOM_RE.match(room):
        raise BadRequest("room must be 1-128 characters of A-Z a-z 0-9 _ . : @ -")
    return room


async def list_rooms(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    await require_tenant(request, slug)
    query = _query(request, RoomsQuery)
    services = _services(request)
    tenant = await services.tenants.get(slug)
    rooms = await services.messages.rooms(tenant.id, limit=query.limit, after=query.cursor)
    live = await request.app[REALTIME].room_members(slug)
    for entry in rooms:
        entry["members"] = live.get(entry["room"], 0)
    next_cursor = rooms[-1]["room"] if len(rooms) == query.limit else None
    return web.json_response({"rooms": rooms, "next_cursor": next_cursor})


async def room_history(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    await require_tenant(request, slug)
    room = _room(request)
    query = _query(request, HistoryQuery)
    services = _services(request)
    page = services.settings.messages.history_page
    limit = query.limit or min(50, page)
    if limit > page:
        raise Invalid(f"limit must be at most {page}")
    tenant = await services.tenants.get(slug)
    messages, has_more = await services.messages.history(
        tenant.id, room, before_seq=query.before_seq, after_seq=query.after_seq, limit=limit
    )
    return web.json_response({"room": room, "messages": messages, "has_more": has_more})


async def publish(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    await require_tenant(request, slug)
    room = _room(request)
    spec = await _body(request, PublishRequest)
    services = _services(request)
    keys = await services.directory.lookup(slug)
    if keys is None:
        raise NotFound(f"tenant {slug!r} not found", code="tenant_not_found")
    encoded = encode_body(spec.body, keys.limits.max_message_bytes)
    sender = spec.sender or Sender(id="system", name="system")
    row = await services.messages.send(
        NewMessage(keys.tenant.id, room, sender.id, sender.name, encoded, spec.client_id)
    )
    if not row.duplicate:
        await request.app[REALTIME].broadcast(slug, wire(row, spec.body))
    status = 200 if row.duplicate else 201
    return web.json_response(
        {"id": row.id, "room": room, "seq": row.seq, "ts": row.ts, "duplicate": row.duplicate},
        status=status,
    )


def setup(app: web.Application) -> None:
    router = app.router
    router.add_post(PREFIX, create_tenant)
    router.add_get(PREFIX, list_tenants)
    router.add_get(PREFIX + "/{slug}", get_tenant)
    router.add_patch(PREFIX + "/{slug}", patch_tenant)
    router.add_delete(PREFIX + "/{slug}", delete_tenant)
    router.add_post(PREFIX + "/{slug}/keys", add_signing_key)
    router.add_delete(PREFIX + "/{slug}/keys/{kid}", revoke_signing_key)
    router.add_post(PREFIX + "/{slug}/api-keys", add_api_key)
    router.add_delete(PREFIX + "/{slug}/api-keys/{key_id}", revoke_api_key)
    router.add_post(PREFIX + "/{slug}/tokens", mint)
    router.add_get(PREFIX + "/{slug}/rooms", list_rooms)
    router.add_get(PREFIX + "/{slug}/rooms/{room}/messages", room_history)
    router.add_post(PREFIX + "/{slug}/rooms/{room}/messages", publish)
