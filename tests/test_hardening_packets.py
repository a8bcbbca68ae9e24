"""Packets no client library would send: each gets a coded answer or is dropped and counted,
never a traceback, a buffered attachment, a wedged socket or a ghost connection."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orgcast.realtime import guards
from orgcast.settings import ServerSettings
from orgcast.state import REALTIME, SERVICES
from tests.rawsocket import RawSocket
from tests.support import (
    Server,
    node_settings,
    start_server,
    unique_slug,
)

DEEP = 1100


@pytest.fixture
async def admitted(server: Server) -> AsyncIterator[tuple[Server, str, RawSocket]]:
    tenant = await server.create_tenant()
    raw = await RawSocket.open(server)
    await raw.connect(tenant.slug, await server.token(tenant.slug, "alice"))
    joined = await raw.call(tenant.slug, 1, "join", {"room": "lobby"})
    assert joined["ok"] is True, joined
    yield server, tenant.slug, raw
    await raw.close()


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def still_answers(raw: RawSocket, slug: str, ack_id: int) -> None:
    reply = await raw.call(slug, ack_id, "presence", {"room": "lobby"})
    assert reply["ok"] is True, reply


MALFORMED = {
    "truncated_json": '["message",{"room":"lobby","body":',
    "huge_number": '["message",{"room":"lobby","body":1e400}]',
    "nan": '["message",{"room":"lobby","body":NaN}]',
    "lone_surrogate": '["message",{"room":"lobby","body":"\\ud800"}]',
    "too_deep": '["message",{"room":"lobby","body":' + "[" * DEEP + "]" * DEEP + "}]",
    "empty_event_name": '["",{"room":"lobby"}]',
    "numeric_event_name": '[5,{"room":"lobby"}]',
    "null_event_name": '[null,{"room":"lobby"}]',
    "object_not_array": '{"room":"lobby"}',
    "empty_array": "[]",
    "string_not_array": '"message"',
    "deep_body_1000": '["message",{"room":"lobby","body":' + "[" * 1000 + "]" * 1000 + "}]",
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
async def test_a_malformed_event_gets_a_bad_request_ack_and_the_socket_keeps_answering(
    admitted: tuple[Server, str, RawSocket], caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    _server, slug, raw = admitted
    await raw.send(f"42/{slug},7" + MALFORMED[kind])
    reply = await raw.ack(slug, 7)
    assert reply["ok"] is False, reply
    assert reply["error"]["code"] == "bad_request", reply
    await still_answers(raw, slug, 8)
    assert tracebacks(caplog) == []


async def test_binary_events_are_refused_at_decode_time_and_nothing_is_buffered(
    admitted: tuple[Server, str, RawSocket], caplog: pytest.LogCaptureFixture
) -> None:
    server, slug, raw = admitted
    sio = server.app[REALTIME].sio
    await raw.send(f"451-/{slug},3" + '["message",{"room":"lobby","body":{"_placeholder":true}}]')
    reply = await raw.ack(slug, 3)
    assert reply["error"]["code"] == "bad_request", reply
    # Announcing 9,999,999,999 attachments buffers nothing either.
    await raw.send(f"459999999999-/{slug},4" + '["message",{"room":"lobby"}]')
    assert (await raw.ack(slug, 4))["error"]["code"] == "bad_request"
    await raw.send(b"\x00" * 1024)
    assert sio._binary_packet == {}
    await still_answers(raw, slug, 5)
    assert tracebacks(caplog) == []


async def test_an_out_of_range_placeholder_does_not_wedge_the_socket(
    admitted: tuple[Server, str, RawSocket],
) -> None:
    _server, slug, raw = admitted
    await raw.send(f"451-/{slug},3" + '["message",{"_placeholder":true,"num":99}]')
    assert (await raw.ack(slug, 3))["error"]["code"] == "bad_request"
    await raw.send(b"\x01\x02")
    await still_answers(raw, slug, 4)


async def test_a_socket_that_keeps_sending_binary_frames_is_closed(
    admitted: tuple[Server, str, RawSocket],
) -> None:
    _server, _slug, raw = admitted
    for _ in range(guards.STRIKES):
        await raw.send(b"\x00" * 1024)
    assert await raw.closed()


async def test_garbage_on_a_socket_without_namespace_logs_no_traceback_and_closes_it(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    raw = await RawSocket.open(server)
    for i in range(1000):
        frame = ["x" * 15, "4" + "7" * 14, "42" + "{" * 13, "45-" + "[" * 12][i % 4]
        try:
            await raw.send(frame)
        except ConnectionError:
            break
    assert await raw.closed()
    assert tracebacks(caplog) == []
    # Counted and summed up, not one line per packet.
    assert len([r for r in caplog.records if r.name.startswith(("engineio", "socketio"))]) == 0
    assert len([r for r in caplog.records if r.name == guards.__name__]) <= 2


async def test_an_engine_close_right_before_a_namespace_connect_leaves_no_ghost(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = await server.create_tenant()
    token = await server.token(tenant.slug, "alice")
    realtime = server.app[REALTIME]
    for _ in range(20):
        raw = await RawSocket.open(server)
        await raw.send("1")
        await raw.send(f"40/{tenant.slug}," + json.dumps({"token": token}))
        await raw.close()
    # A live socket's connect is the last thing the server handles, so it has handled the rest.
    await server.connect(tenant.slug, token)
    assert realtime.local_connections(tenant.slug) == 1
    assert await server.app[SERVICES].hub.presence.connections(tenant.slug) == 1
    assert tracebacks(caplog) == []


async def test_a_socket_without_namespace_is_closed_after_the_timeout(
    database_url: str, tmp_path: Path
) -> None:
    settings = node_settings(
        database_url,
        tmp_path,
        server=ServerSettings(port=0, unauthenticated_timeout_seconds=0.5),
    )
    async with start_server(settings) as server:
        raw = await RawSocket.open(server)
        assert await raw.closed(within=10)
        assert server.app[REALTIME].guard.unauthenticated == {}


async def test_a_node_holds_at_most_max_unauthenticated_sockets(
    database_url: str, tmp_path: Path
) -> None:
    settings = node_settings(database_url, tmp_path, server=ServerSettings(port=0))
    settings.server.max_unauthenticated = 3
    async with start_server(settings) as server:
        tenant = await server.create_tenant()
        held = [await RawSocket.open(server) for _ in range(3)]
        async with server.http.get(server.url + "/socket.io/?EIO=4&transport=polling") as reply:
            assert reply.status == 401
            assert (await reply.json())["code"] == "connection_limit"
        # A socket that connects to a namespace no longer counts.
        await held[0].connect(tenant.slug, await server.token(tenant.slug))
        async with server.http.get(server.url + "/socket.io/?EIO=4&transport=polling") as reply:
            assert reply.status == 200
        for raw in held:
            await raw.close()


async def test_namespace_connects_are_throttled_per_socket(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    raw = await RawSocket.open(server)
    codes = []
    for i in range(12):
        await raw.send(f"40/no-such-tenant-{i},{{}}")
        reply = await raw.recv()
        assert reply.startswith(f"44/no-such-tenant-{i},"), reply
        codes.append(json.loads(reply.split(",", 1)[1])["message"])
    assert codes[0] == "tenant_not_found"
    assert "rate_limited" in codes
    assert tracebacks(caplog) == []


async def test_unknown_namespaces_are_looked_up_once_while_negatively_cached(
    server: Server,
) -> None:
    services = server.app[SERVICES]
    loads: list[str] = []
    load_keys = services.tenants.load_keys

    async def counting(slug: str):  # type: ignore[no-untyped-def]
        loads.append(slug)
        return await load_keys(slug)

    services.tenants.load_keys = counting  # type: ignore[method-assign]
    slug = unique_slug("later")
    for _ in range(5):
        refused = await server.refusal(slug, {"token": "x"})
        assert refused["code"] == "tenant_not_found"
    assert loads == [slug]
    # Creating the tenant ends the negative entry at once.
    tenant = await server.create_tenant(slug)
    await server.connect(tenant.slug, await server.token(tenant.slug))
