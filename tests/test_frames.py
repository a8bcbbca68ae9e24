"""Websocket frames written straight to the transport (realtime/patches.py, 9): one frame per
broadcast for every recipient, each socket's frames joined in one write, a paused transport
(a client that reads slowly) queued in order; and the websocket protocol around them (fragments,
control frames, the close handshake both ways, the size limit) as a client sees it on the wire.

The wire-level tests speak RFC 6455 over a bare TCP stream, so they choose when to read, how to
fragment, and what to answer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web, web_protocol
from aiohttp._websocket.helpers import websocket_mask
from aiohttp._websocket.writer import WebSocketWriter
from engineio import packet as engine_packet

from orgcast.realtime import patches
from orgcast.state import REALTIME
from tests.rawsocket import RawSocket
from tests.support import Server, eventually, objects_made_inside

WITHIN = 10.0
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


# -- the frame bytes ------------------------------------------------------------------------------


class Recorded:
    """A transport that keeps what is written."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 70_000])
async def test_a_prebuilt_frame_is_byte_for_byte_what_aiohttp_writes(size: int) -> None:
    transport = Recorded()
    writer = WebSocketWriter(None, transport)  # type: ignore[arg-type]
    text = "4" + "é" * (size // 2) + "x" * (size % 2)
    await writer.send_frame(text.encode(), TEXT)  # type: ignore[arg-type]
    assert patches._frame(text) == bytes(transport.data)
    transport.data.clear()
    await writer.send_frame(b"\x00" * size, BINARY)  # type: ignore[arg-type]
    assert patches._frame(b"\x00" * size) == bytes(transport.data)


def test_the_ping_frame_is_a_constant_and_a_pong_is_its_text() -> None:
    assert patches.PING_PACKET.frame == b"\x81\x012"
    assert patches.PING_PACKET.encode() == "2" and patches.PONG == "3"


# -- a bare websocket over TCP --------------------------------------------------------------------


class WireSocket:
    """One engine.io websocket over a bare TCP stream. Client frames are masked (unless told
    not to); nothing is read until the test asks."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server: Server, *, small_buffers: bool = False) -> WireSocket:
        url = urlsplit(server.url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if small_buffers:  # a client that reads slowly: little room in its kernel buffer
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (url.hostname, url.port))
        # A small stream limit: the stream stops reading from the kernel when it holds 8 KiB.
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                f"Host: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WITHIN)
        assert head.startswith(b"HTTP/1.1 101"), head
        wire = cls(reader, writer)
        opened = await wire.text()
        assert opened.startswith("0{"), opened
        return wire

    def send(self, payload: bytes | str, opcode: int = TEXT, *, fin: bool = True,
             mask: bool = True) -> None:  # fmt: skip
        data = payload.encode() if isinstance(payload, str) else payload
        size = len(data)
        first = (0x80 if fin else 0) | opcode
        bit = 0x80 if mask else 0
        if size < 126:
            header = struct.pack("!BB", first, bit | size)
        elif size < 65536:
            header = struct.pack("!BBH", first, bit | 126, size)
        else:
            header = struct.pack("!BBQ", first, bit | 127, size)
        if mask:
            key = os.urandom(4)
            masked = bytearray(data)
            websocket_mask(key, masked)
            data = bytes(masked)
            header += key
        self.writer.write(header + data)

    async def frame(self, within: float = WITHIN) -> tuple[bool, int, bytes]:
        """The next frame: (fin, opcode, payload); server frames must not be masked."""
        async with asyncio.timeout(within):
            first, second = await self.reader.readexactly(2)
            assert not second & 0x80, "a server frame is never masked"
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return bool(first & 0x80), first & 0x0F, await self.reader.readexactly(size)

    async def text(self, within: float = WITHIN) -> str:
        """The next text frame that is not an engine.io ping (pings are answered)."""
        while True:
            fin, opcode, payload = await self.frame(within)
            assert fin and opcode == TEXT, (fin, opcode, payload)
            if payload == b"2":
                self.send("3")
                continue
            return payload.decode()

    async def until_close(self) -> tuple[list[bytes], int, bytes]:
        """Frames up to the server's close: (the text frames' payloads before it, the close
        code, the close payload); any other frame before the close fails."""
        before = []
        while True:
            _, opcode, payload = await self.frame()
            if opcode == CLOSE:
                return before, struct.unpack("!H", payload[:2])[0], payload
            assert opcode == TEXT, (opcode, payload)
            before.append(payload)

    async def eof(self, within: float = WITHIN) -> bool:
        """The server ended the connection (a reset too: the server may close before the
        client's half of the close handshake arrives)."""
        async with asyncio.timeout(within):
            try:
                return await self.reader.read(1) == b""
            except ConnectionResetError:
                return True

    async def join(self, server: Server, slug: str, sub: str = "bob") -> None:
        token = await server.token(slug, sub)
        self.send(f"40/{slug}," + json.dumps({"token": token}))
        assert (await self.text()).startswith(f"40/{slug},")
        self.send(f'42/{slug},1["join",{{"room":"lobby"}}]')
        ack = await self.text()
        assert ack.startswith(f"43/{slug},1[") and '"ok":true' in ack, ack

    def close(self) -> None:
        self.writer.close()


def only_engine_socket(server: Server, slug: str) -> Any:
    """The server's engine.io socket of the one connection on ``/slug``."""
    sio = server.app[REALTIME].sio
    sids = [sid for sid, _ in sio.manager.get_participants("/" + slug, None)]
    assert len(sids) == 1, sids
    return sio.eio.sockets[sio.manager.eio_sid_from_sid(sids[0], "/" + slug)]


# -- many recipients, one frame -------------------------------------------------------------------


async def test_a_broadcast_writes_one_prebuilt_frame_to_every_recipient(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = await server.create_tenant()
    raws = []
    for n in range(30):
        raw = await RawSocket.open(server)
        await raw.connect(tenant.slug, await server.token(tenant.slug, f"user-{n}"))
        assert (await raw.call(tenant.slug, 1, "join", {"room": "lobby"}))["ok"] is True
        raws.append(raw)
    written: list[Any] = []
    frame_of = patches.frame_of

    def spy(pkt: Any) -> bytes:
        written.append(pkt)
        return frame_of(pkt)

    monkeypatch.setattr(patches, "frame_of", spy)
    status, body = await server.request(
        "POST", f"/api/v1/tenants/{tenant.slug}/messages",
        json={"messages": [{"room": "lobby", "body": {"text": "to all"}}]},
    )  # fmt: skip
    assert status == 200 and body["results"][0]["ok"] is True, body

    async def message(raw: RawSocket) -> str:
        while '["message",' not in (text := await raw.recv()):
            pass  # others joining
        return text

    received = [await message(raw) for raw in raws]
    assert len(set(received)) == 1 and '"to all"' in received[0], received[:2]
    messages = [p for p in written if isinstance(p.data, str) and '"to all"' in p.data]
    assert len(messages) == len(raws)
    assert len({id(p) for p in messages}) == 1  # one packet, one frame, for all 30
    assert isinstance(messages[0], patches.FramePacket)
    for raw in raws:
        await raw.close()


# -- a client that reads slowly -------------------------------------------------------------------


async def test_a_client_that_stops_reading_gets_every_message_in_order_and_ephemera_only_in_time(
    server: Server,
) -> None:
    tenant = await server.create_tenant(ephemeral_events=["typing"])
    slow = await WireSocket.open(server, small_buffers=True)
    await slow.join(server, tenant.slug, "slow")
    queue = only_engine_socket(server, tenant.slug).queue
    assert isinstance(queue, patches.LeanQueue) and queue._transport is not None
    typist = await RawSocket.open(server)
    await typist.connect(tenant.slug, await server.token(tenant.slug, "typist"))
    assert (await typist.call(tenant.slug, 1, "join", {"room": "lobby"}))["ok"] is True

    async def typing(ack_id: int, n: int) -> None:
        reply = await typist.call(tenant.slug, ack_id, "typing", {"room": "lobby", "data": n})
        assert reply["ok"] is True, reply

    await typing(2, 0)  # caught up: delivered
    # The slow client reads nothing while ~6 MB of messages are published to its room.
    body = "x" * 2000
    batches, per_batch = 30, 100
    for b in range(batches):
        status, published = await server.request(
            "POST", f"/api/v1/tenants/{tenant.slug}/messages",
            json={"messages": [{"room": "lobby", "body": {"n": b * per_batch + i, "pad": body}}
                               for i in range(per_batch)]},
        )  # fmt: skip
        assert status == 200 and all(r["ok"] for r in published["results"]), published
    # Its transport is paused and the rest waits in its queue, past the volatile backlog.
    assert queue._protocol._paused
    assert queue.qsize() > patches.VOLATILE_BACKLOG
    await typing(3, 1)  # behind: dropped for the slow client

    got: list[int] = []
    typed: list[Any] = []
    while len(got) < batches * per_batch:
        text = await slow.text()
        assert text.startswith(f"42/{tenant.slug},"), text[:80]
        event, data = json.loads(text.split(",", 1)[1])
        if event == "typing":
            typed.append(data["data"])
        elif event == "message":
            got.append(data["body"]["n"])
    assert got == list(range(batches * per_batch))  # nothing lost, nothing reordered
    await typing(4, 2)  # caught up again: delivered
    while True:
        event, data = json.loads((await slow.text()).split(",", 1)[1])
        if event == "typing":
            typed.append(data["data"])
            break
    assert typed == [0, 2]
    assert queue.qsize() == 0 and queue._writer is None  # no task left for an idle socket
    slow.close()
    await typist.close()


# -- the websocket protocol on the wire -----------------------------------------------------------


async def test_a_fragmented_message_with_a_ping_between_its_fragments_is_answered_in_order(
    server: Server,
) -> None:
    tenant = await server.create_tenant()
    wire = await WireSocket.open(server)
    await wire.join(server, tenant.slug)
    packet = f'42/{tenant.slug},7["presence",{{"room":"lobby"}}]'
    wire.send(packet[:5], TEXT, fin=False)
    wire.send(packet[5:12], 0, fin=False)
    wire.send(b"are you there", PING)  # a control frame between fragments
    wire.send(packet[12:], 0, fin=True)
    assert await wire.frame() == (True, PONG, b"are you there")
    ack = await wire.text()
    assert ack.startswith(f"43/{tenant.slug},7[") and '"members"' in ack, ack
    wire.close()


async def test_a_close_from_the_client_is_answered_with_a_close_and_the_connection_ends(
    server: Server,
) -> None:
    tenant = await server.create_tenant()
    wire = await WireSocket.open(server)
    await wire.join(server, tenant.slug)
    wire.send(struct.pack("!H", 1000) + b"bye", CLOSE)  # fmt: skip
    _, code, _ = await wire.until_close()  # what was already on its way, then the close
    assert code == 1000
    assert await wire.eof()
    wire.close()


async def test_a_close_from_the_server_comes_after_what_was_queued_and_ends_the_connection(
    server: Server,
) -> None:
    tenant = await server.create_tenant()
    wire = await WireSocket.open(server)
    try:
        await wire.join(server, tenant.slug)
        # The engine closes the socket (as at shutdown or after a ping timeout): its CLOSE
        # packet is written after what was queued, then the websocket close.
        engine = only_engine_socket(server, tenant.slug)
        await engine.send(engine_packet.Packet(engine_packet.MESSAGE, "last words"))
        await engine.close(wait=False)
        before, _, payload = await wire.until_close()
        texts = [frame.decode() for frame in before]
        assert texts == ["4last words", "1"], texts  # the message, then the engine's CLOSE
        wire.send(payload[:2], CLOSE)  # the client's half of the handshake
        assert await wire.eof()
    finally:
        wire.close()


async def test_a_frame_over_the_size_limit_closes_the_connection(server: Server) -> None:
    tenant = await server.create_tenant()
    wire = await WireSocket.open(server)
    await wire.join(server, tenant.slug)
    limit = server.settings.server.max_packet_bytes
    wire.send("4" + "x" * limit)
    _, code, _ = await wire.until_close()
    assert code == 1009  # message too big
    assert await wire.eof()
    wire.close()


# -- the environ of an open websocket -------------------------------------------------------------


async def test_an_open_websocket_keeps_a_trimmed_environ_that_later_namespace_connects_still_read(
    server: Server,
) -> None:
    allowed = await server.create_tenant(allowed_origins=["https://app.example.com"])
    other = await server.create_tenant(allowed_origins=["https://other.example.com"])
    raw = await RawSocket.open(server, Origin="https://app.example.com")
    try:
        await raw.connect(allowed.slug, await server.token(allowed.slug))
        sio = server.app[REALTIME].sio
        environ = sio.environ[raw.sid]
        assert set(environ) <= set(patches.ENVIRON_KEPT)
        assert environ["HTTP_ORIGIN"] == "https://app.example.com"
        # A second namespace on the same socket is still checked against the kept origin.
        await raw.send(f"40/{other.slug}," + json.dumps({"token": await server.token(other.slug)}))
        refused = await raw.recv()
        assert refused.startswith(f"44/{other.slug},") and "origin" in refused, refused
    finally:
        await raw.close()


# -- the connection after the handshake is orgcast's (patches.py, 10) -----------------------------


def aiohttp_objects_of_websockets(objects: list[Any]) -> list[Any]:
    """What of aiohttp's websocket machinery is among ``objects``: a handed-over websocket
    keeps none of it (patches.py, 10)."""
    return [
        obj
        for obj in objects
        if isinstance(obj, web.WebSocketResponse)
        # The handlers still connected are the test's HTTP keep-alive connections.
        or (isinstance(obj, web_protocol.RequestHandler) and obj.transport is None)
        or (isinstance(obj, web.BaseRequest) and obj.query.get("transport") == "websocket")
    ]


async def test_an_open_websocket_keeps_no_aiohttp_request_handler_or_response(
    server: Server,
) -> None:
    tenant = await server.create_tenant()
    wires = []
    with objects_made_inside() as alive:
        for n in range(10):
            wire = await WireSocket.open(server)
            await wire.join(server, tenant.slug, f"user-{n}")
            wires.append(wire)
        kept = aiohttp_objects_of_websockets(alive())
    try:
        sio = server.app[REALTIME].sio
        for sid, eio_sid in sio.manager.get_participants("/" + tenant.slug, None):
            queue = sio.eio.sockets[eio_sid].queue
            assert isinstance(queue._ws, patches.EngineWire), sid
            assert queue._transport is queue._ws.transport  # frames still go straight out
        assert kept == []
        # Still a working websocket both ways: a ping answered, a message delivered.
        wires[0].send(b"still there?", PING)
        while (frame := await wires[0].frame())[1] == TEXT:
            pass  # others' presence
        assert frame == (True, PONG, b"still there?")
        status, body = await server.request(
            "POST", f"/api/v1/tenants/{tenant.slug}/messages",
            json={"messages": [{"room": "lobby", "body": {"text": "hi"}}]},
        )  # fmt: skip
        assert status == 200, body
        for wire in wires:
            while '"hi"' not in (text := await wire.text()):
                assert '"presence"' in text, text
    finally:
        for wire in wires:
            wire.close()


def masked_frame(first: int, payload: bytes) -> bytes:
    """A client frame with any first byte (FIN, reserved bits, opcode)."""
    key = os.urandom(4)
    data = bytearray(payload)
    websocket_mask(key, data)
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", first, 0x80 | size)
    else:
        header = struct.pack("!BBH", first, 0x80 | 126, size)
    return header + key + data


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x81\x03" + b"40/", 1002),  # unmasked (RFC 6455 5.1: the server must close)
        (masked_frame(0xC1, b"40"), 1002),  # a reserved bit, no extension negotiated
        (masked_frame(0x83, b"40"), 1002),  # an unknown opcode
        (masked_frame(0x80, b"40"), 1002),  # a continuation with nothing to continue
        (masked_frame(0x09, b"x"), 1002),  # a fragmented control frame
        (masked_frame(0x81, b"4\xff\xfe"), 1007),  # text that is not UTF-8
    ],
    ids=[
        "unmasked",
        "reserved-bit",
        "unknown-opcode",
        "stray-continuation",
        "fragmented-ping",
        "bad-utf8",
    ],
)
async def test_a_frame_that_breaks_the_protocol_fails_the_connection_with_its_code(
    server: Server, frame: bytes, code: int
) -> None:
    tenant = await server.create_tenant()
    wire = await WireSocket.open(server)
    try:
        await wire.join(server, tenant.slug)
        engine = only_engine_socket(server, tenant.slug)
        wire.writer.write(frame)
        _, closed_with, _ = await wire.until_close()
        assert closed_with == code
        assert await wire.eof()
        await eventually_closed(server, engine)
    finally:
        wire.close()


async def test_a_frame_announcing_more_than_the_limit_is_refused_before_its_payload_arrives(
    server: Server,
) -> None:
    wire = await WireSocket.open(server)
    try:
        limit = server.settings.server.max_packet_bytes
        wire.writer.write(struct.pack("!BBQ", 0x81, 0x80 | 127, limit + 1) + os.urandom(4))
        _, opcode, payload = await wire.frame()
        assert opcode == CLOSE and struct.unpack("!H", payload[:2])[0] == 1009
        assert await wire.eof()
    finally:
        wire.close()


async def test_frames_split_anywhere_across_reads_are_joined(server: Server) -> None:
    tenant = await server.create_tenant()
    wire = await WireSocket.open(server)
    try:
        token = await server.token(tenant.slug)
        connect = masked_frame(0x81, f"40/{tenant.slug},{json.dumps({'token': token})}".encode())
        join = masked_frame(0x81, f'42/{tenant.slug},1["join",{{"room":"lobby"}}]'.encode())
        data = connect + join
        for start in range(0, len(data), 3):  # three bytes a write: headers split too
            wire.writer.write(data[start : start + 3])
            await wire.writer.drain()
            await asyncio.sleep(0)
        assert (await wire.text()).startswith(f"40/{tenant.slug},")
        ack = await wire.text()
        assert ack.startswith(f"43/{tenant.slug},1[") and '"ok":true' in ack, ack
    finally:
        wire.close()


async def eventually_closed(server: Server, engine: Any) -> None:
    """The engine socket closed as a transport close, and the server forgot it."""
    sockets = server.app[REALTIME].sio.eio.sockets

    async def gone() -> bool:
        return bool(engine.closed) and engine.sid not in sockets

    await eventually(gone, within=WITHIN)


async def test_frames_sent_with_the_handshake_are_read_after_it(server: Server) -> None:
    """What the client sends right behind its handshake, in the same segment, is not lost: it
    waited in aiohttp's buffer and goes to the wire with the connection."""
    tenant = await server.create_tenant()
    token = await server.token(tenant.slug)
    url = urlsplit(server.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        handshake = (
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            f"Host: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        connect = masked_frame(0x81, f"40/{tenant.slug},{json.dumps({'token': token})}".encode())
        writer.write(handshake + connect)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WITHIN)
        assert head.startswith(b"HTTP/1.1 101"), head
        wire = WireSocket(reader, writer)
        assert (await wire.text()).startswith("0{")
        assert (await wire.text()).startswith(f"40/{tenant.slug},")
    finally:
        writer.close()


async def test_a_client_that_never_answers_the_servers_close_is_cut_off(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(patches, "CLOSE_TIMEOUT", 0.3)
    tenant = await server.create_tenant()
    wire = await WireSocket.open(server)
    try:
        await wire.join(server, tenant.slug)
        engine = only_engine_socket(server, tenant.slug)
        await engine.close(wait=False)
        while (await wire.frame())[1] != CLOSE:
            pass
        # No close from the client: the server ends the connection anyway.
        assert await wire.eof(within=5.0)
        await eventually_closed(server, engine)
    finally:
        wire.close()
