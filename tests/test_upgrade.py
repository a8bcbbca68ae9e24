"""A long-polling socket upgraded to a websocket (realtime/patches.py, 10): the websocket is
served by orgcast's ``EngineWire`` once the client completes the upgrade, as a websocket opened
directly is, and the upgrade behaves as the engine's (probe, NOOP for the poll in flight, the
upgrade packet), with its failure cases: the socket stays on long-polling and loses nothing.

The raw tests speak long-polling over HTTP and the websocket over a bare TCP stream, so they
choose when each side speaks.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any
from urllib.parse import urlsplit

import pytest

from orgcast.realtime import patches
from orgcast.state import REALTIME
from tests.support import Server, eventually, objects_made_inside
from tests.test_frames import CLOSE, WITHIN, WireSocket, aiohttp_objects_of_websockets
from tests.test_realtime_connect import polling_server

__all__ = ["polling_server"]
SEPARATOR = "\x1e"


class Polling:
    """One Engine.IO long-polling session spoken by hand."""

    def __init__(self, server: Server, sid: str) -> None:
        self.server = server
        self.sid = sid

    @classmethod
    async def open(cls, server: Server) -> Polling:
        async with server.http.get(server.url + "/socket.io/?EIO=4&transport=polling") as resp:
            body = await resp.text()
        assert body.startswith("0{"), body
        return cls(server, json.loads(body[1:])["sid"])

    @property
    def url(self) -> str:
        return f"{self.server.url}/socket.io/?EIO=4&transport=polling&sid={self.sid}"

    async def get(self) -> tuple[int, list[str]]:
        """One poll: its status and packets (pings answered on the way, and left out)."""
        async with asyncio.timeout(WITHIN):
            async with self.server.http.get(self.url) as resp:
                status, body = resp.status, await resp.text()
        if status != 200:
            return status, [body]
        packets = body.split(SEPARATOR)
        if "2" in packets:
            await self.post("3")
        return status, [p for p in packets if p != "2"]

    async def post(self, *packets: str) -> int:
        async with asyncio.timeout(WITHIN):
            async with self.server.http.post(self.url, data=SEPARATOR.join(packets)) as resp:
                await resp.read()
                return resp.status

    async def until(self, predicate: Any) -> str:
        """Poll until a packet satisfies ``predicate``; returns it."""
        async with asyncio.timeout(WITHIN):
            while True:
                status, packets = await self.get()
                assert status == 200, packets
                for pkt in packets:
                    if predicate(pkt):
                        return pkt

    async def join(self, slug: str, token: str) -> None:
        assert await self.post(f"40/{slug}," + json.dumps({"token": token})) == 200
        await self.until(lambda p: p.startswith(f"40/{slug},"))
        assert await self.post(f'42/{slug},1["join",{{"room":"lobby"}}]') == 200
        ack = await self.until(lambda p: p.startswith(f"43/{slug},1["))
        assert '"ok":true' in ack, ack

    async def upgrade(self) -> WireSocket:
        """The websocket of this session, handshake answered (nothing sent on it yet)."""
        url = urlsplit(self.server.url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /socket.io/?EIO=4&transport=websocket&sid={self.sid} HTTP/1.1\r\n"
                f"Host: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WITHIN)
        assert head.startswith(b"HTTP/1.1 101"), head
        return WireSocket(reader, writer)


async def publish(server: Server, slug: str, *texts: str) -> None:
    status, body = await server.request(
        "POST", f"/api/v1/tenants/{slug}/messages",
        json={"messages": [{"room": "lobby", "body": {"text": t}} for t in texts]},
    )  # fmt: skip
    assert status == 200, body


def texts_in(packets: list[str]) -> list[str]:
    """The message texts among socket.io event packets, in order."""
    found = []
    for pkt in packets:
        if pkt.startswith("42/"):
            event = json.loads(pkt[pkt.index("[") :])
            if event[0] == "message":
                found.append(event[1]["body"]["text"])
    return found


def engine_socket(server: Server, sid: str) -> Any:
    return server.app[REALTIME].sio.eio.sockets[sid]


# -- clients ------------------------------------------------------------------------------------


async def test_a_python_client_upgrades_and_its_websocket_is_an_engine_wire(
    polling_server: Server,
) -> None:
    server = polling_server
    tenant = await server.create_tenant()
    ns = "/" + tenant.slug
    received: dict[str, list[Any]] = {}
    # Only what this test creates is collected and scanned: the whole heap, late in a full run,
    # takes seconds, and meanwhile the loop the clients share is blocked (they time out).
    with objects_made_inside() as alive:
        clients = []
        for n in range(5):
            client = await server.connect(
                tenant.slug, await server.token(tenant.slug, f"user-{n}"),
                transports=["polling", "websocket"],
            )  # fmt: skip
            received[client.get_sid(ns)] = inbox = []
            client.on("message", inbox.append, namespace=ns)
            clients.append(client)
        for client in clients:
            ack = await client.call("join", {"room": "lobby"}, namespace=ns, timeout=WITHIN)
            assert ack["ok"] is True, ack
        sio = server.app[REALTIME].sio
        eio_sids = [sio.manager.eio_sid_from_sid(sid, ns) for sid in received]

        async def upgraded() -> bool:
            return all(c.transport() == "websocket" for c in clients) and all(
                isinstance(sio.eio.sockets[s].queue._ws, patches.EngineWire) for s in eio_sids
            )

        await eventually(upgraded)
        for eio_sid in eio_sids:
            socket = sio.eio.sockets[eio_sid]
            assert socket.upgraded and not socket.upgrading
            assert socket.queue._transport is socket.queue._ws.transport  # frames go straight out
            environ = sio.environ[eio_sid]
            assert set(environ) <= set(patches.ENVIRON_KEPT) and "aiohttp.request" not in environ
            assert environ["orgcast.remote"] == "127.0.0.1"
        assert aiohttp_objects_of_websockets(alive()) == []
    # Both ways over the upgraded websockets: a message with its ack, a broadcast to everyone.
    ack = await clients[0].call(
        "message", {"room": "lobby", "body": {"text": "from a client"}}, namespace=ns,
        timeout=WITHIN,
    )  # fmt: skip
    assert ack["ok"] is True, ack
    await publish(server, tenant.slug, "from the api")

    async def delivered() -> bool:
        return all(
            "from the api" in [m["body"]["text"] for m in inbox] for inbox in received.values()
        )

    await eventually(delivered)
    for sid, inbox in received.items():
        texts = [m["body"]["text"] for m in inbox]
        if sid != clients[0].get_sid(ns):
            assert texts == ["from a client", "from the api"], texts


class Marker:
    """An object the heap scan below can be asked about."""

    def __init__(self) -> None:
        self.cycle: Any = self


def test_the_heap_scan_sees_only_the_objects_made_inside_it() -> None:
    """The scan the first test makes takes the same time however large the heap: it neither
    collects nor lists what existed before (in a full run, over a million objects: scanning them
    all can block the loop past the clients' 3 s read timeout, and then they disconnect)."""
    before = Marker()
    with objects_made_inside() as alive:
        kept = Marker()
        Marker()  # garbage, a reference cycle: the collection frees it
        found = [obj for obj in alive() if isinstance(obj, Marker)]
    assert before not in found and found == [kept]


# -- the upgrade on the wire ----------------------------------------------------------------------


async def test_what_is_queued_during_the_upgrade_arrives_on_the_websocket_in_order(
    polling_server: Server,
) -> None:
    server = polling_server
    tenant = await server.create_tenant()
    polling = await Polling.open(server)
    await polling.join(tenant.slug, await server.token(tenant.slug))
    await publish(server, tenant.slug, "polled")
    assert await polling.until(lambda p: '"polled"' in p)
    # A poll in flight when the websocket comes: the probe's answer releases it with a NOOP.
    in_flight = asyncio.ensure_future(polling.get())
    socket = engine_socket(server, polling.sid)
    await eventually(lambda: _async(bool(socket.queue._getters)))  # the poll waits on the queue
    wire = await polling.upgrade()
    try:
        assert socket.upgrading
        wire.send("2probe")
        assert await wire.text() == "3probe"
        status, packets = await in_flight
        assert status == 200 and packets[0] == "6", packets
        # Until the upgrade packet, messages wait in the queue; polls get only a NOOP.
        await publish(server, tenant.slug, *[f"m{n}" for n in range(20)])
        assert await polling.get() == (200, ["6"])
        wire.send("5")
        texts: list[str] = []
        while len(texts) < 20:
            texts += texts_in([await wire.text()])
        assert texts == [f"m{n}" for n in range(20)]
        assert socket.upgraded and isinstance(socket.queue._ws, patches.EngineWire)
        # The websocket is the transport both ways now; a poll is refused.
        wire.send(f'42/{tenant.slug},2["message",{{"room":"lobby","body":{{"text":"up"}}}}]')
        while not (text := await wire.text()).startswith(f"43/{tenant.slug},2["):
            pass
        assert '"ok":true' in text, text
        status, _ = await polling.get()
        assert status == 400
    finally:
        wire.close()


async def upgrading(server: Server) -> tuple[str, Polling, WireSocket]:
    """A new tenant's polling session, joined to a room, and its websocket's handshake done."""
    tenant = await server.create_tenant()
    polling = await Polling.open(server)
    await polling.join(tenant.slug, await server.token(tenant.slug))
    return tenant.slug, polling, await polling.upgrade()


async def failed_upgrade_leaves_polling(server: Server, polling: Polling, slug: str) -> None:
    """The socket is back on long-polling, complete: nothing lost, nothing reordered."""
    socket = engine_socket(server, polling.sid)
    await eventually(lambda: _async(not socket.upgrading))
    assert not socket.upgraded and not socket.closed
    await publish(server, slug, "a", "b", "c")
    texts: list[str] = []
    async with asyncio.timeout(WITHIN):
        while len(texts) < 3:
            status, packets = await polling.get()
            assert status == 200, packets
            texts += texts_in(packets)
    assert texts == ["a", "b", "c"]


async def _async(value: bool) -> bool:
    return value


@pytest.mark.parametrize(
    "first",
    ["5", "3probe", "2", "40", b"2probe"],
    ids=["upgrade-before-probe", "wrong-probe", "plain-ping", "a-message", "binary"],
)
async def test_a_bad_first_packet_abandons_the_upgrade(
    polling_server: Server, first: str | bytes
) -> None:
    server = polling_server
    slug, polling, wire = await upgrading(server)
    try:
        wire.send(first, opcode=0x2 if isinstance(first, bytes) else 0x1)
        assert (await wire.frame())[1] == CLOSE
        await failed_upgrade_leaves_polling(server, polling, slug)
    finally:
        wire.close()


async def test_a_bad_packet_after_the_probe_abandons_the_upgrade(polling_server: Server) -> None:
    server = polling_server
    slug, polling, wire = await upgrading(server)
    try:
        wire.send("2probe")
        assert await wire.text() == "3probe"
        await publish(server, slug, "queued")
        wire.send(f'42/{slug},["message"]')
        assert (await wire.frame())[1] == CLOSE
        # What was queued during the attempt is polled, before what follows.
        socket = engine_socket(server, polling.sid)
        await eventually(lambda: _async(not socket.upgrading))
        assert await polling.until(lambda p: '"queued"' in p)
        await failed_upgrade_leaves_polling(server, polling, slug)
    finally:
        wire.close()


@pytest.mark.parametrize("after_probe", [False, True], ids=["before-probe", "after-probe"])
async def test_a_client_closing_mid_upgrade_stays_on_polling(
    polling_server: Server, after_probe: bool
) -> None:
    server = polling_server
    slug, polling, wire = await upgrading(server)
    if after_probe:
        wire.send("2probe")
        assert await wire.text() == "3probe"
    wire.close()
    await failed_upgrade_leaves_polling(server, polling, slug)


async def test_a_probe_that_never_comes_abandons_the_upgrade(
    polling_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(patches, "UPGRADE_TIMEOUT", 0.3)
    server = polling_server
    slug, polling, wire = await upgrading(server)
    try:
        assert (await wire.frame())[1] == CLOSE
        await failed_upgrade_leaves_polling(server, polling, slug)
    finally:
        wire.close()


async def test_a_second_upgrade_is_refused(polling_server: Server) -> None:
    server = polling_server
    slug, polling, wire = await upgrading(server)
    try:
        # While the first is going on: a coded refusal, and the first still completes.
        url = polling.url.replace("transport=polling", "transport=websocket")
        async with server.http.get(
            url, headers={"Upgrade": "websocket", "Connection": "Upgrade",
                          "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
                          "Sec-WebSocket-Version": "13"},
        ) as resp:  # fmt: skip
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "upgrade_in_progress"
        wire.send("2probe")
        assert await wire.text() == "3probe"
        wire.send("5")
        await publish(server, slug, "up")
        while texts_in([await wire.text()]) != ["up"]:
            pass
        # Once upgraded: refused as any HTTP request on the session is.
        async with server.http.get(
            url, headers={"Upgrade": "websocket", "Connection": "Upgrade",
                          "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
                          "Sec-WebSocket-Version": "13"},
        ) as resp:  # fmt: skip
            assert resp.status == 400
        assert isinstance(engine_socket(server, polling.sid).queue._ws, patches.EngineWire)
    finally:
        wire.close()


async def test_an_upgraded_socket_closes_when_its_client_goes(polling_server: Server) -> None:
    server = polling_server
    _, polling, wire = await upgrading(server)
    wire.send("2probe")
    assert await wire.text() == "3probe"
    wire.send("5")
    socket = engine_socket(server, polling.sid)
    await eventually(lambda: _async(socket.upgraded))
    wire.close()
    await eventually(lambda: _async(socket.closed))
    await eventually(lambda: _async(polling.sid not in server.app[REALTIME].sio.eio.sockets))
