"""The admin and tenant-backend views (``/api/v1/tenants...``) and their route table.

Each view reads its input (``inputs.py``), calls a service, and answers; who may call it is the
``auth`` of its ``Route`` below, checked before the view runs (``auth.py``).
"""

from __future__ import annotations

from aiohttp import web

from ..errors import Invalid
from ..names import ROOM_PATTERN, SLUG_PATTERN
from ..services.auth import mint_token
from ..services.tenant_models import TenantPatch
from ..state import SERVICES, Services
from . import schemas as s
from .inputs import path_room, read_body, read_query
from .routes import Response, Route

PREFIX = "/api/v1/tenants"
SYSTEM_SENDER = s.Sender(id="system", name="system")


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


# -- tenants ------------------------------------------------------------------------------------


async def create_tenant(request: web.Request) -> web.Response:
    spec = await read_body(request, s.CreateTenantRequest)
    tenant, signing_key, api_key = await _services(request).tenants.create(spec)
    body = {**tenant.to_dict(), "signing_key": signing_key, "api_key": api_key}
    return web.json_response(body, status=201, headers={"Location": f"{PREFIX}/{tenant.slug}"})


async def list_tenants(request: web.Request) -> web.Response:
    query = read_query(request, s.ListQuery)
    tenants, next_cursor = await _services(request).tenants.list_page(
        status=query.status, cursor=query.cursor, limit=query.limit
    )
    return web.json_response(
        {
            "tenants": [t.to_dict() for t in tenants],
            "next_cursor": None if next_cursor is None else str(next_cursor),
        }
    )


async def get_tenant(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    services = _services(request)
    tenant = await services.tenants.get(slug)
    body = tenant.to_dict()
    body["effective_limits"] = services.tenants.limits_for(tenant).__dict__
    body.update(await services.hub.live_counts(slug))
    body["signing_keys"] = await services.tenants.signing_keys(slug)
    body["api_keys"] = await services.tenants.api_keys(slug)
    return web.json_response(body)


async def update_tenant(request: web.Request) -> web.Response:
    patch = await read_body(request, TenantPatch)
    tenant = await _services(request).tenants.update(request.match_info["slug"], patch)
    return web.json_response(tenant.to_dict())


async def delete_tenant(request: web.Request) -> web.Response:
    await _services(request).tenants.delete(request.match_info["slug"])
    return web.Response(status=204)


# -- keys ---------------------------------------------------------------------------------------


async def add_signing_key(request: web.Request) -> web.Response:
    key = await _services(request).tenants.add_signing_key(request.match_info["slug"])
    return web.json_response(key, status=201)


async def revoke_signing_key(request: web.Request) -> web.Response:
    await _services(request).tenants.revoke_signing_key(
        request.match_info["slug"], request.match_info["kid"]
    )
    return web.Response(status=204)


async def add_api_key(request: web.Request) -> web.Response:
    key = await _services(request).tenants.add_api_key(request.match_info["slug"])
    return web.json_response(key, status=201)


async def revoke_api_key(request: web.Request) -> web.Response:
    await _services(request).tenants.revoke_api_key(
        request.match_info["slug"], request.match_info["key_id"]
    )
    return web.Response(status=204)


async def mint(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    spec = await read_body(request, s.TokenRequest)
    keys = await _services(request).hub.tenant_keys(slug)
    return web.json_response(
        mint_token(
            keys, sub=spec.sub, name=spec.name, rooms=spec.rooms, ttl_seconds=spec.ttl_seconds
        )
    )


# -- rooms and messages (tenant backend) ----------------------------------------------------------


async def list_rooms(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    query = read_query(request, s.RoomsQuery)
    keys = await _services(request).hub.tenant_keys(slug)
    # One extra row tells whether another page exists, so the last page has no next_cursor.
    rooms = await _services(request).messages.rooms(
        keys.tenant.id, limit=query.limit + 1, after=query.cursor
    )
    more = len(rooms) > query.limit
    rooms = rooms[: query.limit]
    live = await _services(request).hub.room_members(slug)
    for entry in rooms:
        entry["members"] = live.get(entry["room"], 0)
    next_cursor = rooms[-1]["room"] if more else None
    return web.json_response({"rooms": rooms, "next_cursor": next_cursor})


async def room_history(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    room = path_room(request)
    query = read_query(request, s.HistoryQuery)
    services = _services(request)
    page = services.settings.messages.history_page
    limit = query.limit or min(50, page)
    if limit > page:
        raise Invalid(
            f"limit must be at most {page}",
            details=[{"field": "limit", "message": f"must be at most {page}"}],
        )
    keys = await _services(request).hub.tenant_keys(slug)
    messages, has_more = await services.messages.history(
        keys.tenant.id, room, before_seq=query.before_seq, after_seq=query.after_seq, limit=limit
    )
    return web.json_response({"room": room, "messages": messages, "has_more": has_more})


async def publish(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    room = path_room(request)
    spec = await read_body(request, s.PublishRequest)
    hub = _services(request).hub
    keys = await hub.tenant_keys(slug)
    sender = spec.sender or SYSTEM_SENDER
    row = await hub.publish(keys, room, sender.id, sender.name, spec.body, spec.client_id)
    return web.json_response(
        {"id": row.id, "room": room, "seq": row.seq, "ts": row.ts, "duplicate": row.duplicate},
        status=200 if row.duplicate else 201,
    )


# -- the table ----------------------------------------------------------------------------------

SLUG = {"slug": {"type": "string", "pattern": SLUG_PATTERN}}
ROOM = {"room": {"type": "string", "pattern": ROOM_PATTERN}}
NO_CONTENT = Response("Done; no body.")
TENANT_NOT_FOUND = Response("No such tenant (tenant_not_found).", s.ErrorResponse)
KEY_NOT_FOUND = Response("No such active key (key_not_found).", s.ErrorResponse)


def routes() -> list[Route]:
    one = PREFIX + "/{slug}"
    return [
        Route(
            "POST", PREFIX, create_tenant, "Create a tenant", "admin", tag="tenants",
            description="Returns the tenant with its first signing key and API key, both in "
            "plain text: this is the only time the API key is shown.",
            body=s.CreateTenantRequest,
            body_example={"slug": "acme", "name": "Acme Inc.", "ephemeral_events": ["typing"]},
            responses={
                201: Response("Created.", s.CreatedTenant),
                409: Response("The slug is taken (tenant_exists).", s.ErrorResponse),
            },
        ),
        Route(
            "GET", PREFIX, list_tenants, "List tenants", "admin", tag="tenants",
            description="In creation order, one page at a time; follow next_cursor.",
            query=s.ListQuery,
            responses={200: Response("A page of tenants.", s.TenantPage)},
        ),
        Route(
            "GET", one, get_tenant, "Get a tenant", "admin", tag="tenants",
            description="With its effective limits, live counts, and its keys (never secrets).",
            path_params=SLUG,
            responses={200: Response("The tenant.", s.TenantDetail), 404: TENANT_NOT_FOUND},
        ),
        Route(
            "PATCH", one, update_tenant, "Change a tenant", "admin", tag="tenants",
            description="Only the fields given change; limits, when given, replace all overrides. "
            "Suspending disconnects every live socket of the tenant.",
            path_params=SLUG,
            body=TenantPatch,
            body_example={"name": "Acme Corporation", "limits": {"messages_per_second": 20}},
            responses={200: Response("The changed tenant.", s.Tenant), 404: TENANT_NOT_FOUND},
        ),
        Route(
            "DELETE", one, delete_tenant, "Delete a tenant", "admin", tag="tenants",
            description="Disconnects everyone and deletes the tenant, its keys and messages.",
            path_params=SLUG,
            responses={204: NO_CONTENT, 404: TENANT_NOT_FOUND},
        ),
        Route(
            "POST", one + "/keys", add_signing_key, "Add a signing key", "admin", tag="keys",
            description="New tokens are signed with the newest key; older keys keep verifying "
            "until revoked.",
            path_params=SLUG,
            responses={201: Response("The key, with its secret.", s.NewSigningKey),
                       404: TENANT_NOT_FOUND},
        ),
        Route(
            "DELETE", one + "/keys/{kid}", revoke_signing_key, "Revoke a signing key", "admin",
            tag="keys",
            description="Tokens signed with it are refused from the next connect.",
            path_params={**SLUG, "kid": {"type": "string"}},
            responses={204: NO_CONTENT, 404: KEY_NOT_FOUND},
        ),
        Route(
            "POST", one + "/api-keys", add_api_key, "Add an API key", "admin", tag="keys",
            path_params=SLUG,
            responses={201: Response("The key, shown only here.", s.NewApiKey),
                       404: TENANT_NOT_FOUND},
        ),
        Route(
            "DELETE", one + "/api-keys/{key_id}", revoke_api_key, "Revoke an API key", "admin",
            tag="keys",
            path_params={**SLUG, "key_id": {"type": "string"}},
            responses={204: NO_CONTENT, 404: KEY_NOT_FOUND},
        ),
        Route(
            "POST", one + "/tokens", mint, "Mint a client token", "tenant", tag="tokens",
            description="An HS256 JWT for Socket.IO auth, signed with the newest active key.",
            path_params=SLUG,
            body=s.TokenRequest,
            body_example={"sub": "alice", "name": "Alice", "rooms": ["general"]},
            responses={200: Response("The token.", s.Token), 404: TENANT_NOT_FOUND},
        ),
        Route(
            "GET", one + "/rooms", list_rooms, "List rooms", "tenant", tag="rooms",
            description="Rooms that have a message log, by name, with live member counts.",
            path_params=SLUG,
            query=s.RoomsQuery,
            responses={200: Response("A page of rooms.", s.RoomPage), 404: TENANT_NOT_FOUND},
        ),
        Route(
            "GET", one + "/rooms/{room}/messages", room_history, "Read room history", "tenant",
            tag="rooms",
            description="Without bounds, the latest limit messages; always oldest first.",
            path_params={**SLUG, **ROOM},
            query=s.HistoryQuery,
            responses={200: Response("A page of history.", s.History), 404: TENANT_NOT_FOUND},
        ),
        Route(
            "POST", one + "/rooms/{room}/messages", publish, "Publish a message", "tenant",
            tag="rooms",
            description="Stored, then broadcast as `message` to every socket in the room. "
            "A suspended tenant cannot publish (403 tenant_suspended).",
            path_params={**SLUG, **ROOM},
            body=s.PublishRequest,
            body_example={"body": {"text": "deploy finished"}, "client_id": "deploy-42"},
            responses={
                201: Response("Stored and broadcast.", s.Published),
                200: Response("A resend of a stored client_id: nothing new.", s.Published),
                404: TENANT_NOT_FOUND,
                429: Response("Over the tenant's API rate, or the message store is busy "
                              "(rate_limited); see Retry-After.", s.ErrorResponse),
            },
        ),
    ]  # fmt: skip
