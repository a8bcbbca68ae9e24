"""Property-based fuzzing of the Socket.IO surface against a live node: random payloads for every
event, and random Socket.IO / Engine.IO packet text on a raw websocket. Every ack is
``{ok: true, ...}`` or a coded error other than ``internal``, the socket still answers, the node
logs no traceback and ``/healthz`` stays healthy. Seeded (derandomized) and bounded by a fixed
example budget, so CI runs the same cases every time, in seconds."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import socketio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orgcast.settings import ServerSettings
from orgcast.state import REALTIME
from tests.rawsocket import RawSocket
from tests.support import Server, eventually, node_settings, start_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

CODES = {
    "bad_request",
    "not_joined",
    "room_forbidden",
    "too_large",
    "rate_limited",
    "room_limit",
    "unknown_event",
    "tenant_suspended",
    "unavailable",
}
EVENTS = ["join", "leave", "message", "history", "presence", "typing"]
FIELDS = ["room", "since", "body", "client_id", "before_seq", "after_seq", "limit", "data"]
FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Tracebacks(logging.Handler):
    """Collects every record with a traceback, or at ERROR and above, from any logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(f"{record.name}: {record.getMessage()}")


@dataclass
class Live:
    node: Server
    slug: str
    token: str
    client: socketio.AsyncClient
    log: Tracebacks
    next_id: list[int] = field(default_factory=lambda: [1000])

    def ack_id(self) -> int:
        self.next_id[0] += 1
        return self.next_id[0]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def live(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz-realtime")
    log = Tracebacks()
    logging.getLogger().addHandler(log)
    try:
        # Robustness is fuzzed here, not the rate limits: one user connects hundreds of times.
        server = ServerSettings(port=0, connects_per_address=100_000)
        async with start_server(node_settings(database_url, data_dir, server=server)) as node:
            tenant = await node.create_tenant(
                limits={"messages_per_second": 100_000, "connection_rate": 100_000},
                ephemeral_events=["typing"],
            )
            token = await node.token(tenant.slug, "fuzzer")
            # The watching client joins no room: fuzzed broadcasts never reach it.
            client = await node.connect(tenant.slug, token)
            yield Live(node, tenant.slug, token, client, log)
            status, _ = await node.request("GET", "/healthz", token=None)
            assert status == 200
            # Every fuzzed socket is gone once its client is: nothing leaks.
            await client.disconnect()
            sockets = node.app[REALTIME].sio.eio.sockets

            async def all_closed() -> bool:
                return not sockets

            await eventually(all_closed, within=10)
    finally:
        logging.getLogger().removeHandler(log)


def assert_coded(ack: Any) -> None:
    assert isinstance(ack, dict) and isinstance(ack.get("ok"), bool), ack
    if not ack["ok"]:
        assert ack["error"]["code"] in CODES, ack


async def assert_alive(live: Live) -> None:
    namespace = f"/{live.slug}"
    ack = await live.client.call("presence", {"room": "lobby"}, namespace=namespace, timeout=5)
    assert ack["ok"] is True, ack
    assert live.log.records == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
field_values = (
    json_values
    | st.sampled_from(["lobby", "lobby\n", "", "r" * 129, "a:b@c", "../x", "r:lobby"])
    | st.integers(min_value=-(2**70), max_value=2**70)
)
payloads = json_values | st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=5)
events = st.sampled_from(EVENTS) | st.text(min_size=1, max_size=12)


@FUZZ
@given(event=events, payload=payloads)
async def test_random_payloads_for_every_event_get_a_coded_ack(
    live: Live, event: str, payload: Any
) -> None:
    namespace = f"/{live.slug}"
    if event in {"connect", "disconnect"} or event.startswith(" "):
        event = "x" + event
    ack = await live.client.call(event, payload, namespace=namespace, timeout=5)
    assert_coded(ack)
    await assert_alive(live)


def socketio_packets(slug: str) -> st.SearchStrategy[str]:
    header = st.builds(
        lambda kind, attachments, namespace, ack: f"{kind}{attachments}{namespace}{ack}",
        st.sampled_from("0123456789"),
        st.sampled_from(["", "1-", "9999999999-", "-"]),
        st.sampled_from(["", f"/{slug},", "/other,", f"/{slug}", "/,"]),
        st.sampled_from(["", "7", "99999999999999999999"]),
    )
    bodies = (
        st.text(max_size=40)
        | json_values.map(json.dumps)
        | st.tuples(events, json_values).map(lambda pair: json.dumps(list(pair)))
        | st.sampled_from(["[", '["message",', "1e400", "NaN", '["\\ud800"]', "[" * 1100])
    )
    return st.builds(lambda head, body: "4" + head + body, header, bodies)


engine_frames = st.text(max_size=30) | st.binary(max_size=64) | st.sampled_from(["", "b", "bAA=="])


@FUZZ
@given(data=st.data())
async def test_random_packet_text_never_wedges_a_socket_or_logs_a_traceback(
    live: Live, data: st.DataObject
) -> None:
    frames = data.draw(
        st.lists(socketio_packets(live.slug) | engine_frames, min_size=1, max_size=3)
    )
    raw = await RawSocket.open(live.node)
    try:
        await raw.connect(live.slug, live.token)
        for frame in frames:
            await raw.send(frame)
        ends = any(
            isinstance(f, str) and (f.startswith(("1", "41")) or f[:2] == "40") for f in frames
        )
        if not ends:
            await answers_presence(raw, live)
    finally:
        await raw.close()
    await assert_alive(live)


async def answers_presence(raw: RawSocket, live: Live) -> None:
    """The raw socket still answers; every ack it gets on the way is coded."""
    ack_id = live.ack_id()
    prefix = f"43/{live.slug},"
    await raw.send(f"42/{live.slug},{ack_id}" + json.dumps(["presence", {"room": "lobby"}]))
    while True:
        frame = await raw.recv()
        if frame.startswith(prefix):
            rest = frame[len(prefix) :]
            digits = len(rest) - len(rest.lstrip("0123456789"))
            assert_coded(json.loads(rest[digits:])[0])
            if rest[:digits] == str(ack_id):
                return
