"""The JSON codec and websocket class the Socket.IO server runs with.

``JsonCodec`` is orjson behind the ``dumps``/``loads`` interface python-socketio expects. It lets a
stored body travel as an ``orjson.Fragment``: the JSON text kept in the database (or encoded once
on arrival) is written into each packet verbatim, never decoded and re-encoded per message or per
replayed row. Values orjson cannot encode (integers beyond 64 bits) fall back to the standard
library. orjson parses integers beyond 64 bits as floats: JavaScript clients cannot hold them
exactly either.

``PlainWebSocket`` exists because python-engineio builds aiohttp's ``WebSocketResponse`` with its
default ``compress=True`` and ignores the server's ``websocket_compression`` option, so every
frame to a client that offers permessage-deflate was compressed (about 12 % of server CPU in the
fan-out benchmark and 120 KB of memory per socket).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from aiohttp import web
from engineio.async_drivers import aiohttp as engine_aiohttp


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


def websocket_class(compress: bool) -> type[engine_aiohttp.WebSocket]:
    class PlainWebSocket(engine_aiohttp.WebSocket):  # type: ignore[misc]
        async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
            request = environ["aiohttp.request"]
            self._sock = web.WebSocketResponse(
                max_msg_size=self.server.max_http_buffer_size, compress=compress
            )
            await self._sock.prepare(request)
            self.environ = environ
            await self.handler(self)
            return self._sock

    return PlainWebSocket
