"""Cheap Socket.IO clients for the idle-socket measurements: raw websockets that speak just enough
engine.io/Socket.IO to connect with a token, join a room and answer pings.

    python benchmarks/rawclients.py CONFIG.json

CONFIG: ``url``, ``namespace``, ``tokens`` (one per client), ``clients``, ``room`` (optional; each
client joins ``<room><i % rooms>``), ``rooms``, ``concurrency`` (connects in flight), ``upgrade``
(optional: each client opens its session with a long-polling handshake on a connection of its
own, closed after it, then upgrades it to a websocket as the official client does: "2probe",
"3probe", "5"; the namespace connect and join go over the websocket). Prints one
JSON line ``{"holding": n, "connect_s": ..., "cpu_s": ...}`` once every client is connected and
joined, then holds them until a line arrives on stdin, answers engine.io pings meanwhile, and
prints a last JSON line with its own CPU time over the hold (``hold_cpu_s``) before it exits.

No frame is decoded beyond what these steps need, so one process holds 10,000+ idle sockets with
little CPU: the server, not this generator, is what the figures describe.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import resource
import sys
import time
from typing import Any
from urllib.parse import urlsplit

MASK = b"\x00\x00\x00\x00"  # a valid (if trivial) client mask: the payload is sent as is


def frame(text: str) -> bytes:
    data = text.encode()
    n = len(data)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + MASK + data


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Client(asyncio.Protocol):
    __slots__ = ("buffer", "ns", "probing", "ready", "room", "state", "token", "transport",
                 "upgraded")  # fmt: skip

    def __init__(self, token: str, ns: str, room: str | None, ready: asyncio.Future[None],
                 probing: bool = False):  # fmt: skip
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.probing = probing  # upgrading a long-polling session: the probe comes first
        self.state = 0  # 0 open, 1 connect sent, 2 join sent, 3 idle
        self.ready = ready
        self.token = token
        self.ns = ns
        self.room = room

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed in state {self.state}: {exc}"))

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.fail("upgrade refused: " + buf[:80].decode(errors="replace"))
                return
            self.upgraded = True
            buf = buf[end + 4 :]
            if self.probing:
                self.send("2probe")
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            n = buf[1] & 0x7F
            at = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, at = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, at = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < at + n:
                break
            payload, buf = buf[at : at + n], buf[at + n :]
            if opcode == 1:
                self.on_text(payload)
            elif opcode == 9:
                self.send_raw(bytes((0x8A, 0x80 | len(payload))) + MASK + payload)
            elif opcode == 8:
                self.fail("closed by server")
                return
        self.buffer = buf

    def send_raw(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send(self, text: str) -> None:
        self.send_raw(frame(text))

    def fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.close()

    def on_text(self, payload: bytes) -> None:
        if payload == b"2":
            self.send("3")
            return
        if payload == b"6":  # a NOOP (the upgrade's)
            return
        if self.probing:
            if payload != b"3probe":
                self.fail("upgrade failed: " + payload.decode(errors="replace"))
                return
            self.probing = False
            self.send("5")
            self.send(f"40{self.ns}," + json.dumps({"token": self.token}))
            self.state = 1
            return
        if self.state == 0 and payload[:1] == b"0":
            self.send(f"40{self.ns}," + json.dumps({"token": self.token}))
            self.state = 1
        elif self.state == 1 and payload.startswith(b"40"):
            if self.room is None:
                self.state = 3
                self.ready.set_result(None)
            else:
                self.send(f'42{self.ns},1["join",' + json.dumps({"room": self.room}) + "]")
                self.state = 2
        elif self.state == 1 and payload.startswith(b"44"):
            self.fail("connect refused: " + payload.decode(errors="replace"))
        elif self.state == 2 and payload.startswith(f"43{self.ns},1".encode()):
            if b'"ok":true' not in payload:
                self.fail("join refused: " + payload.decode(errors="replace"))
                return
            self.state = 3
            if not self.ready.done():
                self.ready.set_result(None)


async def polling_session(host: str, port: int, path: str) -> str:
    """A long-polling handshake on a connection closed after it; returns the session id."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"GET {path}?EIO=4&transport=polling HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        answer = await reader.read(-1)
    finally:
        writer.close()
    found = re.search(rb'"sid":"([^"]+)"', answer)
    if not answer.startswith(b"HTTP/1.1 200") or found is None:
        raise ConnectionError("polling handshake refused: " + answer[:80].decode(errors="replace"))
    return found.group(1).decode()


async def connect(
    host: str, port: int, path: str, token: str, ns: str, room: str | None, upgrade: bool = False
) -> Client:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    query = "EIO=4&transport=websocket"
    if upgrade:
        query += "&sid=" + await polling_session(host, port, path)
    _, client = await loop.create_connection(
        lambda: Client(token, ns, room, ready, probing=upgrade), host, port
    )
    key = base64.b64encode(os.urandom(16)).decode()
    client.send_raw(
        (
            f"GET {path}?{query} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await ready
    return client


async def main(config: dict[str, Any]) -> None:
    url = urlsplit(config["url"])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    path = config.get("path", "/socket.io/")
    ns = config["namespace"]
    tokens = config["tokens"]
    n = config.get("clients", len(tokens))
    rooms = config.get("rooms", 1)
    room = config.get("room")
    gate = asyncio.Semaphore(config.get("concurrency", 100))
    upgrade = bool(config.get("upgrade"))

    failed: dict[str, int] = {}

    async def one(i: int) -> Client | None:
        async with gate:
            name = None if room is None else f"{room}{i % rooms}"
            try:
                return await asyncio.wait_for(
                    connect(host, port, path, tokens[i], ns, name, upgrade), 300
                )
            except (OSError, TimeoutError) as exc:
                key = type(exc).__name__
                failed[key] = failed.get(key, 0) + 1
                return None

    cpu0, t0 = cpu_s(), time.monotonic()
    clients = [c for c in await asyncio.gather(*[one(i) for i in range(n)]) if c is not None]
    connect_s = time.monotonic() - t0
    print(json.dumps({"holding": len(clients), "failed": failed, "connect_s": round(connect_s, 3),
                      "connects_per_s": round(n / connect_s, 1),
                      "cpu_s": round(cpu_s() - cpu0, 3)}), flush=True)  # fmt: skip
    cpu1 = cpu_s()
    t1 = time.monotonic()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    hold_cpu = cpu_s() - cpu1
    hold_s = time.monotonic() - t1
    alive = sum(1 for c in clients if c.transport is not None and not c.transport.is_closing())
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    print(json.dumps({"alive": alive, "hold_s": round(hold_s, 2),
                      "hold_cpu_s": round(hold_cpu, 3)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        conf = json.load(f)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(conf))
