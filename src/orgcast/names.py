"""The shapes of the names clients and administrators choose: tenant slugs and room names.

The patterns are anchored because they also go into the OpenAPI document, where a JSON Schema
``pattern`` is not; code checks with ``fullmatch`` (``re.match`` with ``$`` would let a trailing
newline through). Every layer (services, the Socket.IO and HTTP transports) reads them here.
"""

from __future__ import annotations

import re

SLUG_PATTERN = r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$"
ROOM_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"
ROOM_RULE = "room must be 1-128 characters of A-Z a-z 0-9 _ . : @ -"

_SLUG = re.compile(SLUG_PATTERN)
_ROOM = re.compile(ROOM_PATTERN)


def is_slug(value: object) -> bool:
    return isinstance(value, str) and _SLUG.fullmatch(value) is not None


def is_room(value: object) -> bool:
    return isinstance(value, str) and _ROOM.fullmatch(value) is not None
