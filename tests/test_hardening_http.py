"""HTTP-side hardening: oversized long-polling bodies, bounded shutdown, hostile REST requests,
exact name patterns, file modes of the embedded database, CORS."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import stat
from pathlib import Path

import pytest

from orgcast.settings import DatabaseSettings, ServerSettings
from tests.nodes import NodeProcess
from tests.support import (
    ADMIN_TOKEN,
    Server,
    eventually,
    node_settings,
    start_server,
    unique_slug,
)


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def polling_sid(server: Server) -> str:
    async with server.http.get(server.url + "/socket.io/?EIO=4&transport=polling") as reply:
        assert reply.status == 200
        text = await reply.text()
    return str(json.loads(text[1:])["sid"])


async def raw_http(port: int, head: str, body: bytes = b"", within: float = 10.0) -> bytes:
    """Send a request by hand (headers may announce more than is sent); the response head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), within)
    finally:
        writer.close()


async def test_an_oversized_long_polling_post_gets_413_before_its_body_is_read(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    sid = await polling_sid(server)
    port = int(server.url.rsplit(":", 1)[1])
    announced = server.settings.server.max_packet_bytes + 100_000
    head = (
        f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: {announced}\r\n\r\n"
    )
    response = await raw_http(port, head, b"4" * 1000)
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large", response[:200]
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "too_large"
    assert tracebacks(caplog) == []


async def test_shutdown_is_bounded_while_a_long_polling_post_waits_for_its_body(
    database_url: str, tmp_path: Path
) -> None:
    node = NodeProcess(database_url, tmp_path, ORGCAST_SERVER__SHUTDOWN_TIMEOUT_SECONDS="1")
    try:
        await node.ready()
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        writer.write(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        handshake = await asyncio.wait_for(reader.read(4096), 10)
        sid = json.loads(handshake.split(b"\r\n\r\n", 1)[1][1:])["sid"]
        # Announce 1,000 bytes, send 10: the engine waits for the rest.
        writer.write(
            f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n"
            'Content-Type: text/plain\r\nContent-Length: 1000\r\n\r\n42["join",'.encode()
        )
        await writer.drain()
        node.process.send_signal(signal.SIGTERM)

        async def exited() -> bool:
            return node.process.poll() is not None

        await eventually(exited, within=30)
        writer.close()
    finally:
        node.stop()


async def test_json_nested_2000_deep_is_a_clean_400(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    body = '{"slug": "deep-one", "name": ' + "[" * 2000 + "]" * 2000 + "}"
    status, reply = await server.request(
        "POST", "/api/v1/tenants", data=body, headers={"Content-Type": "application/json"}
    )
    assert status == 400, reply
    assert reply["error"]["code"] == "invalid_json"
    assert tracebacks(caplog) == []


async def test_json_nested_2000_deep_on_batch_publish_and_kick_is_a_clean_400(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = await server.create_tenant()
    deep = "[" * 2000 + "]" * 2000
    for path, body in (
        (f"/api/v1/tenants/{tenant.slug}/messages", '{"messages": ' + deep + "}"),
        (f"/api/v1/tenants/{tenant.slug}/users/u1/disconnect", '{"reason": ' + deep + "}"),
    ):
        status, reply = await server.request(
            "POST", path, data=body, headers={"Content-Type": "application/json"}
        )
        assert status == 400, (path, reply)
        assert reply["error"]["code"] == "invalid_json", (path, reply)
    assert tracebacks(caplog) == []


async def test_a_9_kb_authorization_header_is_a_clean_401(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    status, reply = await server.request("GET", "/api/v1/tenants", token="x" * 9 * 1024)
    assert status == 401, reply
    assert reply["error"]["code"] in {"auth_invalid", "auth_required"}
    assert tracebacks(caplog) == []


async def test_a_header_above_the_limit_is_a_400_without_traceback(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = int(server.url.rsplit(":", 1)[1])
    big = "x" * (server.settings.server.max_header_bytes + 10)
    head = f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {big}\r\n\r\n"
    response = await raw_http(port, head)
    assert response.split(b" ", 2)[1] == b"400", response[:200]
    assert tracebacks(caplog) == []


@pytest.mark.parametrize("room", ["lobby\n", "lobby\r", "lobby\n\n"])
async def test_a_room_with_a_trailing_newline_is_refused_by_rest_and_socket(
    server: Server, room: str
) -> None:
    tenant = await server.create_tenant()
    path = f"/api/v1/tenants/{tenant.slug}/rooms/{room.replace(chr(10), '%0A')}/messages"
    status, reply = await server.request("POST", path.replace("\r", "%0D"), json={"body": 1})
    assert status == 400, reply
    client = await server.connect(tenant.slug, await server.token(tenant.slug))
    ack = await client.call("join", {"room": room}, namespace=f"/{tenant.slug}")
    assert ack["error"]["code"] == "bad_request", ack


async def test_a_slug_with_a_trailing_newline_is_refused(server: Server) -> None:
    slug = unique_slug("nl") + "\n"
    status, reply = await server.request(
        "POST", "/api/v1/tenants", json={"slug": slug, "name": "x"}
    )
    assert status == 422, reply
    status, reply = await server.request(
        "POST",
        "/api/v1/tenants",
        json={"slug": unique_slug("ev"), "name": "x", "ephemeral_events": ["typing\n"]},
    )
    assert status == 422, reply


async def test_the_embedded_database_is_private_to_its_owner(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = node_settings("", data_dir, database=DatabaseSettings(url=""))
    async with start_server(settings):
        pass
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    database = data_dir / "orgcast.sqlite3"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    for extra in data_dir.glob("orgcast.sqlite3-*"):
        assert stat.S_IMODE(extra.stat().st_mode) == 0o600, extra


async def test_the_engine_handshake_never_allows_credentials(server: Server) -> None:
    headers = {"Origin": "https://anywhere.example"}
    url = server.url + "/socket.io/?EIO=4&transport=polling"
    async with server.http.get(url, headers=headers) as reply:
        assert reply.status == 200
        assert "Access-Control-Allow-Credentials" not in reply.headers
    async with server.http.options(url, headers=headers) as reply:
        assert "Access-Control-Allow-Credentials" not in reply.headers


async def test_the_engine_reflects_only_configured_origins(
    database_url: str, tmp_path: Path
) -> None:
    server_settings = ServerSettings(port=0, cors_allowed_origins=["https://ok.example"])
    settings = node_settings(database_url, tmp_path, server=server_settings)
    url = "/socket.io/?EIO=4&transport=polling"
    async with start_server(settings) as server:
        async with server.http.get(
            server.url + url, headers={"Origin": "https://ok.example"}
        ) as reply:
            assert reply.status == 200
            assert reply.headers["Access-Control-Allow-Origin"] == "https://ok.example"
        async with server.http.get(
            server.url + url, headers={"Origin": "https://evil.example"}
        ) as reply:
            assert reply.status == 400
            assert "Access-Control-Allow-Origin" not in reply.headers
        status, _ = await server.request("GET", "/healthz", token=ADMIN_TOKEN)
        assert status == 200
