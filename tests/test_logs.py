"""Logs (DESIGN §13): JSON lines with ts, level, logger, msg and the context fields of the socket
or request that logged them; the access log with the route template; repeated failures logged
once per interval with a count."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orgcast.logs import Repeated, bind, configure, unbind
from orgcast.settings import LogSettings
from tests.support import Server, eventually


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Route every log record into a buffer, as ``orgcast serve`` with ``log.format = json``
    would write them to stderr; the logging setup of the test run is restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    access = logging.getLogger("orgcast.access")
    saved_access = access.level
    buffer = io.StringIO()
    configure(LogSettings(format="json", level="DEBUG"), stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:], root.level = saved
        access.setLevel(saved_access)


def parsed(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_a_json_line_has_ts_level_logger_msg_and_the_bound_fields(
    log_lines: io.StringIO,
) -> None:
    log = logging.getLogger("orgcast.test")
    token = bind(tenant="acme", sid="s1", user="u1", event="message", request_id=None)
    try:
        log.warning("stored %d", 3)
    finally:
        unbind(token)
    log.info("unbound")
    first, second = parsed(log_lines)
    assert set(first) == {"ts", "level", "logger", "msg", "tenant", "sid", "user", "event"}
    assert first["ts"].endswith("+00:00") and first["ts"][:2] == "20"
    assert (first["level"], first["logger"], first["msg"]) == (
        "WARNING",
        "orgcast.test",
        "stored 3",
    )
    assert (first["tenant"], first["sid"], first["user"], first["event"]) == (
        "acme",
        "s1",
        "u1",
        "message",
    )
    assert set(second) == {"ts", "level", "logger", "msg"}


def test_a_text_line_carries_the_bound_fields_after_the_message() -> None:
    buffer = io.StringIO()
    handler = configure(LogSettings(format="text"), stream=buffer)
    root = logging.getLogger()
    try:
        token = bind(tenant="acme", sid="s1")
        logging.getLogger("orgcast.test").warning("hello")
        unbind(token)
    finally:
        root.removeHandler(handler)
    assert buffer.getvalue().rstrip().endswith("WARNING orgcast.test: hello [tenant=acme sid=s1]")


async def test_a_socket_event_logs_json_with_its_tenant_sid_user_and_event(
    server: Server, log_lines: io.StringIO
) -> None:
    tenant = await server.create_tenant()
    client = await server.connect(tenant.slug, await server.token(tenant.slug, "alice"))
    sid = client.get_sid(f"/{tenant.slug}")
    ack = await client.call("join", {"room": "lobby"}, namespace=f"/{tenant.slug}", timeout=5)
    assert ack["ok"] is True
    events = [line for line in parsed(log_lines) if line.get("event") == "join"]
    assert len(events) == 1, parsed(log_lines)
    (line,) = events
    assert line["logger"].startswith("orgcast.realtime")
    assert (line["tenant"], line["sid"], line["user"]) == (tenant.slug, sid, "alice")
    assert line["level"] == "DEBUG" and line["result"] == "ok"
    assert isinstance(line["latency_ms"], float)


async def test_the_access_log_has_method_route_template_status_and_latency(
    server: Server, log_lines: io.StringIO
) -> None:
    tenant = await server.create_tenant()
    status, _ = await server.request(
        "GET", f"/api/v1/tenants/{tenant.slug}", headers={"X-Request-ID": "req-42"}
    )
    assert status == 200
    status, _ = await server.request("GET", "/no/such/thing")
    assert status == 404
    access = [line for line in parsed(log_lines) if line["logger"] == "orgcast.access"]
    by_request = {line.get("request_id"): line for line in access}
    line = by_request["req-42"]
    assert (line["method"], line["route"], line["status"]) == ("GET", "/api/v1/tenants/{slug}", 200)
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0
    assert line["msg"].startswith("GET /api/v1/tenants/{slug} 200 ")
    assert tenant.slug not in json.dumps(line)  # the template, never the raw path
    unmatched = [a for a in access if a["status"] == 404]
    assert [(a["route"], a["method"]) for a in unmatched] == [("(unmatched)", "GET")]


async def test_a_websocket_access_line_is_written_when_it_closes(
    server: Server, log_lines: io.StringIO
) -> None:
    ws = await server.http.ws_connect(
        server.url + "/socket.io/?EIO=4&transport=websocket", headers={"X-Request-ID": "ws-7"}
    )
    assert (await ws.receive_str(timeout=5)).startswith("0")

    def line() -> dict[str, Any] | None:
        access = [a for a in parsed(log_lines) if a["logger"] == "orgcast.access"]
        return next((a for a in access if a.get("request_id") == "ws-7"), None)

    await ws.send_str("40/no-such-tenant,{}")  # a round trip on the open websocket
    assert (await ws.receive_str(timeout=5)).startswith("44/no-such-tenant,")
    assert line() is None  # open: not yet
    await ws.close()

    async def written() -> bool:
        return line() is not None

    await eventually(written)
    found = line()
    assert found is not None
    assert (found["method"], found["route"], found["status"]) == ("GET", "/socket.io/", 101)


async def test_every_response_echoes_its_request_id(server: Server) -> None:
    async with server.http.get(server.url + "/healthz", headers={"X-Request-ID": "abc-1"}) as r:
        assert r.headers["X-Request-ID"] == "abc-1"
    async with server.http.get(server.url + "/healthz", headers={"X-Request-ID": "a b"}) as r:
        generated = r.headers["X-Request-ID"]
    assert generated != "a b" and len(generated) == 16


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_repeated_failure_is_logged_once_per_interval_with_its_count(
    log_lines: io.StringIO,
) -> None:
    clock = Clock()
    down = Repeated(logging.getLogger("orgcast.test"), interval=60, clock=clock)
    assert down.warning("redis unreachable: %s", "refused") is True
    for _ in range(99):
        clock.now += 0.5
        assert down.warning("redis unreachable: %s", "refused") is False
    clock.now += 11  # 60.5 s after the first line
    assert down.warning("redis unreachable: %s", "refused") is True
    clock.now += 1
    down.warning("redis unreachable: %s", "refused")
    assert down.recovered("redis reachable again") is True
    assert down.recovered("redis reachable again") is False  # nothing logged since
    lines = parsed(log_lines)
    assert [(line["level"], line["msg"], line.get("repeated")) for line in lines] == [
        ("WARNING", "redis unreachable: refused", None),
        ("WARNING", "redis unreachable: refused (repeated 100 times in the last 60 s)", 100),
        ("INFO", "redis reachable again (after 1 more failures)", 1),
    ]
    # After a recovery the next failure is news again: logged at once.
    assert down.warning("redis unreachable: %s", "refused") is True


def test_keyed_repeats_are_counted_per_key(log_lines: io.StringIO, tmp_path: Path) -> None:
    by_key = Repeated.keyed(logging.getLogger("orgcast.test"), interval=60)
    assert by_key("redis:publish").warning("publish failed") is True
    assert by_key("redis:presence").warning("presence failed") is True
    assert by_key("redis:publish").warning("publish failed") is False
    assert [line["msg"] for line in parsed(log_lines)] == ["publish failed", "presence failed"]
