"""The real-time use cases, written once: admit, join with replay, publish (one message or a
batch), leave, presence, refresh.

``Hub`` is what the Socket.IO handlers and the HTTP views both call. It reaches sockets only
through ``Broadcaster``, which ``realtime/`` implements; it never imports the transport, and the
transport keeps its own encoding (how a stored body is embedded in a packet) and its per-socket
state (a ``Connection``, kept in the Socket.IO session and handed to every call).

Where later features attach, without touching a transport: register a ``HubListener`` with
``Hub.add_listener``. Its methods are called after the fact, in this order of life:

- ``on_admitted(conn)``          a socket passed every connect check and holds a slot
- ``on_member_joined(slug, room, member)``  a user's first socket entered a room (cluster-wide)
- ``on_stored(slug, rows)``      messages were committed and broadcast (socket and REST alike)
- ``on_member_left(slug, room, member)``    a user's last socket left a room (also on disconnect,
                                 on a refresh whose token no longer allows it, and when a dead
                                 node's members are removed)
- ``on_refreshed(conn)``         the socket holds a new token (``services/access.py`` moves its
                                 expiry)
- ``on_disconnected(conn)``      a socket is gone; its rooms are left and its slot given back

Ordering: ``send`` hands the message to the writer before it first suspends, so messages of one
socket are stored in the order they arrived. Stored messages reach this node's sockets through
``OrderedDelivery`` (services/ordering.py): in seq order, each once per socket, whichever node
stored them; a sender is answered once its message went out here. ``join`` enters the room before
it reads the log; what the room receives meanwhile follows the ack, above the ack's ``seq``. A
join without ``since`` to a room this node already delivers to reports the last seq delivered
here instead of reading it from the database (``OrderedDelivery.last_seq``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import (
    ConnectionLimit,
    NamespaceRequired,
    NotJoined,
    OrgcastError,
    OriginForbidden,
    RoomForbidden,
    RoomLimit,
    TenantNotFound,
    TenantSuspended,
)
from ..names import is_slug
from ..settings import Settings
from . import db_boundary
from .auth import Principal, verify_refresh, verify_token
from .closing import TENANT_DELETED, TENANT_SUSPENDED, Closing
from .cluster import RedisPresence
from .control import ControlBus
from .directory import TenantDirectory
from .limits import ConnectRates, TokenBucket, UserRates
from .messages import BodyDecoder, MessageService, NewMessage, StoredRow, encode_body
from .ordering import OrderedDelivery
from .presence import LocalPresence, Presence
from .tenant_models import TenantKeys

Member = dict[str, str]


@dataclass(slots=True)
class Connection:
    """What the server knows about one admitted socket (kept in its Socket.IO session)."""

    slug: str
    tenant_id: int
    principal: Principal
    sid: str
    rooms: set[str] = field(default_factory=set)
    bucket: TokenBucket = field(default_factory=TokenBucket)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message of a batch from a tenant's backend, before its body is checked."""

    room: str
    sender_id: str
    sender_name: str | None
    body: Any
    client_id: str | None


@dataclass(frozen=True, slots=True)
class Joined:
    """The outcome of a join: members now, and either the room's seq or a replay since a seq."""

    room: str
    members: list[Member]
    seq: int
    missed: list[dict[str, Any]] | None = None
    truncated: bool = False
    expired: bool = False


class Broadcaster(Protocol):
    """How the Hub reaches sockets; ``realtime.server.Realtime`` implements it. ``slug`` names
    the tenant (its namespace), ``room`` a room name as clients know it."""

    def to_room(self, slug: str, row: StoredRow, skip: str | list[str] | None) -> None: ...
    def to_socket(self, slug: str, sid: str, row: StoredRow) -> None: ...
    def to_other_nodes(self, slug: str, row: StoredRow, skip_sid: str | None) -> None: ...
    async def emit_presence(
        self, slug: str, room: str, action: str, member: Member, skip_sid: str | None
    ) -> None: ...
    async def emit_volatile(
        self, slug: str, room: str, event: str, data: dict[str, Any], skip_sid: str
    ) -> None: ...
    async def enter_room(self, slug: str, sid: str, room: str) -> None: ...
    async def leave_room(self, slug: str, sid: str, room: str) -> None: ...
    async def disconnect_tenant(self, slug: str, reason: Closing) -> None:
        """``closing`` to every socket of the tenant on this node, then disconnect them."""
        ...

    async def emit_to(self, slug: str, sid: str, event: str, data: dict[str, Any]) -> None: ...
    async def close(self, slug: str, sid: str, reason: Closing) -> None:
        """``closing {code, message}`` to one socket, then disconnect it."""
        ...

    def live_slugs(self) -> set[str]: ...
    def local_connections(self, slug: str) -> int: ...


class HubListener:
    """Hooks on the real-time use cases; every method is a no-op here, override what you need.
    They run inline, after the event, so keep them quick (queue work, don't do it)."""

    async def on_admitted(self, conn: Connection) -> None:
        return None

    async def on_disconnected(self, conn: Connection) -> None:
        return None

    async def on_stored(self, slug: str, rows: Sequence[StoredRow]) -> None:
        return None

    async def on_member_joined(self, slug: str, room: str, member: Member) -> None:
        return None

    async def on_member_left(self, slug: str, room: str, member: Member) -> None:
        return None

    async def on_refreshed(self, conn: Connection) -> None:
        """The socket holds a new token (``conn.principal`` is the new one)."""
        return None


class Hub:
    """Admission, rooms, messages and presence for every transport of one node."""

    def __init__(
        self,
        settings: Settings,
        directory: TenantDirectory,
        messages: MessageService,
        control: ControlBus,
        broadcaster: Broadcaster,
        redis: Any = None,
    ) -> None:
        self._settings = settings
        self._directory = directory
        self._messages = messages
        self._out = broadcaster
        self._listeners: list[HubListener] = []
        self.ordering = OrderedDelivery(settings.messages)
        self.ordering.bind(broadcaster, messages.read_after, messages.last_seqs)
        # How long a sender's ack waits for the messages before its own to go out.
        self._own_wait = max(1.0, 5 * settings.messages.gap_wait_ms / 1000)
        self.presence: Presence
        if redis is not None:
            # Cluster-wide presence and connection slots.
            self.presence = RedisPresence(
                redis,
                prefix=settings.redis.channel,
                node_id=control.node_id,
                ttl=settings.redis.node_ttl_seconds,
                on_leave=self._member_left,
            )
        else:
            self.presence = LocalPresence()
        self.user_rates = UserRates(redis, prefix=settings.redis.channel)
        self.connect_rates = ConnectRates()
        control.subscribe(self.tenant_changed)

    def add_listener(self, listener: HubListener) -> None:
        self._listeners.append(listener)

    async def close(self) -> None:
        await self.ordering.close()
        if isinstance(self.presence, RedisPresence):
            await self.presence.close()

    def link_changed(self, up: bool) -> None:
        """The transport between nodes (Redis pub/sub) was lost or is back."""
        if up:
            self.ordering.link_up()
            return
        self.ordering.link_down()
        if isinstance(self.presence, RedisPresence):
            self.presence.link_lost()

    # -- admission ------------------------------------------------------------------------------

    # A database or network failure while admitting is a refusal with ``unavailable``.
    @db_boundary("the tenant directory is unavailable; retry")
    async def admit(
        self,
        namespace: str,
        sid: str,
        origin: str | None,
        auth: Any,
        address: str | None = None,
    ) -> Connection:
        """Resolve the tenant, check origin and token, take a connection slot (in that order:
        a slot taken here is given back by ``disconnected``). Connects per second are limited
        per client ``address`` before anything is looked up, and per user once the token names
        one."""
        if namespace == "/":
            raise NamespaceRequired()
        if address:
            self.connect_rates.take("address", address, self._settings.server.connects_per_address)
        slug = namespace[1:]
        keys = await self._directory.lookup(slug) if is_slug(slug) else None
        if keys is None:
            raise TenantNotFound(f"no tenant {slug!r}")
        if not keys.tenant.active:
            raise TenantSuspended()
        allowed = keys.tenant.allowed_origins
        if allowed and origin and origin not in allowed:
            raise OriginForbidden(f"origin {origin!r} is not allowed for this tenant")
        token = auth.get("token") if isinstance(auth, dict) else None
        principal = verify_token(token, keys)
        self.connect_rates.take(
            "user", f"{keys.tenant.id}:{principal.user_id}", keys.limits.connection_rate
        )
        if not await self.presence.acquire(slug, keys.limits.max_connections):
            raise ConnectionLimit(
                f"the tenant's limit of {keys.limits.max_connections} connections is reached"
            )
        conn = Connection(slug=slug, tenant_id=keys.tenant.id, principal=principal, sid=sid)
        for listener in self._listeners:
            await listener.on_admitted(conn)
        return conn

    async def disconnected(self, conn: Connection) -> None:
        """The socket is gone: leave its rooms, give its slot back."""
        for room in list(conn.rooms):
            await self._leave(conn, room)
        await self.presence.release(conn.slug)
        for listener in self._listeners:
            await listener.on_disconnected(conn)

    async def check_event(self, conn: Connection) -> TenantKeys:
        """Before any event of an admitted socket: its tenant still exists and is active, and the
        socket is within its rate. Returns the tenant's current keys and limits."""
        keys = self._directory.cached(conn.slug)
        if keys is None:
            keys = await self._directory.lookup(conn.slug)
        if keys is None or keys.tenant.id != conn.tenant_id:
            raise TenantSuspended("the tenant no longer exists")
        if not keys.tenant.active:
            raise TenantSuspended()
        rate = keys.limits.messages_per_second
        conn.bucket.take(rate)
        self.user_rates.take(conn.tenant_id, conn.principal.user_id, rate)
        return keys

    async def tenant_keys(self, slug: str) -> TenantKeys:
        """The tenant's keys and limits, for a transport that names the tenant (REST)."""
        keys = await self._directory.lookup(slug)
        if keys is None:
            raise TenantNotFound(f"tenant {slug!r} not found")
        return keys

    # -- rooms ----------------------------------------------------------------------------------

    async def join(
        self,
        conn: Connection,
        keys: TenantKeys,
        room: str,
        since: int | None,
        decode: BodyDecoder = json.loads,
    ) -> Joined:
        """Enter ``room`` (once), then read its seq, or the messages after ``since``. The caller
        answers right away (in the same step): live messages follow, above ``Joined.seq``."""
        self.check_room(conn, room)
        new = room not in conn.rooms
        try:
            joined = await self._join(conn, keys, room, since, decode)
        except BaseException:
            if new:
                self.ordering.joined(conn.slug, room, conn.sid, None)
            raise
        if new:
            self.ordering.joined(conn.slug, room, conn.sid, joined.seq)
        return joined

    async def _join(
        self,
        conn: Connection,
        keys: TenantKeys,
        room: str,
        since: int | None,
        decode: BodyDecoder,
    ) -> Joined:
        if room not in conn.rooms:
            if len(conn.rooms) >= keys.limits.max_rooms_per_connection:
                raise RoomLimit(
                    f"at most {keys.limits.max_rooms_per_connection} rooms per connection"
                )
            conn.rooms.add(room)
            self.ordering.joining(conn.slug, room, conn.tenant_id, conn.sid)
            await self._out.enter_room(conn.slug, conn.sid, room)
            member = conn.principal.member()
            if await self.presence.join(conn.slug, room, conn.sid, member):
                await self._out.emit_presence(conn.slug, room, "join", member, conn.sid)
                for listener in self._listeners:
                    await listener.on_member_joined(conn.slug, room, member)
        members = await self.presence.members(conn.slug, room)
        if since is None:
            # A room this node already delivers to knows its seq: no database read. The socket
            # is still joining, so what the room receives after this read follows the ack.
            seq = self.ordering.last_seq(conn.slug, room)
            if seq is None:
                seq = await self._messages.room_seq(conn.tenant_id, room)
            return Joined(room, members, seq)
        replay = await self._messages.replay(
            conn.tenant_id, room, since, self._settings.messages.replay_page, decode
        )
        return Joined(room, members, replay.seq, replay.missed, replay.truncated, replay.expired)

    async def refresh(self, conn: Connection, keys: TenantKeys, token: Any) -> int:
        """A live socket's new token (same user, any active key of the tenant). Its claims apply
        at once: rooms it no longer allows are left as on a ``leave``. Returns the new ``exp``; a
        bad token raises ``AuthInvalid``/``AuthExpired`` and changes nothing."""
        principal = verify_refresh(token, keys, conn.principal)
        # Left under the old principal: the leave event names the member as the room knew it.
        for room in [r for r in conn.rooms if not principal.may_join(r)]:
            await self._leave(conn, room)
        conn.principal = principal
        for listener in self._listeners:
            await listener.on_refreshed(conn)
        return principal.exp

    async def room_presence(self, slug: str, room: str) -> list[Member]:
        """Who is in ``room`` now, cluster-wide, each user once (the ``presence`` event's view),
        for a transport that names the tenant (REST)."""
        return await self.presence.members(slug, room)

    async def leave(self, conn: Connection, room: str) -> None:
        if room not in conn.rooms:
            raise NotJoined(f"not in room {room!r}")
        await self._leave(conn, room)

    async def _leave(self, conn: Connection, room: str) -> None:
        conn.rooms.discard(room)
        self.ordering.left(conn.slug, room, conn.sid)
        await self._out.leave_room(conn.slug, conn.sid, room)
        member = conn.principal.member()
        if await self.presence.leave(conn.slug, room, conn.sid, member["id"]):
            await self._member_left(conn.slug, room, member)

    async def _member_left(self, slug: str, room: str, member: Member) -> None:
        """A user's last socket left ``room`` (here, or on a node found dead)."""
        await self._out.emit_presence(slug, room, "leave", member, None)
        for listener in self._listeners:
            await listener.on_member_left(slug, room, member)

    async def members(self, conn: Connection, room: str) -> list[Member]:
        self.check_room(conn, room)
        return await self.presence.members(conn.slug, room)

    @staticmethod
    def check_room(conn: Connection, room: str) -> None:
        if not conn.principal.may_join(room):
            raise RoomForbidden(f"the token does not allow room {room!r}")

    # -- messages -------------------------------------------------------------------------------

    @staticmethod
    def require_joined(conn: Connection, room: str) -> None:
        if room not in conn.rooms:
            raise NotJoined(f"join room {room!r} before sending to it")

    async def send(
        self, conn: Connection, keys: TenantKeys, room: str, body: Any, client_id: str | None
    ) -> StoredRow:
        """A socket's message: only to a joined room; the sender does not get it back. The
        caller answers right away (in the same step): the ack follows the message in order."""
        self.require_joined(conn, room)
        _require_active(keys)
        principal = conn.principal
        encoded = encode_body(body, keys.limits.max_message_bytes)
        # Announced until delivered: a copy read back from the database must not reach the
        # sender before its own delivery, which knows to skip it.
        sending = (principal.user_id, encoded)
        self.ordering.sending(conn.slug, room, sending)
        try:
            return await self._publish(
                keys, room, principal.user_id, principal.name, encoded, client_id, conn.sid
            )
        finally:
            self.ordering.sent(conn.slug, room, sending, conn.sid)

    async def publish(
        self,
        keys: TenantKeys,
        room: str,
        sender_id: str,
        sender_name: str | None,
        body: Any,
        client_id: str | None,
        *,
        skip_sid: str | None = None,
    ) -> StoredRow:
        """The one store-then-broadcast path (socket ``message`` and REST publish). A resend of
        a stored ``client_id`` returns the original (``duplicate``); it is broadcast again, since
        its first attempt may have been stored but never sent (the database answered after the
        connection broke), and ordered delivery drops it wherever it went out already.
        The writer answers a failed batch with ``Unavailable``."""
        _require_active(keys)
        encoded = encode_body(body, keys.limits.max_message_bytes)
        return await self._publish(keys, room, sender_id, sender_name, encoded, client_id, skip_sid)

    async def _publish(
        self,
        keys: TenantKeys,
        room: str,
        sender_id: str,
        sender_name: str | None,
        encoded: str,
        client_id: str | None,
        skip_sid: str | None,
    ) -> StoredRow:
        row = await self._messages.send(
            NewMessage(keys.tenant.id, room, sender_id, sender_name, encoded, client_id)
        )
        slug = keys.tenant.slug
        if skip_sid is None:
            self.ordering.deliver(slug, row)
            waiter = None
        else:
            waiter = self.ordering.deliver_own(slug, row, skip_sid)
        self._out.to_other_nodes(slug, row, skip_sid)
        if waiter is not None:
            # The sender's ack follows its message: wait for what comes before it (bounded).
            try:
                await asyncio.wait_for(waiter, self._own_wait)
            except TimeoutError:
                self.ordering.disown(slug, room, row.seq)
        if not row.duplicate and self._listeners:
            rows = (row,)
            for listener in self._listeners:
                await listener.on_stored(slug, rows)
        return row

    async def publish_many(
        self, keys: TenantKeys, items: Sequence[Outgoing]
    ) -> list[StoredRow | OrgcastError]:
        """A batch from a tenant's backend: each item's body is checked on its own (an item
        that fails gets its error in its place), the rest are stored in one transaction, then
        delivered in input order through ordered delivery, like ``publish``. Results in input
        order."""
        _require_active(keys)
        errors: dict[int, OrgcastError] = {}
        accepted: list[tuple[int, NewMessage]] = []
        for index, item in enumerate(items):
            try:
                encoded = encode_body(item.body, keys.limits.max_message_bytes)
            except OrgcastError as exc:
                errors[index] = exc
                continue
            message = NewMessage(
                keys.tenant.id, item.room, item.sender_id, item.sender_name, encoded,
                item.client_id,
            )  # fmt: skip
            accepted.append((index, message))
        stored = await self._messages.send_many([m for _, m in accepted])
        rows = {index: row for (index, _), row in zip(accepted, stored, strict=True)}
        slug = keys.tenant.slug
        # As ``_publish`` does, resends included: ordered delivery drops what went out already.
        for row in stored:
            self.ordering.deliver(slug, row)
            self._out.to_other_nodes(slug, row, None)
        fresh = [row for row in stored if not row.duplicate]
        if fresh:
            for listener in self._listeners:
                await listener.on_stored(slug, fresh)
        return [rows[i] if i in rows else errors[i] for i in range(len(items))]

    async def history(
        self,
        conn: Connection,
        room: str,
        *,
        before_seq: int | None,
        after_seq: int | None,
        limit: int,
        decode: BodyDecoder = json.loads,
    ) -> tuple[list[dict[str, Any]], bool]:
        self.check_room(conn, room)
        return await self._messages.history(
            conn.tenant_id, room, before_seq=before_seq, after_seq=after_seq, limit=limit,
            decode=decode,
        )  # fmt: skip

    async def relay(
        self, conn: Connection, keys: TenantKeys, event: str, room: str, data: Any
    ) -> None:
        """An ephemeral event (typing, cursors): not stored, volatile, to a joined room."""
        self.require_joined(conn, room)
        encode_body(data, keys.limits.max_message_bytes, "data")
        await self._out.emit_volatile(
            conn.slug,
            room,
            event,
            {"room": room, "sender": conn.principal.member(), "data": data},
            conn.sid,
        )

    # -- tenants and live state -----------------------------------------------------------------

    async def tenant_changed(self, slug: str) -> None:
        """A tenant was changed, suspended or deleted (``*``: any): cut its sockets if needed."""
        for name in self._out.live_slugs() if slug == "*" else {slug}:
            if self._out.local_connections(name) == 0:
                continue
            try:
                keys = await self._directory.lookup(name)
            except OrgcastError:
                continue  # database unavailable: the next connect or event checks again
            if keys is None or not keys.tenant.active:
                reason = TENANT_DELETED if keys is None else TENANT_SUSPENDED
                await self._out.disconnect_tenant(name, reason)
                if keys is None:
                    await self.presence.forget_tenant(name)

    def live_slugs(self) -> set[str]:
        return self._out.live_slugs()

    async def redis_health(self) -> tuple[bool, int]:
        """Whether Redis answers, and how many presence operations failed on it ((False, 0)
        on a node without Redis)."""
        if isinstance(self.presence, RedisPresence):
            return await self.presence.ping(), self.presence.errors
        return False, 0

    def local_connections(self) -> dict[str, int]:
        """Sockets on this node, per tenant with any."""
        return {slug: self._out.local_connections(slug) for slug in self._out.live_slugs()}

    async def live_counts(self, slug: str) -> dict[str, int]:
        return {
            "connections": await self.presence.connections(slug),
            "rooms": len(await self.presence.rooms(slug)),
        }

    async def room_members(self, slug: str) -> dict[str, int]:
        return await self.presence.rooms(slug)


def _require_active(keys: TenantKeys) -> None:
    if not keys.tenant.active:
        raise TenantSuspended("the tenant is suspended; resume it to publish")
