"""Engine.IO v4 and Socket.IO v5 spoken by hand over a real websocket, for tests that send what
no well-behaved client library would: malformed packets, binary frames, races."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from tests.support import Server


class RawSocket:
    """One Engine.IO websocket; ``recv`` answers the server's pings on the way."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, sid: str) -> None:
        self.ws = ws
        self.sid = sid

    @classmethod
    async def open(cls, server: Server, **headers: str) -> RawSocket:
        ws = await server.http.ws_connect(
            server.url + "/socket.io/?EIO=4&transport=websocket", headers=headers
        )
        first = await ws.receive_str(timeout=5)
        assert first.startswith("0"), first
        return cls(ws, json.loads(first[1:])["sid"])

    async def send(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            await self.ws.send_bytes(frame)
        else:
            await self.ws.send_str(frame)

    async def recv(self, within: float = 5.0) -> str:
        """The next text frame that is not a ping; raises ``ConnectionError`` once closed."""
        while True:
            message = await self.ws.receive(timeout=within)
            if message.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
            ):
                raise ConnectionError("closed")
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            if message.data == "2":
                await self.ws.send_str("3")
                continue
            return str(message.data)

    async def connect(self, slug: str, token: str) -> str:
        """Namespace CONNECT; returns the Socket.IO sid."""
        await self.send(f"40/{slug}," + json.dumps({"token": token}))
        reply = await self.recv()
        assert reply.startswith(f"40/{slug},"), reply
        return str(json.loads(reply.split(",", 1)[1])["sid"])

    async def ack(self, slug: str, ack_id: int, within: float = 5.0) -> Any:
        """Wait for the ack ``ack_id`` on ``/slug``; returns its one argument."""
        prefix = f"43/{slug},{ack_id}"
        while True:
            frame = await self.recv(within)
            if frame.startswith(prefix):
                return json.loads(frame[len(prefix) :])[0]

    async def call(self, slug: str, ack_id: int, event: str, payload: Any) -> Any:
        await self.send(f"42/{slug},{ack_id}" + json.dumps([event, payload]))
        return await self.ack(slug, ack_id)

    async def closed(self, within: float = 5.0) -> bool:
        """True once the server closed the socket (bounded wait)."""
        try:
            async with asyncio.timeout(within):
                while True:
                    await self.recv(within)
        except ConnectionError:
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        await self.ws.close()
