"""Who may call a route, checked from the route table's ``auth`` (``routes.Route``).

Every route but ``none`` needs ``Authorization: Bearer <token>``. The admin token opens
everything; a tenant API key opens only the routes marked ``tenant``, and only for its own slug.
Authentication runs before anything is looked up, so a key of another tenant learns nothing, not
even whether a slug exists (always 403). A ``tenant`` route then counts against the tenant's
``limits.api_requests_per_second``.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web

from ..errors import AuthInvalid, Forbidden, Unauthorized
from ..services.admin import same_secret
from ..state import SERVICES, SETTINGS

# none; admin (admin token only); tenant (the admin token or an API key of the route's {slug});
# metrics (the admin token or metrics.token)
Auth = Literal["none", "admin", "tenant", "metrics"]


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("send Authorization: Bearer <token>")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthInvalid("the Authorization header must be 'Bearer <token>'")
    return token.strip()


async def require_admin(request: web.Request) -> None:
    services = request.app[SERVICES]
    token = _bearer(request)
    if same_secret(token, services.admin_token):
        return
    if await services.tenants.tenant_for_api_key(token) is not None:
        raise Forbidden("this route needs the admin token")
    raise AuthInvalid("invalid token")


async def require_tenant(request: web.Request, slug: str) -> None:
    """The admin token, or an API key of this very tenant."""
    services = request.app[SERVICES]
    token = _bearer(request)
    if same_secret(token, services.admin_token):
        return
    owner = await services.tenants.tenant_for_api_key(token)
    if owner is None:
        raise AuthInvalid("invalid token")
    if not same_secret(owner, slug):
        raise Forbidden("this API key belongs to another tenant")


async def require_metrics(request: web.Request) -> None:
    """The admin token or ``metrics.token``; nothing else is looked up (no database)."""
    token = _bearer(request)
    allowed = (request.app[SERVICES].admin_token, request.app[SETTINGS].metrics.token)
    # Compared with both, so the time taken does not say which one matched.
    matched = [bool(secret) and same_secret(token, secret) for secret in allowed]
    if not any(matched):
        raise AuthInvalid("invalid token")


async def authorize(request: web.Request, auth: Auth) -> None:
    """Raise unless the request may call a route declared with ``auth``."""
    if auth == "admin":
        await require_admin(request)
    elif auth == "tenant":
        slug = request.match_info["slug"]
        await require_tenant(request, slug)
        await count_call(request, slug)
    elif auth == "metrics":
        await require_metrics(request)


async def count_call(request: web.Request, slug: str) -> None:
    """One call against the tenant's ``api_requests_per_second`` (``RateLimited`` beyond it).
    Counted after authentication, so that nobody spends another tenant's budget; an unknown
    tenant has none (its view answers ``tenant_not_found``)."""
    services = request.app[SERVICES]
    keys = services.directory.cached(slug) or await services.directory.lookup(slug)
    if keys is not None:
        await services.api_limits.take(slug, keys.limits.api_requests_per_second)
