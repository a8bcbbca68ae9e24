"""The tenant backend API (DESIGN §6): REST publish (stored, then broadcast to the whole room;
idempotent by client_id), REST history paging, and the rooms list."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from orgcast.api import schemas
from orgcast.settings import MessagesSettings
from tests.support import Inbox, Server, Tenant, joined, node_settings, start_server

TENANTS = "/api/v1/tenants"
SYSTEM = {"id": "system", "name": "system"}


def messages_path(tenant: Tenant, room: str) -> str:
    return f"{TENANTS}/{tenant.slug}/rooms/{room}/messages"


async def publish(server: Server, tenant: Tenant, room: str, **body: Any) -> dict[str, Any]:
    status, answer = await server.request("POST", messages_path(tenant, room), json=body)
    assert status == 201, answer
    return dict(answer)


def marker_event(published: dict[str, Any]) -> dict[str, Any]:
    """The fields of the message event a publish answer predicts."""
    return {key: published[key] for key in ("id", "room", "seq", "ts")}


# -- publish ------------------------------------------------------------------------------------


async def test_publish_stores_then_broadcasts_to_every_socket_in_the_room(server: Server) -> None:
    tenant = await server.create_tenant()
    namespace = f"/{tenant.slug}"
    alice, bob = (
        await joined(server, tenant, "alice", "general"),
        await joined(server, tenant, "bob", "general"),
    )
    elsewhere = await joined(server, tenant, "carol", "random")
    inboxes = [Inbox(alice, "message", namespace), Inbox(bob, "message", namespace)]
    other = Inbox(elsewhere, "message", namespace)

    status, published = await server.request(
        "POST", messages_path(tenant, "general"), json={"body": {"text": "deploy done", "n": 1}}
    )
    assert status == 201
    schemas.Published.model_validate(published, strict=True)
    assert published["room"] == "general"
    assert published["seq"] == 1
    assert published["duplicate"] is False
    expected = {
        "id": published["id"],
        "room": "general",
        "seq": 1,
        "ts": published["ts"],
        "sender": SYSTEM,
        "body": {"text": "deploy done", "n": 1},
    }
    for inbox in inboxes:
        assert await inbox.get() == expected
    # A marker in carol's room: the general message, had it reached her, would come first.
    marker = await publish(server, tenant, "random", body="marker")
    await other.expect_next({**expected, **marker_event(marker), "body": "marker"})

    status, history = await server.request("GET", messages_path(tenant, "general"))
    assert (status, history) == (
        200,
        {"room": "general", "messages": [expected], "has_more": False},
    )


async def test_publish_with_sender_and_client_id_carries_them_to_the_room(server: Server) -> None:
    tenant = await server.create_tenant()
    client = await joined(server, tenant, "alice", "ops")
    inbox = Inbox(client, "message", f"/{tenant.slug}")
    published = await publish(
        server, tenant, "ops", body="hi", sender={"id": "bot-1", "name": "Deploy bot"},
        client_id="c-1",
    )  # fmt: skip
    assert await inbox.get() == {
        "id": published["id"],
        "room": "ops",
        "seq": 1,
        "ts": published["ts"],
        "sender": {"id": "bot-1", "name": "Deploy bot"},
        "body": "hi",
        "client_id": "c-1",
    }


async def test_publish_twice_with_the_same_client_id_stores_and_broadcasts_once(
    server: Server,
) -> None:
    tenant = await server.create_tenant()
    client = await joined(server, tenant, "alice", "general")
    inbox = Inbox(client, "message", f"/{tenant.slug}")
    first = await publish(server, tenant, "general", body="once", client_id="retry-1")
    assert first["duplicate"] is False
    assert (await inbox.get())["id"] == first["id"]

    status, second = await server.request(
        "POST", messages_path(tenant, "general"), json={"body": "once", "client_id": "retry-1"}
    )
    assert status == 200
    assert second == {**first, "duplicate": True}
    # Another sender's identical client_id is its own message.
    third = await publish(
        server, tenant, "general", body="x", client_id="retry-1", sender={"id": "bot"}
    )
    assert (third["seq"], third["duplicate"]) == (2, False)
    # The duplicate was not broadcast: the next message the client sees is the third.
    assert (await inbox.get())["id"] == third["id"]
    status, history = await server.request("GET", messages_path(tenant, "general"))
    assert [m["seq"] for m in history["messages"]] == [1, 2]


async def test_publish_body_over_max_message_bytes_is_413_too_large_and_not_stored(
    server: Server,
) -> None:
    tenant = await server.create_tenant(limits={"max_message_bytes": 20})
    status, body = await server.request(
        "POST", messages_path(tenant, "general"), json={"body": "x" * 30}
    )
    assert (status, body) == (
        413,
        {"error": {"code": "too_large", "message": "body is 32 bytes encoded; the limit is 20"}},
    )
    ok = await publish(server, tenant, "general", body="x" * 18)
    assert ok["seq"] == 1
    status, history = await server.request("GET", messages_path(tenant, "general"))
    assert [m["body"] for m in history["messages"]] == ["x" * 18]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, ["body"]),
        ({"body": 1, "room": "other"}, ["room"]),
        ({"body": 1, "client_id": ""}, ["client_id"]),
        ({"body": 1, "sender": {"name": "no id"}}, ["sender.id"]),
        ({"body": 1, "sender": "bot"}, ["sender"]),
    ],
)
async def test_publish_validates_its_body_with_422(
    server: Server, body: dict[str, Any], fields: list[str]
) -> None:
    tenant = await server.create_tenant()
    status, answer = await server.request("POST", messages_path(tenant, "general"), json=body)
    assert status == 422
    assert [d["field"] for d in answer["error"]["details"]] == fields


async def test_publish_to_a_malformed_room_name_is_400(server: Server) -> None:
    tenant = await server.create_tenant()
    for room in ("with%20space", "x" * 129, "semi;colon"):
        status, body = await server.request(
            "POST", messages_path(tenant, room), json={"body": "hi"}
        )
        assert (status, body) == (
            400,
            {
                "error": {
                    "code": "bad_request",
                    "message": "room must be 1-128 characters of A-Z a-z 0-9 _ . : @ -",
                }
            },
        ), room


async def test_publish_to_a_suspended_tenant_is_403_tenant_suspended(server: Server) -> None:
    tenant = await server.create_tenant()
    status, _ = await server.request(
        "PATCH", f"{TENANTS}/{tenant.slug}", json={"status": "suspended"}
    )
    assert status == 200
    status, body = await server.request(
        "POST", messages_path(tenant, "general"), json={"body": "hi"}, token=tenant.api_key
    )
    assert (status, body["error"]["code"]) == (403, "tenant_suspended")


# -- history ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "seqs", "has_more"),
    [
        ({}, [1, 2, 3, 4, 5, 6, 7], False),
        ({"limit": "3"}, [5, 6, 7], True),
        ({"before_seq": "5", "limit": "3"}, [2, 3, 4], True),
        ({"before_seq": "2", "limit": "3"}, [1], False),
        ({"after_seq": "3", "limit": "2"}, [4, 5], True),
        ({"after_seq": "5"}, [6, 7], False),
        ({"after_seq": "2", "before_seq": "6"}, [3, 4, 5], False),
        ({"after_seq": "7"}, [], False),
        ({"limit": "7"}, [1, 2, 3, 4, 5, 6, 7], False),
    ],
)
async def test_history_pages_by_seq_oldest_first(
    server: Server, params: dict[str, str], seqs: list[int], has_more: bool
) -> None:
    tenant = await server.create_tenant()
    for i in range(1, 8):
        await publish(server, tenant, "log", body={"i": i})
    status, page = await server.request("GET", messages_path(tenant, "log"), params=params)
    assert status == 200
    schemas.History.model_validate(page, strict=True)
    assert [m["seq"] for m in page["messages"]] == seqs
    assert [m["body"] for m in page["messages"]] == [{"i": s} for s in seqs]
    assert page["has_more"] is has_more
    assert page["room"] == "log"


async def test_history_of_a_room_without_messages_is_empty(server: Server) -> None:
    tenant = await server.create_tenant()
    assert await server.request("GET", messages_path(tenant, "empty")) == (
        200,
        {"room": "empty", "messages": [], "has_more": False},
    )


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"before_seq": "-1"}, "before_seq"),
        ({"after_seq": "x"}, "after_seq"),
        ({"since": "1"}, "since"),
    ],
)
async def test_history_refuses_bad_query_parameters_with_422(
    server: Server, params: dict[str, str], field: str
) -> None:
    tenant = await server.create_tenant()
    status, body = await server.request("GET", messages_path(tenant, "log"), params=params)
    assert status == 422
    assert [d["field"] for d in body["error"]["details"]] == [field]


# -- rooms --------------------------------------------------------------------------------------


async def test_rooms_list_has_last_seq_message_count_and_live_members_in_pages(
    server: Server,
) -> None:
    tenant = await server.create_tenant()
    for room, count in (("alpha", 1), ("beta", 3), ("gamma", 2)):
        for i in range(count):
            await publish(server, tenant, room, body=i)
    # Two sockets of one user and one of another: two distinct members.
    await joined(server, tenant, "alice", "beta")
    await joined(server, tenant, "alice", "beta")
    await joined(server, tenant, "bob", "beta")
    await joined(server, tenant, "carol", "gamma")
    rooms = f"{TENANTS}/{tenant.slug}/rooms"

    status, page = await server.request("GET", rooms, token=tenant.api_key)
    assert status == 200
    schemas.RoomPage.model_validate(page, strict=True)
    assert page == {
        "rooms": [
            {"room": "alpha", "last_seq": 1, "message_count": 1, "members": 0},
            {"room": "beta", "last_seq": 3, "message_count": 3, "members": 2},
            {"room": "gamma", "last_seq": 2, "message_count": 2, "members": 1},
        ],
        "next_cursor": None,
    }

    status, first = await server.request("GET", rooms, params={"limit": "2"})
    assert [r["room"] for r in first["rooms"]] == ["alpha", "beta"]
    assert first["next_cursor"] == "beta"
    status, second = await server.request(
        "GET", rooms, params={"limit": "2", "cursor": first["next_cursor"]}
    )
    assert [r["room"] for r in second["rooms"]] == ["gamma"]
    assert second["next_cursor"] is None


async def test_rooms_of_one_tenant_never_show_another_tenants_rooms(server: Server) -> None:
    mine, theirs = await server.create_tenant(), await server.create_tenant()
    await publish(server, theirs, "secret-room", body="x")
    await joined(server, theirs, "eve", "secret-room")
    assert await server.request("GET", f"{TENANTS}/{mine.slug}/rooms") == (
        200,
        {"rooms": [], "next_cursor": None},
    )
    assert await server.request("GET", messages_path(mine, "secret-room")) == (
        200,
        {"room": "secret-room", "messages": [], "has_more": False},
    )


# -- back-pressure --------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_publish_while_the_store_is_backed_up_is_429_with_retry_after(
    pg_database: str, pg_server: str, tmp_path: Path
) -> None:
    """A row lock held by another transaction stalls the writer for real; with room for one
    message in the queue, a third concurrent publish must be refused, not buffered."""
    messages = MessagesSettings(queue_max=1, batch_max_size=1, retention_interval_seconds=3600)
    async with start_server(node_settings(pg_database, tmp_path, messages=messages)) as server:
        tenant = await server.create_tenant()
        await publish(server, tenant, "busy", body=0)
        dsn = make_url(pg_database).set(drivername="postgresql").render_as_string(False)
        blocker = await asyncpg.connect(dsn)
        try:
            lock = blocker.transaction()
            await lock.start()
            await blocker.execute(
                "SELECT 1 FROM rooms JOIN tenants ON tenants.id = rooms.tenant_id "
                "WHERE tenants.slug = $1 AND rooms.name = 'busy' FOR UPDATE OF rooms",
                tenant.slug,
            )
            path = messages_path(tenant, "busy")

            async def attempt(i: int) -> tuple[int, dict[str, str], Any]:
                async with server.http.post(
                    server.url + path,
                    json={"body": i},
                    headers={"Authorization": f"Bearer {tenant.api_key}"},
                ) as response:
                    return response.status, dict(response.headers), await response.json()

            tasks = [asyncio.create_task(attempt(i)) for i in (1, 2, 3)]
            # While the lock holds, nothing can be stored: whatever finishes first was refused.
            done, _ = await asyncio.wait(tasks, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            assert done, "no publish was refused while the store was stalled"
            status, headers, body = next(iter(done)).result()
            assert status == 429
            assert headers["Retry-After"] == "1"
            assert body == {
                "error": {
                    "code": "rate_limited",
                    "message": "the message store is busy; retry shortly",
                    "retry_after_ms": 100,
                }
            }
        finally:
            await lock.rollback()
            await blocker.close()
        results = [await asyncio.wait_for(task, 10) for task in tasks]
        statuses = sorted(r[0] for r in results)
        assert statuses in ([201, 201, 429], [201, 429, 429])
        status, history = await server.request("GET", messages_path(tenant, "busy"))
        assert [m["seq"] for m in history["messages"]] == list(range(1, statuses.count(201) + 2))
