"""Access for the life of a connection, not only at connect: token expiry and refresh, key
revocation, tenant suspension and deletion, and kicking a user, each ending in ``closing``.

The hub tells this service when a socket is admitted and when it is gone; from then on this
service decides when the socket must go and why, and asks the transport, through the small
``Closer`` protocol, to say ``closing {code, message}`` and disconnect it. Every server-initiated
disconnect has a ``Closing`` reason, one of the codes of the contract.

- Expiry: one ``ExpiryScheduler`` per node (a heap and a task), keyed by ``(slug, sid)``.
- Revocation: state, not a message. On any change of a tenant (announced locally, over Redis,
  or found by the tenant watcher in the database) each node re-reads the tenant and closes its
  sockets whose token's ``kid`` is no longer an active key. A node that missed the announcement
  therefore still converges at the watcher's next pass (revoking a key touches the tenant's
  ``updated_at`` for that reason).
- Kick: a command on the control bus; every node closes that user's sockets and answers how many.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import OrgcastError
from . import DB_ERRORS
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


class Socket(Protocol):
    """What this service needs of an admitted socket (the hub's ``Connection``)."""

    @property
    def slug(self) -> str: ...
    @property
    def sid(self) -> str: ...
    @property
    def principal(self) -> Principal: ...


class Closer(Protocol):
    """How this service reaches a socket; the transport implements it."""

    async def emit_to(self, slug: str, sid: str, event: str, data: dict[str, Any]) -> None:
        """Send one event to one socket."""
        ...

    async def close(self, slug: str, sid: str, reason: Closing) -> None:
        """Send ``closing {code, message}`` to the socket, then disconnect it."""
        ...


class AccessControl:
    """Decides when a live socket must be closed; one per node. It keeps its own index of this
    node's admitted sockets by tenant (a dict entry per socket), so that a kick or a revocation
    finds them without asking the transport."""

    def __init__(
        self, control: ControlBus, directory: TenantDirectory, refresh_window: float
    ) -> None:
        self._control = control
        self._directory = directory
        self._out: Closer | None = None
        self._live: dict[str, dict[str, Socket]] = {}
        self.expiry: ExpiryScheduler[Key] = ExpiryScheduler(
            refresh_window, self._expiring, self._expired
        )
        control.subscribe(self.tenant_changed)
        control.on_command("kick", self._kick_here)

    def bind(self, closer: Closer) -> None:
        self._out = closer

    async def run(self) -> None:
        """The expiry task; until cancelled."""
        await self.expiry.run()

    # -- a socket's life --------------------------------------------------------------------------

    async def on_admitted(self, conn: Socket) -> None:
        self._live.setdefault(conn.slug, {})[conn.sid] = conn
        if conn.principal.exp:
            self.expiry.schedule((conn.slug, conn.sid), conn.principal.exp)

    async def on_disconnected(self, conn: Socket) -> None:
        sockets = self._live.get(conn.slug)
        if sockets is not None:
            sockets.pop(conn.sid, None)
            if not sockets:
                del self._live[conn.slug]
        self.expiry.cancel((conn.slug, conn.sid))

    def verify_refresh(self, conn: Socket, token: Any, keys: TenantKeys) -> Principal:
        """The principal a ``refresh`` would give the socket (same user, any active key of its
        tenant); raises ``Unauthorized`` (``auth_invalid``/``auth_expired``), changing nothing."""
        return verify_refresh(token, keys, conn.principal)

    def refreshed(self, conn: Socket) -> None:
        """The socket now holds a new token: its expiry moves to the new ``exp``."""
        if conn.sid in self._live.get(conn.slug, {}):
            self.expiry.schedule((conn.slug, conn.sid), conn.principal.exp)

    async def _expiring(self, key: Key, exp: int) -> None:
        if self._out is not None:
            await self._out.emit_to(key[0], key[1], "token_expiring", {"exp": exp})

    async def _expired(self, key: Key) -> None:
        if self._out is not None:
            await self._out.close(key[0], key[1], AUTH_EXPIRED)

    # -- server control ---------------------------------------------------------------------------

    async def kick(self, slug: str, user_id: str, reason: str | None = None) -> int:
        """Close every socket of ``user_id`` in ``slug`` on every node; how many were closed."""
        return await self._control.command("kick", {"slug": slug, "sub": user_id, "reason": reason})

    async def _kick_here(self, args: dict[str, Any]) -> int:
        slug, user_id, reason = args.get("slug"), args.get("sub"), args.get("reason")
        if not isinstance(slug, str) or not isinstance(user_id, str):
            return 0
        closing = Closing(KICKED.code, reason) if isinstance(reason, str) and reason else KICKED
        return await self._close_where(slug, lambda p: p.user_id == user_id, closing)

    async def tenant_changed(self, slug: str) -> None:
        """Close the sockets whose signing key the tenant no longer has ("*": every tenant with
        sockets here). A suspended or deleted tenant is the hub's to close."""
        for name in list(self._live) if slug == "*" else [slug]:
            if name not in self._live:
                continue
            try:
                keys = await self._directory.lookup(name)
            except OrgcastError:
                continue  # database unavailable: the next change or watcher pass checks again
            except DB_ERRORS:
                continue
            if keys is not None and keys.tenant.active:
                await self._close_where(name, _revoked(set(keys.secrets)), KEY_REVOKED)

    def sockets(self, slug: str) -> list[Socket]:
        return list(self._live.get(slug, {}).values())

    async def _close_where(
        self, slug: str, match: Callable[[Principal], bool], reason: Closing
    ) -> int:
        targets = [conn.sid for conn in self.sockets(slug) if match(conn.principal)]
        if self._out is not None:
            for sid in targets:
                await self._out.close(slug, sid, reason)
        return len(targets)


def _revoked(active: set[str]) -> Callable[[Principal], bool]:
    """Tokens signed by a key that is no longer among the tenant's active ones."""
    return lambda principal: principal.kid not in active
