"""Client tokens: HS256 JWTs signed with one of the tenant's active keys, chosen by ``kid``."""

from __future__ import annotations

import fnmatch
import hmac
import time
from dataclasses import dataclass
from typing import Any

import jwt

from ..errors import AuthExpired, AuthInvalid, BadRequest, KeyNotFound, Unauthorized
from .tenant_models import TenantKeys

MAX_SUB = 128
MAX_TTL = 30 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a socket is: the user id and display name, the rooms the token lets it join, and
    what the token's life depends on: the signing key (``kid``, so that revoking the key finds
    the sockets it admitted) and ``exp`` (unix seconds; 0 when unknown)."""

    user_id: str
    name: str
    rooms: tuple[str, ...] | None = None
    kid: str = ""
    exp: int = 0

    def may_join(self, room: str) -> bool:
        if self.rooms is None:
            return True
        return any(fnmatch.fnmatchcase(room, pattern) for pattern in self.rooms)

    def member(self) -> dict[str, str]:
        return {"id": self.user_id, "name": self.name}


def verify_token(token: Any, keys: TenantKeys, *, leeway: float = 5.0) -> Principal:
    """Check a client token against the tenant's active keys; raises ``Unauthorized``.

    ``leeway`` tolerates clock skew between the tenant's backend and this node at connect time;
    a refresh gets none (see ``verify_refresh``)."""
    if token is None or token == "":
        raise Unauthorized("a token is required: connect with auth { token }")
    if not isinstance(token, str) or len(token) > 8192:
        raise AuthInvalid("the token must be a JWT string")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthInvalid("the token is not a valid JWT") from None
    kid = header.get("kid")
    secret = keys.secrets.get(kid) if isinstance(kid, str) else None
    if secret is None or not isinstance(kid, str):
        raise AuthInvalid("unknown or revoked signing key (kid)")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"require": ["exp", "sub"], "verify_aud": False},
            leeway=leeway,
        )
    except jwt.ExpiredSignatureError:
        raise AuthExpired("the token has expired") from None
    except jwt.PyJWTError as exc:
        raise AuthInvalid(f"the token was refused: {exc}") from None
    return _principal(claims, keys.tenant.slug, kid)


def verify_refresh(token: Any, keys: TenantKeys, current: Principal) -> Principal:
    """A new token for a live socket: valid now (no leeway: a token within its last seconds would
    be closed at once), signed by any active key of the same tenant, for the same ``sub``.
    Its ``name``, ``rooms`` and ``aud`` claims are read afresh; raises ``AuthInvalid`` or
    ``AuthExpired``."""
    if token is None or token == "":
        raise AuthInvalid("refresh needs { token }")
    principal = verify_token(token, keys, leeway=0)
    if principal.exp <= time.time():
        raise AuthExpired("the token has expired")
    if not hmac.compare_digest(principal.user_id.encode(), current.user_id.encode()):
        raise AuthInvalid("the token is for another user (sub)")
    return principal


def _principal(claims: dict[str, Any], slug: str, kid: str) -> Principal:
    sub, name, rooms = claims.get("sub"), claims.get("name"), claims.get("rooms")
    if "aud" in claims:
        aud = claims["aud"]
        audiences = aud if isinstance(aud, list) else [aud]
        if not any(isinstance(a, str) and hmac.compare_digest(a, slug) for a in audiences):
            raise AuthInvalid("the token's aud is another tenant")
    if not isinstance(sub, str) or not 1 <= len(sub) <= MAX_SUB:
        raise AuthInvalid(f"sub must be a string of 1-{MAX_SUB} characters")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise AuthInvalid("name must be a string of at most 200 characters")
    if rooms is not None and (
        not isinstance(rooms, list) or not all(isinstance(r, str) and r for r in rooms)
    ):
        raise AuthInvalid("rooms must be a list of glob patterns")
    exp = claims.get("exp")
    return Principal(
        sub,
        name if name is not None else sub,
        tuple(rooms) if rooms is not None else None,
        kid=kid,
        exp=int(exp) if isinstance(exp, int | float) else 0,
    )


def mint_token(
    keys: TenantKeys,
    *,
    sub: str,
    name: str | None = None,
    rooms: list[str] | None = None,
    ttl_seconds: int = 3600,
) -> dict[str, Any]:
    """Sign a client token with the tenant's newest active key (admin tooling and tests)."""
    if not keys.secrets:
        raise KeyNotFound("the tenant has no active signing key; add one first")
    if not isinstance(sub, str) or not 1 <= len(sub) <= MAX_SUB:
        raise BadRequest(f"sub must be a string of 1-{MAX_SUB} characters")
    if not 1 <= ttl_seconds <= MAX_TTL:
        raise BadRequest(f"ttl_seconds must be between 1 and {MAX_TTL}")
    kid = list(keys.secrets)[-1]
    expires = int(time.time()) + ttl_seconds
    claims: dict[str, Any] = {"sub": sub, "exp": expires, "aud": keys.tenant.slug}
    if name is not None:
        claims["name"] = name
    if rooms is not None:
        claims["rooms"] = rooms
    token = jwt.encode(claims, keys.secrets[kid], algorithm="HS256", headers={"kid": kid})
    return {"token": token, "kid": kid, "expires_at": expires}
