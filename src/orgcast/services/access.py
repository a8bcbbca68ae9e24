"""Access for the life of a connection, not only at connect: token expiry and refresh, key
revocation, tenant suspension and deletion, and kicking a user, each ending in ``closing``.

A ``HubListener``: the hub tells it when a socket is admitted, refreshed and gone. From then on
this service decides when the socket must go and why, and asks the transport (the hub's
``Broadcaster``) to say ``closing {code, message}`` and disconnect it.

- Expiry: one ``ExpiryScheduler`` per node (a heap and a task), keyed by ``(slug, sid)``; the
  refresh itself (verify, leave rooms no longer allowed) is ``Hub.refresh``.
- Suspension and deletion are the hub's (``Hub.tenant_changed``), with their own ``closing``.
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
from typing import Any

from ..errors import OrgcastError
from . import DB_ERRORS
from .auth import Principal
from .closing import AUTH_EXPIRED, KEY_REVOKED, KICKED, Closing
from .control import ControlBus
from .directory import TenantDirectory
from .expiry import ExpiryScheduler
from .hub import Broadcaster, Connection, HubListener

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (slug, sid)


class AccessControl(HubListener):
    """Decides when a live socket must be closed; one per node. It keeps its own index of this
    node's admitted sockets by tenant (a dict entry per socket), so that a kick or a revocation
    finds them without asking the transport."""

    def __init__(
        self,
        control: ControlBus,
        directory: TenantDirectory,
        broadcaster: Broadcaster,
        refresh_window: float,
    ) -> None:
        self._control = control
        self._directory = directory
        self._out = broadcaster
        self._live: dict[str, dict[str, Connection]] = {}
        self.expiry: ExpiryScheduler[Key] = ExpiryScheduler(
            refresh_window, self._expiring, self._expired
        )
        control.subscribe(self.tenant_changed)
        control.on_command("kick", self._kick_here)

    async def run(self) -> None:
        """The expiry task; until cancelled."""
        await self.expiry.run()

    # -- a socket's life --------------------------------------------------------------------------

    async def on_admitted(self, conn: Connection) -> None:
        self._live.setdefault(conn.slug, {})[conn.sid] = conn
        if conn.principal.exp:
            self.expiry.schedule((conn.slug, conn.sid), conn.principal.exp)

    async def on_disconnected(self, conn: Connection) -> None:
        sockets = self._live.get(conn.slug)
        if sockets is not None:
            sockets.pop(conn.sid, None)
            if not sockets:
                del self._live[conn.slug]
        self.expiry.cancel((conn.slug, conn.sid))

    async def on_refreshed(self, conn: Connection) -> None:
        """The socket now holds a new token: its expiry moves to the new ``exp``."""
        if conn.sid in self._live.get(conn.slug, {}):
            self.expiry.schedule((conn.slug, conn.sid), conn.principal.exp)

    async def _expiring(self, key: Key, exp: int) -> None:
        await self._out.emit_to(key[0], key[1], "token_expiring", {"exp": exp})

    async def _expired(self, key: Key) -> None:
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

    def sockets(self, slug: str) -> list[Connection]:
        return list(self._live.get(slug, {}).values())

    def connections(self) -> list[Connection]:
        """Every admitted socket of this node."""
        return [conn for sockets in self._live.values() for conn in sockets.values()]

    def live(self, conn: Connection) -> bool:
        return self._live.get(conn.slug, {}).get(conn.sid) is conn

    async def _close_where(
        self, slug: str, match: Callable[[Principal], bool], reason: Closing
    ) -> int:
        targets = [conn.sid for conn in self.sockets(slug) if match(conn.principal)]
        for sid in targets:
            await self._out.close(slug, sid, reason)
        return len(targets)


def _revoked(active: set[str]) -> Callable[[Principal], bool]:
    """Tokens signed by a key that is no longer among the tenant's active ones."""
    return lambda principal: principal.kid not in active
