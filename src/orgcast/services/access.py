"""Access for the life of a connection, not only at connect: token expiry and refresh, key
revocation, tenant suspension and deletion, and kicking a user, each ending in ``closing``.

The transport admits a socket and tells this service (``admitted``/``gone``); from then on this
service decides when the socket must go and why, and asks the transport, through the small
``LiveSockets`` protocol, to say ``closing {code, message}`` and disconnect it. Every
server-initiated disconnect has a ``Closing`` reason, one of the codes of the contract.

- Expiry: one ``ExpiryScheduler`` per node (a heap and a task), keyed by ``(slug, sid)``.
- Revocation, suspension, deletion: state, not messages. On any change of a tenant (announced
  locally, over Redis, or found by the tenant watcher in the database) each node re-reads the
  tenant and closes its sockets that the tenant no longer admits: all of them when it is gone or
  suspended, and those whose token's ``kid`` is no longer an active key. A node that missed the
  announcement therefore still converges at the watcher's next pass.
- Kick: a command on the control bus; every node closes that user's sockets and answers how many.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import OrgcastError
from .auth import Principal, verify_refresh
from .control import ControlBus
from .expiry import ExpiryScheduler
from .tenants import TenantDirectory, TenantKeys

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (slug, sid)


@dataclass(frozen=True)
class Closing:
    """Why the server closes a socket: the ``closing`` event's payload."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


AUTH_EXPIRED = Closing("auth_expired", "the token expired; reconnect with a new one")
KEY_REVOKED = Closing("key_revoked", "the key that signed the token was revoked")
TENANT_SUSPENDED = Closing("tenant_suspended", "the tenant was suspended")
TENANT_DELETED = Closing("tenant_deleted", "the tenant was deleted")
KICKED = Closing("kicked", "disconnected by the tenant")
SHUTDOWN = Closing("shutdown", "the server is shutting down; reconnect")


class LiveSockets(Protocol):
    """This node's admitted sockets, as the transport exposes them to this service."""

    def live_slugs(self) -> set[str]:
        """Tenants with sockets on this node."""
        ...

    def sockets(self, slug: str) -> Iterable[tuple[str, Principal]]:
        """(sid, principal) of every admitted socket of ``slug`` on this node."""
        ...

    async def warn_expiring(self, slug: str, sid: str, exp: int) -> None:
        """Emit ``token_expiring {exp}`` to the socket."""
        ...

    async def close(self, slug: str, sid: str, reason: Closing) -> None:
        """Emit ``closing`` to the socket, then disconnect it."""
        ...


class AccessControl:
    """Decides when a live socket must be closed; one per node."""

    def __init__(
        self, control: ControlBus, directory: TenantDirectory, refresh_window: float
    ) -> None:
        self._control = control
        self._directory = directory
        self._sockets: LiveSockets | None = None
        self.expiry: ExpiryScheduler[Key] = ExpiryScheduler(
            refresh_window, self._expiring, self._expired
        )
        control.subscribe(self.tenant_changed)
        control.on_command("kick", self._kick_here)

    def bind(self, sockets: LiveSockets) -> None:
        self._sockets = sockets

    async def run(self) -> None:
        """The expiry task; until cancelled."""
        await self.expiry.run()

    # -- a socket's life --------------------------------------------------------------------------

    def admitted(self, slug: str, sid: str, principal: Principal) -> None:
        if principal.exp:
            self.expiry.schedule((slug, sid), principal.exp)

    def gone(self, slug: str, sid: str) -> None:
        self.expiry.cancel((slug, sid))

    def refresh(
        self, slug: str, sid: str, current: Principal, token: Any, keys: TenantKeys
    ) -> Principal:
        """The socket's principal under a new token (same user, any active key of the tenant);
        raises ``Unauthorized`` (``auth_invalid``/``auth_expired``) and then changes nothing."""
        principal = verify_refresh(token, keys, current)
        self.expiry.schedule((slug, sid), principal.exp)
        return principal

    async def _expiring(self, key: Key, exp: int) -> None:
        if self._sockets is not None:
            await self._sockets.warn_expiring(key[0], key[1], exp)

    async def _expired(self, key: Key) -> None:
        if self._sockets is not None:
            await self._sockets.close(key[0], key[1], AUTH_EXPIRED)

    # -- server control ---------------------------------------------------------------------------

    async def kick(self, slug: str, user_id: str) -> int:
        """Close every socket of ``user_id`` in ``slug`` on every node; how many were closed."""
        return await self._control.command("kick", {"slug": slug, "sub": user_id})

    async def _kick_here(self, args: dict[str, Any]) -> int:
        slug, user_id = args.get("slug"), args.get("sub")
        if not isinstance(slug, str) or not isinstance(user_id, str):
            return 0
        return await self._close_where(slug, lambda p: p.user_id == user_id, KICKED)

    async def tenant_changed(self, slug: str) -> None:
        """Close the sockets a changed tenant no longer admits ("*": check every live tenant)."""
        if self._sockets is None:
            return
        slugs = self._sockets.live_slugs() if slug == "*" else {slug}
        for name in slugs:
            if not any(True for _ in self._sockets.sockets(name)):
                continue
            try:
                keys = await self._directory.lookup(name)
            except OrgcastError:
                continue  # database unavailable: the next change or watcher pass checks again
            if keys is None:
                await self._close_where(name, lambda p: True, TENANT_DELETED)
            elif not keys.tenant.active:
                await self._close_where(name, lambda p: True, TENANT_SUSPENDED)
            else:
                await self._close_where(name, _revoked(set(keys.secrets)), KEY_REVOKED)

    async def _close_where(
        self, slug: str, match: Callable[[Principal], bool], reason: Closing
    ) -> int:
        assert self._sockets is not None
        targets = [sid for sid, principal in self._sockets.sockets(slug) if match(principal)]
        for sid in targets:
            await self._sockets.close(slug, sid, reason)
        return len(targets)

    async def close_all(self, slugs: Iterable[str], reason: Closing) -> None:
        """Close every socket of these tenants on this node (shutdown)."""
        if self._sockets is None:
            return
        for slug in list(slugs):
            await self._close_where(slug, lambda p: True, reason)


def _revoked(active: set[str]) -> Callable[[Principal], bool]:
    """Tokens signed by a key that is no longer among the tenant's active ones."""
    return lambda principal: principal.kid not in active
