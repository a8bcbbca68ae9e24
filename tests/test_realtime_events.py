"""Client events and their acks (DESIGN §5), each against a real node and real clients.

Every ack is asserted whole: success shapes key by key, errors as exactly ``{code, message}``
(plus ``retry_after_ms`` for ``rate_limited``). Malformed payloads must leave the socket usable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import socketio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from orgcast.state import SERVICES
from tests.support import (
    WITHIN,
    Inbox,
    MessagesSettings,
    Server,
    assert_error,
    call,
    joined,
    node_settings,
    start_server,
)
from tests.test_realtime_connect import assert_refused, refusal


def assert_sent(ack: Any, room: str, seq: int) -> None:
    assert set(ack) == {"ok", "id", "room", "seq", "ts"}, ack
    assert ack["ok"] is True and ack["room"] == room and ack["seq"] == seq, ack
    assert isinstance(ack["id"], (int, str)) and ack["id"] not in ("", 0)
    assert isinstance(ack["ts"], int) and ack["ts"] > 1_600_000_000_000


async def send_many(
    client: socketio.AsyncClient, slug: str, room: str, bodies: list[Any]
) -> list[dict[str, Any]]:
    acks = []
    for body in bodies:
        ack = await call(client, slug, "message", {"room": room, "body": body})
        assert ack["ok"] is True, ack
        acks.append(ack)
    return acks


# -- join / leave ---------------------------------------------------------------------------------


async def test_join_empty_room_acks_seq_zero_and_self_as_member(server: Server) -> None:
    tenant = await server.create_tenant()
    client = await server.connect(tenant.slug, await server.token(tenant.slug, "u1", name="Ann"))
    ack = await call(client, tenant.slug, "join", {"room": "lobby"})
    assert ack == {"ok": True, "room": "lobby", "seq": 0, "members": [{"id": "u1", "name": "Ann"}]}


async def test_join_acks_latest_seq_and_all_members(server: Server) -> None:
    tenant = await server.create_tenant()
    first = await joined(server, tenant, "u1")
    await send_many(first, tenant.slug, "lobby", ["a", "b"])
    second = await server.connect(tenant.slug, await server.token(tenant.slug, "u2"))
    ack = await call(second, tenant.slug, "join", {"room": "lobby"})
    assert ack["seq"] == 2
    assert sorted(m["id"] for m in ack["members"]) == ["u1", "u2"]
    assert set(ack) == {"ok", "room", "seq", "members"}


async def test_join_since_returns_missed_oldest_first(server: Server) -> None:
    tenant = await server.create_tenant()
    sender = await joined(server, tenant, "u1")
    acks = await send_many(sender, tenant.slug, "lobby", [{"n": i} for i in range(1, 5)])
    reader = await server.connect(tenant.slug, await server.token(tenant.slug, "u2"))
    ack = await call(reader, tenant.slug, "join", {"room": "lobby", "since": 2})
    assert ack["ok"] is True and ack["seq"] == 4 and ack["truncated"] is False
    assert ack["missed"] == [
        {
            "id": acks[i]["id"],
            "room": "lobby",
            "seq": i + 1,
            "ts": acks[i]["ts"],
            "sender": {"id": "u1", "name": "u1"},
            "body": {"n": i + 1},
        }
        for i in (2, 3)
    ]


async def test_join_since_latest_seq_returns_nothing_missed(server: Server) -> None:
    tenant = await server.create_tenant()
    sender = await joined(server, tenant, "u1")
    await send_many(sender, tenant.slug, "lobby", ["a", "b"])
    reader = await server.connect(tenant.slug, await server.token(tenant.slug, "u2"))
    ack = await call(reader, tenant.slug, "join", {"room": "lobby", "since": 2})
    assert (ack["seq"], ack["missed"], ack["truncated"]) == (2, [], False)
    empty = await call(reader, tenant.slug, "join", {"room": "fresh", "since": 0})
    assert (empty["seq"], empty["missed"], empty["truncated"]) == (0, [], False)


@pytest.fixture
async def small_replay_server(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    settings = node_settings(
        database_url,
        tmp_path,
        messages=MessagesSettings(replay_page=3, retention_interval_seconds=3600),
    )
    async with start_server(settings) as node:
        yield node


async def test_join_since_truncates_at_replay_page_and_pages_onward(
    small_replay_server: Server,
) -> None:
    server = small_replay_server
    tenant = await server.create_tenant()
    sender = await joined(server, tenant, "u1")
    await send_many(sender, tenant.slug, "lobby", list(range(1, 8)))
    reader = await server.connect(tenant.slug, await server.token(tenant.slug, "u2"))
    seen: list[int] = []
    since = 0
    pages = []
    for _ in range(5):  # bounded: 7 messages in pages of 3
        ack = await call(reader, tenant.slug, "join", {"room": "lobby", "since": since})
        assert ack["seq"] == 7
        pages.append((len(ack["missed"]), ack["truncated"]))
        seen += [m["seq"] for m in ack["missed"]]
        if not ack["truncated"]:
            break
        since = ack["missed"][-1]["seq"]
    assert pages == [(3, True), (3, True), (1, False)]
    assert seen == [1, 2, 3, 4, 5, 6, 7]


async def test_leave_acks_and_stops_delivery(server: Server) -> None:
    tenant = await server.create_tenant()
    sender = await joined(server, tenant, "u1")
    reader = await joined(server, tenant, "u2")
    inbox = Inbox(reader, "message", f"/{tenant.slug}")
    assert await call(reader, tenant.slug, "leave", {"room": "lobby"}) == {
        "ok": True,
        "room": "lobby",
    }
    await send_many(sender, tenant.slug, "lobby", ["after leave"])
    await inbox.expect_nothing()
    assert_error(await call(reader, tenant.slug, "leave", {"room": "lobby"}), "not_joined")
    assert_error(
        await call(reader, tenant.slug, "message", {"room": "lobby", "body": "x"}), "not_joined"
    )


# -- message --------------------------------------------------------------------------------------


async def test_message_before_join_is_refused_with_not_joined(server: Server) -> None:
    tenant = await server.create_tenant()
    client = await server.connect(tenant.slug, await server.token(tenant.slug))
    ack = await call(client, tenant.slug, "message", {"room": "lobby", "body": "hi"})
    assert_error(ack, "not_joined")


async def test_message_is_broadcast_to_others_but_not_the_sender(server: Server) -> None:
    tenant = await server.create_tenant()
    alice = await joined(server, tenant, "alice", name="Alice")
    bob = await joined(server, tenant, "bob")
    carol = await joined(server, tenant, "carol")
    outsider = await joined(server, tenant, "dave", room="elsewhere")
    inboxes = {
        name: Inbox(c, "message", f"/{tenant.slug}")
        for name, c in {"alice": alice, "bob": bob, "carol": carol, "dave": outsider}.items()
    }
    body = {"text": "hello", "n": [1, 2.5, None, True], "nested": {"ü": "✓"}}
    ack = await call(alice, tenant.slug, "message", {"room": "lobby", "body": body})
    assert_sent(ack, "lobby", 1)
    expected = {
        "id": ack["id"],
        "room": "lobby",
        "seq": 1,
        "ts": ack["ts"],
        "sender": {"id": "alice", "name": "Alice"},
        "body": body,
    }
    assert await inboxes["bob"].get() == expected
    assert await inboxes["carol"].get() == expected
    await inboxes["alice"].expect_nothing()
    await inboxes["dave"].expect_nothing()
    await inboxes["bob"].expect_nothing(0.05)


async def test_message_seq_counts_1_2_3_per_room(server: Server) -> None:
    tenant = await server.create_tenant()
    client = await joined(server, tenant, "u1")
    assert (await call(client, tenant.slug, "join", {"room": "other"}))["ok"]
    lobby = await send_many(client, tenant.slug, "lobby", ["a", "b", "c"])
    other = await send_many(client, tenant.slug, "other", ["x", "y"])
    assert [a["seq"] for a in lobby] == [1, 2, 3]
    assert [a["seq"] for a in other] == [1, 2]
    assert len({a["id"] for a in lobby + other}) == 5
    for ack in lobby:
        assert_sent(ack, "lobby", ack["seq"])


async def test_message_pipelined_from_one_socket_is_stored_in_send_order(server: Server) -> None:
    tenant = await server.create_tenant()
    client = await joined(server, tenant, "u1")
    acks = await asyncio.gather(
        *(call(client, tenant.slug, "message", {"room": "lobby", "body": i}) for i in range(20))
    )
    assert [a["seq"] for a in acks] == list(range(1, 21))
    history = await call(client, tenant.slug, "history", {"room": "lobby", "limit": 20})
    assert [m["body"] for m in history["messages"]] == list(range(20))


async def test_message_resent_with_same_client_id_is_stored_and_broadcast_once(
    server: Server,
) -> None:
    tenant = await server.create_tenant()
    sender = await joined(server, tenant, "u1")
    reader = await joined(server, tenant, "u2")
    inbox = Inbox(reader, "message", f"/{tenant.slug}")
    payload = {"room": "lobby", "body": "once", "client_id": "c-1"}
    first = await call(sender, tenant.slug, "message", payload)
    again = await call(sender, tenant.slug, "message", payload)
    assert_sent(first, "lobby", 1)
    assert again == first
    received = await inbox.get()
    assert received["client_id"] == "c-1" and received["seq"] == 1
    await inbox.expect_nothing()
    # Another socket of the same user retrying after a reconnect gets the original too.
    retry = await joined(server, tenant, "u1")
    assert await call(retry, tenant.slug, "message", payload) == first
    # A different user with the same client_id is a different message.
    other = await call(reader, tenant.slug, "message", payload)
    assert_sent(other, "lobby", 2)
    history = await call(sender, tenant.slug, "history", {"room": "lobby"})
    assert [(m["seq"], m["sender"]["id"]) for m in history["messages"]] == [(1, "u1"), (2, "u2")]


async def test_message_body_too_large_gets_too_large_and_socket_stays_up(
    server: Server,
) -> None:
    tenant = await server.create_tenant(limits={"max_message_bytes": 16})
    client = await joined(server, tenant, "u1")
    assert_error(
        await call(client, tenant.slug, "message", {"room": "lobby", "body": "x" * 100}),
        "too_large",
    )
    # 14 characters + 2 quotes = 16 bytes encoded: exactly at the limit.
    assert_sent(
        await call(client, tenant.slug, "message", {"room": "lobby", "body": "x" * 14}), "lobby", 1
    )
    assert_error(
        await call(client, tenant.slug, "message", {"room": "lobby", "body": "x" * 15}),
        "too_large",
    )


async def test_limit_change_applies_to_the_next_event(server: Server) -> None:
    tenant = await server.create_tenant()
    client = await joined(server, tenant, "u1")
    payload = {"room": "lobby", "body": "x" * 100}
    assert_sent(await call(client, tenant.slug, "message", payload), "lobby", 1)
    status, body = await server.request(
        "PATCH", f"/api/v1/tenants/{tenant.slug}", json={"limits": {"max_message_bytes": 16}}
    )
    assert status == 200, body
    assert_error(await call(client, tenant.slug, "message", payload), "too_large")


async def test_burst_beyond_messages_per_second_is_rate_limited_with_retry_after(
    server: Server,
) -> None:
    tenant = await server.create_tenant(limits={"messages_per_second": 2})
    client = await server.connect(tenant.slug, await server.token(tenant.slug))
    # The bucket holds one second's worth (2): the join spends one, the first message the other.
    assert (await call(client, tenant.slug, "join", {"room": "lobby"}))["ok"] is True
    acks = await asyncio.gather(
        *(call(client, tenant.slug, "message", {"room": "lobby", "body": i}) for i in range(4))
    )
    assert_sent(acks[0], "lobby", 1)
    for ack in acks[1:]:
        assert_error(ack, "rate_limited")
        assert isinstance(ack["error"]["retry_after_ms"], int)
        assert 1 <= ack["error"]["retry_after_ms"] <= 500
    # Waiting as told lets the next one through; nothing refused was stored.
    await asyncio.sleep(acks[-1]["error"]["retry_after_ms"] / 1000)
    deadline = time.monotonic() + WITHIN
    while True:
        ack = await call(client, tenant.slug, "history", {"room": "lobby"})
        if ack["ok"]:
            break
        assert time.monotonic() < deadline, ack
        await asyncio.sleep(ack["error"]["retry_after_ms"] / 1000)
    assert [m["body"] for m in ack["messages"]] == [0]


async def test_join_beyond_max_rooms_per_connection_gets_room_limit(server: Server) -> None:
    tenant = await server.create_tenant(limits={"max_rooms_per_connection": 2})
    client = await server.connect(tenant.slug, await server.token(tenant.slug))
    assert (await call(client, tenant.slug, "join", {"room": "a"}))["ok"] is True
    assert (await call(client, tenant.slug, "join", {"room": "b"}))["ok"] is True
    assert_error(await call(client, tenant.slug, "join", {"room": "c"}), "room_limit")
    assert (await call(client, tenant.slug, "join", {"room": "a"}))["ok"] is True
    assert (await call(client, tenant.slug, "leave", {"room": "a"}))["ok"] is True
    assert (await call(client, tenant.slug, "join", {"room": "c"}))["ok"] is True
    # The limit is per connection: a second socket of the same user has its own.
    second = await server.connect(tenant.slug, await server.token(tenant.slug))
    assert (await call(second, tenant.slug, "join", {"room": "a"}))["ok"] is True


async def test_token_rooms_claim_limits_joins_with_room_forbidden(server: Server) -> None:
    tenant = await server.create_tenant()
    client = await server.connect(
        tenant.slug, await server.token(tenant.slug, "u1", rooms=["team-*"])
    )
    assert_error(await call(client, tenant.slug, "join", {"room": "other"}), "room_forbidden")
    assert_error(await call(client, tenant.slug, "history", {"room": "other"}), "room_forbidden")
    assert_error(await call(client, tenant.slug, "presence", {"room": "other"}), "room_forbidden")
    assert_error(
        await call(client, tenant.slug, "message", {"room": "other", "body": "x"}), "not_joined"
    )
    ack = await call(client, tenant.slug, "join", {"room": "team-red"})
    assert ack["ok"] is True and ack["room"] == "team-red"


# -- history / presence ---------------------------------------------------------------------------


async def test_history_pages_by_limit_before_and_after(server: Server) -> None:
    tenant = await server.create_tenant()
    client = await joined(server, tenant, "u1")
    await send_many(client, tenant.slug, "lobby", [f"m{i}" for i in range(1, 6)])

    async def page(**query: Any) -> tuple[list[int], bool]:
        ack = await call(client, tenant.slug, "history", {"room": "lobby", **query})
        assert set(ack) == {"ok", "room", "messages", "has_more"} and ack["room"] == "lobby"
        for m in ack["messages"]:
            assert m["body"] == f"m{m['seq']}" and m["sender"] == {"id": "u1", "name": "u1"}
        return [m["seq"] for m in ack["messages"]], ack["has_more"]

    assert await page() == ([1, 2, 3, 4, 5], False)
    assert await page(limit=2) == ([4, 5], True)
    assert await page(limit=5) == ([1, 2, 3, 4, 5], False)
    assert await page(before_seq=4, limit=2) == ([2, 3], True)
    assert await page(before_seq=3, limit=2) == ([1, 2], False)
    assert await page(after_seq=3) == ([4, 5], False)
    assert await page(after_seq=1, limit=2) == ([2, 3], True)
    assert await page(after_seq=5) == ([], False)
    assert await page(after_seq=1, before_seq=5) == ([2, 3, 4], False)


async def test_history_of_unknown_room_is_empty_and_needs_no_join(server: Server) -> None:
    tenant = await server.create_tenant()
    client = await server.connect(tenant.slug, await server.token(tenant.slug))
    ack = await call(client, tenant.slug, "history", {"room": "never-used"})
    assert ack == {"ok": True, "room": "never-used", "messages": [], "has_more": False}


async def test_presence_lists_members_of_the_room(server: Server) -> None:
    tenant = await server.create_tenant()
    await joined(server, tenant, "u1", name="One")
    other = await joined(server, tenant, "u2", name="Two")
    ack = await call(other, tenant.slug, "presence", {"room": "lobby"})
    assert ack["ok"] is True and ack["room"] == "lobby" and set(ack) == {"ok", "room", "members"}
    assert sorted(ack["members"], key=lambda m: m["id"]) == [
        {"id": "u1", "name": "One"},
        {"id": "u2", "name": "Two"},
    ]
    assert await call(other, tenant.slug, "presence", {"room": "empty"}) == {
        "ok": True,
        "room": "empty",
        "members": [],
    }


# -- ephemeral and unknown events -----------------------------------------------------------------


async def test_ephemeral_event_is_relayed_to_others_and_never_stored(server: Server) -> None:
    tenant = await server.create_tenant(ephemeral_events=["typing"])
    alice = await joined(server, tenant, "alice", name="Alice")
    bob = await joined(server, tenant, "bob")
    ns = f"/{tenant.slug}"
    alice_typing, bob_typing = Inbox(alice, "typing", ns), Inbox(bob, "typing", ns)
    ack = await call(alice, tenant.slug, "typing", {"room": "lobby", "data": {"on": True}})
    assert ack == {"ok": True}
    assert await bob_typing.get() == {
        "room": "lobby",
        "sender": {"id": "alice", "name": "Alice"},
        "data": {"on": True},
    }
    # Bob's typing is the marker: alice's own event, had it come back, would arrive first.
    assert await call(bob, tenant.slug, "typing", {"room": "lobby", "data": "marker"}) == {
        "ok": True
    }
    await alice_typing.expect_next(
        {"room": "lobby", "sender": {"id": "bob", "name": "bob"}, "data": "marker"}
    )
    history = await call(alice, tenant.slug, "history", {"room": "lobby"})
    assert history["messages"] == []
    assert (await call(alice, tenant.slug, "join", {"room": "lobby"}))["seq"] == 0
    assert_error(
        await call(alice, tenant.slug, "typing", {"room": "not-joined", "data": 1}), "not_joined"
    )


async def test_undeclared_event_is_unknown_until_the_tenant_declares_it(server: Server) -> None:
    tenant = await server.create_tenant(ephemeral_events=["typing"])
    alice = await joined(server, tenant, "alice")
    bob = await joined(server, tenant, "bob")
    cursors = Inbox(bob, "cursor", f"/{tenant.slug}")
    payload = {"room": "lobby", "data": {"x": 1}}
    assert_error(await call(alice, tenant.slug, "cursor", payload), "unknown_event")
    await cursors.expect_nothing(0.1)
    status, body = await server.request(
        "PATCH", f"/api/v1/tenants/{tenant.slug}", json={"ephemeral_events": ["typing", "cursor"]}
    )
    assert status == 200, body
    assert await call(alice, tenant.slug, "cursor", payload) == {"ok": True}
    assert (await cursors.get())["data"] == {"x": 1}


@pytest.mark.parametrize("event", ["nope", "connect", "disconnect", "typing", "Message", "x" * 300])
async def test_unknown_event_gets_unknown_event(server: Server, event: str) -> None:
    tenant = await server.create_tenant()
    client = await joined(server, tenant, "u1")
    assert_error(await call(client, tenant.slug, event, {"room": "lobby"}), "unknown_event")
    assert (await call(client, tenant.slug, "presence", {"room": "lobby"}))["ok"] is True


async def test_client_event_named_disconnect_keeps_rooms_and_presence(server: Server) -> None:
    tenant = await server.create_tenant()
    alice = await joined(server, tenant, "alice")
    bob = await joined(server, tenant, "bob")
    ns = f"/{tenant.slug}"
    presence, inbox = Inbox(bob, "presence", ns), Inbox(alice, "message", ns)
    assert_error(
        await call(alice, tenant.slug, "disconnect", "io client disconnect"), "unknown_event"
    )
    await presence.expect_nothing()
    await call(bob, tenant.slug, "message", {"room": "lobby", "body": "still there?"})
    assert (await inbox.get())["body"] == "still there?"
    members = (await call(bob, tenant.slug, "presence", {"room": "lobby"}))["members"]
    assert sorted(m["id"] for m in members) == ["alice", "bob"]


async def test_client_event_named_connect_cannot_readmit_the_socket(server: Server) -> None:
    tenant = await server.create_tenant(limits={"max_rooms_per_connection": 1})
    client = await joined(server, tenant, "alice")
    other_user = await server.token(tenant.slug, "mallory")
    ack = await call(client, tenant.slug, "connect", ({}, {"token": other_user}))
    assert_error(ack, "unknown_event")
    # Neither the identity nor the room count was reset.
    assert_error(await call(client, tenant.slug, "join", {"room": "second"}), "room_limit")
    sent = await call(client, tenant.slug, "message", {"room": "lobby", "body": 1})
    history = await call(client, tenant.slug, "history", {"room": "lobby"})
    assert [(m["seq"], m["sender"]["id"]) for m in history["messages"]] == [(sent["seq"], "alice")]


# -- malformed payloads ---------------------------------------------------------------------------

MALFORMED: list[tuple[str, str, Any]] = [
    ("no payload", "join", None),
    ("string payload", "join", "lobby"),
    ("number payload", "join", 5),
    ("list payload", "join", [{"room": "lobby"}]),
    ("two arguments", "join", ({"room": "lobby"}, {"room": "lobby"})),
    ("missing room", "join", {}),
    ("room null", "join", {"room": None}),
    ("room empty", "join", {"room": ""}),
    ("room too long", "join", {"room": "r" * 129}),
    ("room with space", "join", {"room": "bad room"}),
    ("room with slash", "join", {"room": "a/b"}),
    ("room with unicode", "join", {"room": "caf\u00e9"}),
    ("room a number", "join", {"room": 5}),
    ("since negative", "join", {"room": "lobby", "since": -1}),
    ("since a string", "join", {"room": "lobby", "since": "3"}),
    ("since a float", "join", {"room": "lobby", "since": 1.5}),
    ("since a boolean", "join", {"room": "lobby", "since": True}),
    ("since beyond int64", "join", {"room": "lobby", "since": 2**63}),
    ("leave without room", "leave", {}),
    ("presence room a list", "presence", {"room": ["lobby"]}),
    ("history limit zero", "history", {"room": "lobby", "limit": 0}),
    ("history limit huge", "history", {"room": "lobby", "limit": 10**9}),
    ("history limit a string", "history", {"room": "lobby", "limit": "5"}),
    ("history before_seq negative", "history", {"room": "lobby", "before_seq": -1}),
    ("history after_seq a string", "history", {"room": "lobby", "after_seq": "1"}),
    ("message not an object", "message", "hello"),
    ("message body missing", "message", {"room": "lobby"}),
    ("message client_id a number", "message", {"room": "lobby", "body": 1, "client_id": 7}),
    ("message client_id empty", "message", {"room": "lobby", "body": 1, "client_id": ""}),
    ("message client_id too long", "message", {"room": "lobby", "body": 1, "client_id": "c" * 129}),
    ("message body binary", "message", {"room": "lobby", "body": b"\x00\x01\xff"}),
    ("message body nested binary", "message", {"room": "lobby", "body": {"b": [b"\x00"]}}),
    ("ephemeral data binary", "typing", {"room": "lobby", "data": b"\x00"}),
    ("ephemeral without room", "typing", {"data": 1}),
]


async def test_every_malformed_payload_gets_bad_request_and_the_socket_stays_up(
    server: Server,
) -> None:
    tenant = await server.create_tenant(ephemeral_events=["typing"])
    client = await joined(server, tenant, "u1")
    reader = await joined(server, tenant, "u2")
    inbox = Inbox(reader, "message", f"/{tenant.slug}")
    codes = {}
    for what, event, data in MALFORMED:
        ack = await call(client, tenant.slug, event, data)
        codes[what] = ack["error"]["code"] if isinstance(ack, dict) and "error" in ack else ack
        if codes[what] == "bad_request":
            assert_error(ack, "bad_request")
    assert codes == {what: "bad_request" for what, _, _ in MALFORMED}
    assert client.connected
    assert_sent(
        await call(client, tenant.slug, "message", {"room": "lobby", "body": "still here"}),
        "lobby",
        1,
    )
    assert (await inbox.get())["body"] == "still here"
    # Nothing else was delivered: the next event is the marker sent after it.
    marker = {"room": "lobby", "body": "marker"}
    assert_sent(await call(client, tenant.slug, "message", marker), "lobby", 2)
    assert (await inbox.get())["body"] == "marker"


# -- live tenant changes --------------------------------------------------------------------------


async def wait_disconnected(client: socketio.AsyncClient, slug: str) -> asyncio.Event:
    gone = asyncio.Event()
    client.on("disconnect", lambda *args: gone.set(), namespace=f"/{slug}")
    return gone


@pytest.mark.parametrize("change", ["suspend", "delete"])
async def test_suspend_or_delete_disconnects_every_socket_within_a_second(
    server: Server, change: str
) -> None:
    tenant = await server.create_tenant()
    bystander = await server.create_tenant()
    token = await server.token(tenant.slug)
    clients = [await joined(server, tenant, f"u{i}") for i in range(3)]
    other = await joined(server, bystander, "u0")
    events = [await wait_disconnected(c, tenant.slug) for c in clients]
    other_gone = await wait_disconnected(other, bystander.slug)
    if change == "suspend":
        status, _ = await server.request(
            "PATCH", f"/api/v1/tenants/{tenant.slug}", json={"status": "suspended"}
        )
        assert status == 200
    else:
        status, _ = await server.request("DELETE", f"/api/v1/tenants/{tenant.slug}")
        assert status == 204
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 1.0)
    assert not other_gone.is_set()
    assert (await call(other, bystander.slug, "presence", {"room": "lobby"}))["ok"] is True
    code = "tenant_suspended" if change == "suspend" else "tenant_not_found"
    assert_refused(await refusal(server, f"/{tenant.slug}", auth={"token": token}), code)


async def test_resumed_tenant_accepts_connects_again(server: Server) -> None:
    tenant = await server.create_tenant()
    token = await server.token(tenant.slug)
    path = f"/api/v1/tenants/{tenant.slug}"
    assert (await server.request("PATCH", path, json={"status": "suspended"}))[0] == 200
    assert (await server.request("PATCH", path, json={"status": "active"}))[0] == 200
    client = await server.connect(tenant.slug, token)
    assert (await call(client, tenant.slug, "join", {"room": "lobby"}))["ok"] is True


# -- recovery after a disconnect ------------------------------------------------------------------


async def catch_up(client: socketio.AsyncClient, slug: str, room: str, since: int) -> list[Any]:
    """Join with ``since`` and page through ``missed`` until nothing is truncated (bounded)."""
    bodies: list[Any] = []
    for _ in range(50):
        ack = await call(client, slug, "join", {"room": room, "since": since})
        assert ack["ok"] is True, ack
        assert [m["seq"] for m in ack["missed"]] == list(
            range(since + 1, since + 1 + len(ack["missed"]))
        )
        bodies += [m["body"] for m in ack["missed"]]
        if not ack["truncated"]:
            return bodies
        since = ack["missed"][-1]["seq"]
    raise AssertionError("replay never finished")


async def test_reconnect_with_since_receives_exactly_the_missed_messages(server: Server) -> None:
    tenant = await server.create_tenant()
    sender = await joined(server, tenant, "u1")
    reader = await joined(server, tenant, "u2")
    inbox = Inbox(reader, "message", f"/{tenant.slug}")
    await send_many(sender, tenant.slug, "lobby", ["seen-1", "seen-2"])
    last = [(await inbox.get())["seq"] for _ in range(2)][-1]
    await reader.disconnect()
    await send_many(sender, tenant.slug, "lobby", ["missed-3", "missed-4", "missed-5"])
    back = await server.connect(tenant.slug, await server.token(tenant.slug, "u2"))
    live = Inbox(back, "message", f"/{tenant.slug}")
    assert await catch_up(back, tenant.slug, "lobby", last) == ["missed-3", "missed-4", "missed-5"]
    await live.expect_nothing()
    assert_sent(
        await call(sender, tenant.slug, "message", {"room": "lobby", "body": "live-6"}), "lobby", 6
    )
    assert (await live.get())["seq"] == 6
    # Nothing else was delivered: the next event is the marker sent after it.
    marker = {"room": "lobby", "body": "marker"}
    assert_sent(await call(sender, tenant.slug, "message", marker), "lobby", 7)
    assert (await live.get())["seq"] == 7


async def test_reconnect_after_server_restart_replays_every_acked_message(
    database_url: str, tmp_path: Path
) -> None:
    settings = node_settings(database_url, tmp_path)
    async with start_server(settings) as first:
        tenant = await first.create_tenant()
        sender = await joined(first, tenant, "u1")
        reader = await joined(first, tenant, "u2")
        inbox = Inbox(reader, "message", f"/{tenant.slug}")
        await send_many(sender, tenant.slug, "lobby", ["before-1"])
        last = (await inbox.get())["seq"]
        await reader.disconnect()
        # Pipelined sends: each ack means stored, so every one of them must survive the restart.
        acks = await asyncio.gather(
            *(
                call(sender, tenant.slug, "message", {"room": "lobby", "body": f"m-{i}"})
                for i in range(2, 12)
            )
        )
        assert [a["seq"] for a in acks] == list(range(2, 12))
    async with start_server(settings) as second:
        back = await second.connect(tenant.slug, await second.token(tenant.slug, "u2"))
        assert await catch_up(back, tenant.slug, "lobby", last) == [f"m-{i}" for i in range(2, 12)]
        again = await joined(second, tenant, "u1")
        assert_sent(
            await call(again, tenant.slug, "message", {"room": "lobby", "body": "after"}),
            "lobby",
            12,
        )


async def test_an_event_of_a_socket_whose_tenant_was_suspended_gets_tenant_suspended(
    server: Server, database_url: str
) -> None:
    # A suspension this node has not been told about (another node's CLI, no Redis): the socket
    # is still up, and its next event finds the tenant suspended in the database.
    tenant = await server.create_tenant()
    client = await joined(server, tenant, "alice")
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE tenants SET status = 'suspended' WHERE slug = :slug"),
                {"slug": tenant.slug},
            )
    finally:
        await engine.dispose()
    await server.app[SERVICES].directory.invalidate(tenant.slug)
    ack = await call(client, tenant.slug, "message", {"room": "lobby", "body": "x"})
    assert ack == {
        "ok": False,
        "error": {"code": "tenant_suspended", "message": "tenant is suspended"},
    }
    history = await call(client, tenant.slug, "history", {"room": "lobby"})
    assert history["error"]["code"] == "tenant_suspended"


async def test_a_volatile_broadcast_skips_a_recipient_that_is_behind_but_messages_do_not(
    server: Server,
) -> None:
    # Ephemeral events are volatile: a recipient whose outgoing queue is backed up misses them.
    # The backlog is made directly on the server's queue for that socket (harmless no-op
    # packets): a real slow network cannot be produced on demand on loopback.
    from engineio import packet as engine_packet

    from orgcast.realtime.patches import VOLATILE_BACKLOG
    from orgcast.realtime.server import room_key
    from orgcast.state import REALTIME

    tenant = await server.create_tenant(ephemeral_events=["typing"])
    ns = f"/{tenant.slug}"
    slow = await joined(server, tenant, "slow")
    typing, messages = Inbox(slow, "typing", ns), Inbox(slow, "message", ns)
    sio = server.app[REALTIME].sio
    (eio_sid,) = [eio for _, eio in sio.manager.get_participants(ns, room_key("lobby"))]
    queue = sio.eio.sockets[eio_sid].queue
    for _ in range(VOLATILE_BACKLOG + 1):
        queue.put_nowait(engine_packet.Packet(engine_packet.NOOP))
    # No await between filling the queue and the two broadcasts: the backlog is still there.
    typing_event = {"room": "lobby", "sender": {"id": "x", "name": "x"}, "data": 1}
    emitted = [
        sio.manager.emit("typing", typing_event, ns, room=room_key("lobby"), volatile=True),
        sio.manager.emit("message", {"room": "lobby", "seq": 0}, ns, room=room_key("lobby")),
    ]
    for coroutine in emitted:
        await coroutine
    assert await messages.get() == {"room": "lobby", "seq": 0}
    await typing.expect_nothing()
