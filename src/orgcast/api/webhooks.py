"""Webhook endpoints and their delivery log (``/api/v1/tenants/{slug}/webhooks...``).

Every route takes the admin token or the tenant's own API key (checked before the view runs, see
``auth.py``). An endpoint id of another tenant is ``webhook_not_found``, exactly like one that
does not exist.
"""

from __future__ import annotations

from aiohttp import web

from ..names import SLUG_PATTERN
from ..services.webhooks import EndpointPatch
from ..state import SERVICES
from . import schemas as s
from .inputs import read_body, read_query
from .routes import Response, Route
from .tenants import PREFIX


async def _tenant(request: web.Request) -> tuple[int, str]:
    slug = request.match_info["slug"]
    keys = await request.app[SERVICES].hub.tenant_keys(slug)
    return keys.tenant.id, slug


async def create_webhook(request: web.Request) -> web.Response:
    tenant_id, slug = await _tenant(request)
    spec = await read_body(request, s.CreateWebhookRequest)
    created = await request.app[SERVICES].webhooks.create(tenant_id, slug, spec)
    location = f"{PREFIX}/{slug}/webhooks/{created['id']}"
    return web.json_response(created, status=201, headers={"Location": location})


async def list_webhooks(request: web.Request) -> web.Response:
    tenant_id, _ = await _tenant(request)
    return web.json_response(
        {"webhooks": await request.app[SERVICES].webhooks.list_endpoints(tenant_id)}
    )


async def get_webhook(request: web.Request) -> web.Response:
    tenant_id, _ = await _tenant(request)
    webhook_id = request.match_info["webhook_id"]
    return web.json_response(
        await request.app[SERVICES].webhooks.get_endpoint(tenant_id, webhook_id)
    )


async def update_webhook(request: web.Request) -> web.Response:
    tenant_id, slug = await _tenant(request)
    patch = await read_body(request, EndpointPatch)
    webhook_id = request.match_info["webhook_id"]
    updated = await request.app[SERVICES].webhooks.update(tenant_id, slug, webhook_id, patch)
    return web.json_response(updated)


async def delete_webhook(request: web.Request) -> web.Response:
    tenant_id, slug = await _tenant(request)
    await request.app[SERVICES].webhooks.delete(tenant_id, slug, request.match_info["webhook_id"])
    return web.Response(status=204)


async def rotate_webhook_secret(request: web.Request) -> web.Response:
    tenant_id, _ = await _tenant(request)
    webhook_id = request.match_info["webhook_id"]
    rotated = await request.app[SERVICES].webhooks.rotate_secret(tenant_id, webhook_id)
    return web.json_response(rotated)


async def list_deliveries(request: web.Request) -> web.Response:
    tenant_id, _ = await _tenant(request)
    query = read_query(request, s.DeliveriesQuery)
    page, next_cursor = await request.app[SERVICES].webhooks.deliveries(
        tenant_id, request.match_info["webhook_id"], cursor=query.cursor, limit=query.limit
    )
    return web.json_response({"deliveries": page, "next_cursor": next_cursor})


async def redeliver(request: web.Request) -> web.Response:
    tenant_id, _ = await _tenant(request)
    copy = await request.app[SERVICES].webhooks.redeliver(
        tenant_id, request.match_info["webhook_id"], request.match_info["delivery_id"]
    )
    return web.json_response(copy, status=202)


SLUG = {"slug": {"type": "string", "pattern": SLUG_PATTERN}}
ID = {"webhook_id": {"type": "string"}}
NOT_FOUND = Response(
    "No such tenant (tenant_not_found) or endpoint (webhook_not_found).", s.ErrorResponse
)


def routes() -> list[Route]:
    many = PREFIX + "/{slug}/webhooks"
    one = many + "/{webhook_id}"
    return [
        Route(
            "POST", many, create_webhook, "Add a webhook endpoint", "tenant", tag="webhooks",
            description="Events of the listed types are POSTed to the URL in signed batches "
            "(Standard Webhooks). The answer holds the signing secret: the only time it is shown.",
            path_params=SLUG,
            body=s.CreateWebhookRequest,
            body_example={"url": "https://example.com/orgcast", "events": ["message.created"]},
            responses={
                201: Response("Created, with its secret.", s.NewWebhook),
                404: NOT_FOUND,
                409: Response("The tenant has webhooks.max_endpoints_per_tenant endpoints "
                              "(webhook_limit).", s.ErrorResponse),
                422: Response("Invalid URL or event type (validation_failed), or the URL "
                              "resolves to a private address (target_forbidden).",
                              s.ErrorResponse),
            },
        ),
        Route(
            "GET", many, list_webhooks, "List webhook endpoints", "tenant", tag="webhooks",
            path_params=SLUG,
            responses={200: Response("The endpoints (never their secrets).", s.WebhookList),
                       404: NOT_FOUND},
        ),
        Route(
            "GET", one, get_webhook, "Get a webhook endpoint", "tenant", tag="webhooks",
            path_params={**SLUG, **ID},
            responses={200: Response("The endpoint.", s.Webhook), 404: NOT_FOUND},
        ),
        Route(
            "PATCH", one, update_webhook, "Change a webhook endpoint", "tenant", tag="webhooks",
            description="Only the fields given change. Enabling an endpoint the server disabled "
            "resumes its pending deliveries.",
            path_params={**SLUG, **ID},
            body=EndpointPatch,
            body_example={"events": ["message.created", "user.offline"]},
            responses={
                200: Response("The changed endpoint.", s.Webhook),
                404: NOT_FOUND,
                422: Response("Invalid URL or event type (validation_failed), or the URL "
                              "resolves to a private address (target_forbidden).",
                              s.ErrorResponse),
            },
        ),
        Route(
            "DELETE", one, delete_webhook, "Delete a webhook endpoint", "tenant", tag="webhooks",
            description="With its pending events and its delivery log.",
            path_params={**SLUG, **ID},
            responses={204: Response("Done; no body."), 404: NOT_FOUND},
        ),
        Route(
            "POST", one + "/rotate-secret", rotate_webhook_secret, "Rotate the signing secret",
            "tenant", tag="webhooks",
            description="A new secret, shown only here. Deliveries carry the signatures of both "
            "for webhooks.rotation_overlap_hours.",
            path_params={**SLUG, **ID},
            responses={200: Response("The new secret.", s.RotatedSecret), 404: NOT_FOUND},
        ),
        Route(
            "GET", one + "/deliveries", list_deliveries, "List deliveries", "tenant",
            tag="webhooks",
            description="The delivery log, newest first; follow next_cursor.",
            path_params={**SLUG, **ID},
            query=s.DeliveriesQuery,
            responses={200: Response("A page of deliveries.", s.DeliveryPage), 404: NOT_FOUND},
        ),
        Route(
            "POST", one + "/deliveries/{delivery_id}/redeliver", redeliver,
            "Redeliver", "tenant", tag="webhooks",
            description="Sends the delivery's events again as a new delivery (a new webhook-id; "
            "the event ids are the same).",
            path_params={**SLUG, **ID, "delivery_id": {"type": "string"}},
            responses={
                202: Response("The new delivery, queued.", s.Delivery),
                404: Response("No such tenant, endpoint or delivery (delivery_not_found).",
                              s.ErrorResponse),
            },
        ),
    ]  # fmt: skip
