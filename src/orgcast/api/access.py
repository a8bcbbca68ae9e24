"""Server control for a tenant's backend (DESIGN §10): disconnect a user, read a room's presence,
publish a batch of messages. Every route is ``tenant``: the admin token or the tenant's API key."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import BadRequest, Invalid, OrgcastError, TooLarge
from ..services.hub import Outgoing
from ..state import SERVICES
from . import schemas as s
from .inputs import path_room, read_object, validate
from .routes import Response, Route
from .tenants import PREFIX, ROOM, SLUG, SYSTEM_SENDER, TENANT_NOT_FOUND


async def disconnect_user(request: web.Request) -> web.Response:
    slug, sub = request.match_info["slug"], request.match_info["sub"]
    if not 1 <= len(sub) <= 128:
        raise BadRequest("sub must be 1-128 characters")
    # The body is optional: no body is no reason.
    spec = validate(s.DisconnectRequest, await read_object(request, empty_ok=True))
    services = request.app[SERVICES]
    await services.hub.tenant_keys(slug)
    count = await services.access.kick(slug, sub, spec.reason)
    return web.json_response({"disconnected": count})


async def room_presence(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    room = path_room(request)
    hub = request.app[SERVICES].hub
    await hub.tenant_keys(slug)
    return web.json_response({"room": room, "members": await hub.room_presence(slug, room)})


async def publish_batch(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    items = (await read_object(request)).get("messages")
    if not isinstance(items, list) or not items:
        raise Invalid(
            f"messages must be a list of 1-{s.MAX_BATCH} messages",
            details=[{"field": "messages", "message": "a non-empty list is required"}],
        )
    if len(items) > s.MAX_BATCH:
        raise TooLarge(f"at most {s.MAX_BATCH} messages per batch; got {len(items)}")
    hub = request.app[SERVICES].hub
    keys = await hub.tenant_keys(slug)
    # Each item is checked on its own: a bad one is answered in its place, the rest go on.
    results: list[dict[str, Any] | None] = [None] * len(items)
    outgoing: list[tuple[int, Outgoing]] = []
    for index, item in enumerate(items):
        try:
            spec = validate(s.BatchItem, item)
        except OrgcastError as exc:
            results[index] = _failed(exc)
            continue
        sender = spec.sender or SYSTEM_SENDER
        outgoing.append(
            (index, Outgoing(spec.room, sender.id, sender.name, spec.body, spec.client_id))
        )
    published = await hub.publish_many(keys, [item for _, item in outgoing])
    for (index, _), outcome in zip(outgoing, published, strict=True):
        if isinstance(outcome, OrgcastError):
            results[index] = _failed(outcome)
        else:
            results[index] = {
                "ok": True, "id": outcome.id, "room": outcome.room, "seq": outcome.seq,
                "ts": outcome.ts,
            }  # fmt: skip
    return web.json_response({"results": results})


def _failed(error: OrgcastError) -> dict[str, Any]:
    return {"ok": False, "error": {"code": error.code, "message": error.message}}


def routes() -> list[Route]:
    one = PREFIX + "/{slug}"
    return [
        Route(
            "POST", one + "/users/{sub}/disconnect", disconnect_user, "Disconnect a user",
            "tenant", tag="users",
            description="Every socket of the user, on every node, receives `closing` with code "
            "`kicked` (and `reason` as its message) and is disconnected. Answers how many "
            "sockets were closed (nodes that answer within a second); an unknown user is 0. "
            "The user may connect again with a valid token.",
            path_params={**SLUG, "sub": {"type": "string", "minLength": 1, "maxLength": 128}},
            body=s.DisconnectRequest,
            body_example={"reason": "banned for spam"},
            responses={200: Response("Sockets closed.", s.Disconnected), 404: TENANT_NOT_FOUND},
        ),
        Route(
            "GET", one + "/rooms/{room}/presence", room_presence, "Room presence", "tenant",
            tag="rooms",
            description="Who is in the room now, cluster-wide, each user once: the members "
            "of the socket `presence` event.",
            path_params={**SLUG, **ROOM},
            responses={200: Response("The members.", s.RoomPresence), 404: TENANT_NOT_FOUND},
        ),
        Route(
            "POST", one + "/messages", publish_batch, "Publish a batch of messages", "tenant",
            tag="rooms",
            description="1-100 messages to any rooms of the tenant, checked one by one and "
            "stored in one transaction, then each broadcast to its whole room. `results` "
            "answers every item in input order: a bad item gets its own error, the others "
            "are stored. A resent client_id answers the stored original.",
            path_params=SLUG,
            body=s.BatchPublishRequest,
            body_example={"messages": [{"room": "general", "body": {"text": "hi"}},
                                       {"room": "ops", "body": "deployed", "client_id": "d-7"}]},
            responses={
                200: Response("One result per item.", s.BatchPublished),
                404: TENANT_NOT_FOUND,
                413: Response("More than 100 messages (too_large).", s.ErrorResponse),
                422: Response("No list of messages (validation_failed).", s.ErrorResponse),
            },
        ),
    ]  # fmt: skip
