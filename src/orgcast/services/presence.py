"""Who is in which room, by user (a user with two tabs is one member), and how many sockets each
tenant has connected.

``LocalPresence`` keeps this node's view in memory (single node). ``RedisPresence`` in
``cluster.py`` keeps the same structure in Redis for the whole cluster. Both answer
``join``/``leave`` with whether this was the user's first socket in / last socket out of the room,
which is when a ``presence`` event is due, and ``acquire``/``release`` a connection slot against
the tenant's ``max_connections``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol

# Rooms whose names start with this are the server's own bookkeeping (clients cannot name them:
# "~" is not allowed in room names) and are left out of room listings.
HIDDEN_ROOM_PREFIX = "~"


class Presence(Protocol):
    async def join(self, tenant: str, room: str, sid: str, member: dict[str, str]) -> bool: ...
    async def leave(self, tenant: str, room: str, sid: str, user_id: str) -> bool: ...
    async def members(self, tenant: str, room: str) -> list[dict[str, str]]: ...
    async def present(self, tenant: str, room: str, user_id: str) -> bool: ...
    async def rooms(self, tenant: str) -> dict[str, int]: ...
    async def forget_tenant(self, tenant: str) -> None: ...
    async def acquire(self, tenant: str, limit: int) -> bool: ...
    async def release(self, tenant: str) -> None: ...
    async def connections(self, tenant: str) -> int: ...


class LocalPresence:
    def __init__(self) -> None:
        # tenant -> room -> user id -> (member, {sid})
        self._rooms: dict[str, dict[str, dict[str, tuple[dict[str, str], set[str]]]]] = defaultdict(
            dict
        )
        self._connections: dict[str, int] = defaultdict(int)

    async def join(self, tenant: str, room: str, sid: str, member: dict[str, str]) -> bool:
        users = self._rooms[tenant].setdefault(room, {})
        entry = users.get(member["id"])
        if entry is None:
            users[member["id"]] = (member, {sid})
            return True
        entry[1].add(sid)
        return False

    async def leave(self, tenant: str, room: str, sid: str, user_id: str) -> bool:
        users = self._rooms.get(tenant, {}).get(room)
        if not users or user_id not in users:
            return False
        sids = users[user_id][1]
        sids.discard(sid)
        if sids:
            return False
        del users[user_id]
        if not users:
            del self._rooms[tenant][room]
            if not self._rooms[tenant]:
                del self._rooms[tenant]
        return True

    async def members(self, tenant: str, room: str) -> list[dict[str, str]]:
        # The stored member dicts themselves (callers only read them): a join's ack lists the
        # room's members, so a copy each would cost every join in proportion to the room.
        users = self._rooms.get(tenant, {}).get(room, {})
        return [member for member, _ in users.values()]

    async def present(self, tenant: str, room: str, user_id: str) -> bool:
        return user_id in self._rooms.get(tenant, {}).get(room, {})

    async def rooms(self, tenant: str) -> dict[str, int]:
        return {
            room: len(users)
            for room, users in self._rooms.get(tenant, {}).items()
            if not room.startswith(HIDDEN_ROOM_PREFIX)
        }

    async def forget_tenant(self, tenant: str) -> None:
        self._rooms.pop(tenant, None)

    async def acquire(self, tenant: str, limit: int) -> bool:
        if self._connections[tenant] >= limit:
            return False
        self._connections[tenant] += 1
        return True

    async def release(self, tenant: str) -> None:
        self._connections[tenant] -= 1
        if self._connections[tenant] <= 0:
            del self._connections[tenant]

    async def connections(self, tenant: str) -> int:
        return self._connections.get(tenant, 0)

    def member(self, tenant: str, room: str, user_id: str) -> dict[str, str] | None:
        entry = self._rooms.get(tenant, {}).get(room, {}).get(user_id)
        return None if entry is None else entry[0]

    def has_socket(self, tenant: str, room: str, user_id: str, sid: str) -> bool:
        entry = self._rooms.get(tenant, {}).get(room, {}).get(user_id)
        return entry is not None and sid in entry[1]

    def entries(self) -> list[tuple[str, str, str, dict[str, str]]]:
        """Every (tenant, room, sid, member) this node holds, to re-register after a Redis loss."""
        return [
            (tenant, room, sid, member)
            for tenant, rooms in self._rooms.items()
            for room, users in rooms.items()
            for member, sids in users.values()
            for sid in sids
        ]

    def connection_counts(self) -> dict[str, int]:
        return dict(self._connections)
