"""The JSON codec the Socket.IO server runs with.

``JsonCodec`` is orjson behind the ``dumps``/``loads`` interface python-socketio expects. It lets a
stored body travel as an ``orjson.Fragment``: the JSON text kept in the database (or encoded once
on arrival) is written into each packet verbatim, never decoded and re-encoded per message or per
replayed row. Values orjson cannot encode (integers beyond 64 bits) fall back to the standard
library. orjson parses integers beyond 64 bits as floats: JavaScript clients cannot hold them
exactly either.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


class JsonCodec:
    @staticmethod
    def dumps(value: Any, **_: Any) -> str:
        try:
            return orjson.dumps(value).decode()
        except TypeError:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    @staticmethod
    def loads(text: str | bytes, **_: Any) -> Any:
        return orjson.loads(text)


def raw_json(text: str) -> Any:
    """A JSON text to embed as is in an outgoing packet."""
    return orjson.Fragment(text)
