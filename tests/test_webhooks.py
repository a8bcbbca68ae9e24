"""Webhooks on one node: endpoints, the outbox, signed deliveries, retries, the delivery log.

Every test uses a real receiver on 127.0.0.1 (hence ``allow_private_targets``), and verifies
signatures with the reference ``standardwebhooks`` package, not with orgcast's own code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from orgcast.settings import WebhooksSettings
from orgcast.state import WEBHOOK_WORKER
from tests.support import Server, Tenant, eventually, node_settings, start_server
from tests.webhooks_support import FAST, Receiver, quiet_endpoints, receiver


@pytest.fixture
async def node(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    async with start_server(node_settings(database_url, tmp_path, webhooks=FAST)) as server:
        yield server


@pytest.fixture
async def target() -> AsyncIterator[Receiver]:
    async with receiver() as found:
        yield found


@pytest.fixture(autouse=True)
async def _quiet_endpoints(database_url: str) -> AsyncIterator[None]:
    yield
    await quiet_endpoints(database_url)


async def add_endpoint(
    server: Server, tenant: Tenant, url: str, events: list[str] | None = None
) -> dict[str, Any]:
    status, body = await server.request(
        "POST",
        f"/api/v1/tenants/{tenant.slug}/webhooks",
        token=tenant.api_key,
        json={"url": url, "events": events or ["message.created"]},
    )
    assert status == 201, body
    return dict(body)


async def publish(server: Server, tenant: Tenant, room: str, body: Any, **extra: Any) -> Any:
    status, answer = await server.request(
        "POST",
        f"/api/v1/tenants/{tenant.slug}/rooms/{room}/messages",
        token=tenant.api_key,
        json={"body": body, **extra},
    )
    assert status in (200, 201), answer
    return answer


async def deliveries(server: Server, tenant: Tenant, endpoint: str) -> list[dict[str, Any]]:
    status, body = await server.request(
        "GET", f"/api/v1/tenants/{tenant.slug}/webhooks/{endpoint}/deliveries?limit=200"
    )
    assert status == 200, body
    return list(body["deliveries"])


async def settled(server: Server, tenant: Tenant, endpoint: str) -> list[dict[str, Any]]:
    """The delivery log once no delivery is pending (the receiver answers before the node
    records the attempt)."""
    logged: list[dict[str, Any]] = []

    async def done() -> bool:
        logged[:] = await deliveries(server, tenant, endpoint)
        return bool(logged) and all(d["status"] != "pending" for d in logged)

    await eventually(done)
    return logged


def verified(target: Receiver, secret: str) -> list[dict[str, Any]]:
    """Every event received, each request's signature checked by the reference library."""
    events = []
    for request in target.received:
        payload = Webhook(secret).verify(request.body, request.headers)
        events += payload["events"]
    return events


async def test_every_acked_message_has_exactly_one_signed_message_created_event(
    node: Server, target: Receiver
) -> None:
    tenant = await node.create_tenant()
    endpoint = await add_endpoint(node, tenant, target.url)
    assert endpoint["secret"].startswith("whsec_")
    token = await node.token(tenant.slug, "alice", name="Alice")
    client = await node.connect(tenant.slug, token)
    ns = f"/{tenant.slug}"
    await client.call("join", {"room": "lobby"}, namespace=ns)
    acks = [
        await client.call("message", {"room": "lobby", "body": {"n": i}}, namespace=ns)
        for i in range(20)
    ]
    acks.append(await client.call("message", {"room": "lobby", "body": "x", "client_id": "c1"},
                                  namespace=ns))  # fmt: skip
    resent = await client.call(
        "message", {"room": "lobby", "body": "x", "client_id": "c1"}, namespace=ns
    )
    assert resent["id"] == acks[-1]["id"]
    published = await publish(node, tenant, "news", [1, None, "two"])

    async def all_arrived() -> bool:
        return len(target.events()) >= 22

    await eventually(all_arrived)
    events = verified(target, endpoint["secret"])
    assert sorted(e["id"] for e in events) == sorted("evt_" + a["id"] for a in [*acks, published])
    assert len({e["id"] for e in events}) == len(events) == 22
    by_message = {e["data"]["id"]: e for e in events}
    for ack in acks[:20]:
        event = by_message[ack["id"]]
        assert event["type"] == "message.created"
        assert event["tenant"] == tenant.slug
        assert isinstance(event["created_at"], int)
        assert event["data"] == {
            "id": ack["id"], "room": "lobby", "seq": ack["seq"], "ts": ack["ts"],
            "sender": {"id": "alice", "name": "Alice"}, "body": {"n": acks.index(ack)},
        }  # fmt: skip
    assert by_message[acks[20]["id"]]["data"]["client_id"] == "c1"
    assert by_message[published["id"]]["data"]["body"] == [1, None, "two"]
    assert by_message[published["id"]]["data"]["sender"] == {"id": "system", "name": "system"}
    # Within one room the events come oldest first.
    seqs = [e["data"]["seq"] for e in events if e["data"]["room"] == "lobby"]
    assert seqs == sorted(seqs)
    for request in target.received:
        assert request.headers["webhook-id"].startswith("msg_")
        assert request.headers["Content-Type"] == "application/json"
    logged = await settled(node, tenant, endpoint["id"])
    assert {d["status"] for d in logged} == {"delivered"}
    assert sorted(i for d in logged for i in d["event_ids"]) == sorted(e["id"] for e in events)
    assert all(d["attempt"] == 1 and d["http_status"] == 200 for d in logged)


async def test_tenants_without_endpoints_and_unsubscribed_types_produce_no_events(
    node: Server, target: Receiver
) -> None:
    quiet, hooked = await node.create_tenant(), await node.create_tenant()
    await add_endpoint(node, hooked, target.url, ["user.offline"])
    await publish(node, quiet, "lobby", "a")
    await publish(node, hooked, "lobby", "b")
    endpoint = await add_endpoint(node, hooked, target.url, ["*"])
    answer = await publish(node, hooked, "lobby", "c")

    async def arrived() -> bool:
        return len(target.events()) >= 1

    await eventually(arrived)
    assert [e["id"] for e in verified(target, endpoint["secret"])] == ["evt_" + answer["id"]]


async def test_a_receiver_failing_the_first_attempts_gets_the_event_later(
    node: Server, target: Receiver
) -> None:
    tenant = await node.create_tenant()
    endpoint = await add_endpoint(node, tenant, target.url)
    target.script = [500, 503]
    answer = await publish(node, tenant, "lobby", "hello")

    async def delivered() -> bool:
        return len(target.received) == 1

    await eventually(delivered)
    assert [e["id"] for e in verified(target, endpoint["secret"])] == ["evt_" + answer["id"]]
    assert target.attempts == 3
    (logged,) = await settled(node, tenant, endpoint["id"])
    assert (logged["status"], logged["attempt"], logged["http_status"]) == ("delivered", 3, 200)
    assert logged["error"] is None and logged["next_attempt_at"] is None


@pytest.mark.parametrize(
    ("action", "error"),
    [
        ("garbage", "ClientResponseError"),
        ("hang", "no response within 1 s"),
        ("reset", "ServerDisconnectedError"),
        ("redirect", "HTTP 302: redirects are not followed"),
        (500, "HTTP 500"),
    ],
)
async def test_a_misbehaving_receiver_is_a_failed_attempt_then_retried(
    database_url: str, tmp_path: Path, target: Receiver, action: int | str, error: str
) -> None:
    # Half a second between attempts: long enough to read the failed attempt in the log.
    settings = FAST.model_copy(update={"retry_schedule_seconds": [0.5]})
    async with start_server(node_settings(database_url, tmp_path, webhooks=settings)) as node:
        tenant = await node.create_tenant()
        endpoint = await add_endpoint(node, tenant, target.url)
        target.script = [action]
        answer = await publish(node, tenant, "lobby", "hello")
        failed: list[dict[str, Any]] = []

        async def failed_once() -> bool:
            failed[:] = await deliveries(node, tenant, endpoint["id"])
            return bool(failed) and failed[0]["attempt"] == 1

        await eventually(failed_once)
        assert failed[0]["status"] == "pending"
        assert error in failed[0]["error"]
        assert failed[0]["http_status"] == (action if isinstance(action, int) else
                                            302 if action == "redirect" else None)  # fmt: skip

        async def delivered() -> bool:
            return len(target.received) == 1

        await eventually(delivered)
        assert [e["id"] for e in verified(target, endpoint["secret"])] == ["evt_" + answer["id"]]
        (logged,) = await settled(node, tenant, endpoint["id"])
        assert (logged["status"], logged["attempt"], logged["error"]) == ("delivered", 2, None)
        # The server is fine: it still answers.
        status, _ = await node.request("GET", "/healthz", token=None)
        assert status == 200


async def test_the_failed_attempt_records_the_error_and_the_next_attempt(
    database_url: str, tmp_path: Path, target: Receiver
) -> None:
    slow = FAST.model_copy(update={"retry_schedule_seconds": [60.0]})
    async with start_server(node_settings(database_url, tmp_path, webhooks=slow)) as node:
        tenant = await node.create_tenant()
        endpoint = await add_endpoint(node, tenant, target.url)
        target.script = ["redirect"]
        await publish(node, tenant, "lobby", "hello")
        logged: list[dict[str, Any]] = []

        async def attempted() -> bool:
            logged[:] = await deliveries(node, tenant, endpoint["id"])
            return bool(logged) and logged[0]["attempt"] == 1

        await eventually(attempted)
        (entry,) = logged
        assert entry["status"] == "pending"
        assert entry["http_status"] == 302
        assert entry["error"] == "HTTP 302: redirects are not followed"
        assert entry["next_attempt_at"] >= entry["created_at"] + 59_000
        assert target.received == []


async def test_410_fails_the_delivery_and_disables_the_endpoint(
    node: Server, target: Receiver
) -> None:
    tenant = await node.create_tenant()
    endpoint = await add_endpoint(node, tenant, target.url)
    target.script = [410]
    await publish(node, tenant, "lobby", "hello")

    async def disabled() -> bool:
        _, body = await node.request(
            "GET", f"/api/v1/tenants/{tenant.slug}/webhooks/{endpoint['id']}"
        )
        return body["enabled"] is False

    await eventually(disabled)
    _, body = await node.request("GET", f"/api/v1/tenants/{tenant.slug}/webhooks/{endpoint['id']}")
    assert body["disabled_reason"] == "gone (HTTP 410)"
    (logged,) = await settled(node, tenant, endpoint["id"])
    assert (logged["status"], logged["http_status"]) == ("failed", 410)
    await publish(node, tenant, "lobby", "not sent")
    assert target.attempts == 1
    # Enabling it again clears the reason.
    status, body = await node.request(
        "PATCH", f"/api/v1/tenants/{tenant.slug}/webhooks/{endpoint['id']}", json={"enabled": True}
    )
    assert status == 200 and body["enabled"] is True and body["disabled_reason"] is None


async def test_an_endpoint_failing_past_max_age_marks_the_delivery_failed(
    database_url: str, tmp_path: Path, target: Receiver
) -> None:
    brief = FAST.model_copy(update={"max_age_hours": 0.5 / 3600, "disable_after_hours": 1.0})
    async with start_server(node_settings(database_url, tmp_path, webhooks=brief)) as node:
        tenant = await node.create_tenant()
        endpoint = await add_endpoint(node, tenant, target.url)
        target.script = [500] * 100
        await publish(node, tenant, "lobby", "hello")
        logged: list[dict[str, Any]] = []

        async def failed() -> bool:
            logged[:] = await deliveries(node, tenant, endpoint["id"])
            return bool(logged) and logged[0]["status"] == "failed"

        await eventually(failed)
        attempts = target.attempts
        assert logged[0]["attempt"] == attempts >= 2
        assert logged[0]["next_attempt_at"] is None


async def test_an_endpoint_failing_for_disable_after_hours_is_disabled(
    database_url: str, tmp_path: Path, target: Receiver
) -> None:
    brief = FAST.model_copy(update={"disable_after_hours": 0.3 / 3600})
    async with start_server(node_settings(database_url, tmp_path, webhooks=brief)) as node:
        tenant = await node.create_tenant()
        endpoint = await add_endpoint(node, tenant, target.url)
        target.script = [500] * 100
        await publish(node, tenant, "lobby", "hello")
        path = f"/api/v1/tenants/{tenant.slug}/webhooks/{endpoint['id']}"

        async def disabled() -> bool:
            _, body = await node.request("GET", path)
            return body["enabled"] is False

        await eventually(disabled)
        _, body = await node.request("GET", path)
        assert body["disabled_reason"] == "failing"


async def test_during_a_rotation_both_secrets_verify_and_afterwards_only_the_new_one(
    database_url: str, tmp_path: Path, target: Receiver
) -> None:
    async with start_server(node_settings(database_url, tmp_path, webhooks=FAST)) as node:
        tenant = await node.create_tenant()
        endpoint = await add_endpoint(node, tenant, target.url)
        path = f"/api/v1/tenants/{tenant.slug}/webhooks/{endpoint['id']}/rotate-secret"
        status, rotated = await node.request("POST", path, token=tenant.api_key)
        assert status == 200, rotated
        assert rotated["secret"].startswith("whsec_") and rotated["secret"] != endpoint["secret"]
        await publish(node, tenant, "lobby", "during")

        async def arrived() -> bool:
            return len(target.received) == 1

        await eventually(arrived)
        (request,) = target.received
        assert len(request.headers["webhook-signature"].split(" ")) == 2
        for secret in (endpoint["secret"], rotated["secret"]):
            assert Webhook(secret).verify(request.body, request.headers)["events"]
    # No overlap: the old secret stops signing at once.
    none = FAST.model_copy(update={"rotation_overlap_hours": 0})
    target.received.clear()
    async with start_server(node_settings(database_url, tmp_path, webhooks=none)) as node:
        status, again = await node.request("POST", path, token=tenant.api_key)
        assert status == 200
        await publish(node, tenant, "lobby", "after")
        await eventually(arrived)
        (request,) = target.received
        assert len(request.headers["webhook-signature"].split(" ")) == 1
        assert Webhook(again["secret"]).verify(request.body, request.headers)["events"]
        with pytest.raises(Exception, match="No matching signature"):
            Webhook(rotated["secret"]).verify(request.body, request.headers)


async def test_the_secret_is_shown_only_at_creation(node: Server, target: Receiver) -> None:
    tenant = await node.create_tenant()
    endpoint = await add_endpoint(node, tenant, target.url, ["*"])
    base = f"/api/v1/tenants/{tenant.slug}/webhooks"
    status, listed = await node.request("GET", base, token=tenant.api_key)
    assert status == 200
    expected = {k: v for k, v in endpoint.items() if k != "secret"}
    assert listed == {"webhooks": [expected]}
    status, one = await node.request("GET", f"{base}/{endpoint['id']}", token=tenant.api_key)
    assert (status, one) == (200, expected)
    status, patched = await node.request(
        "PATCH", f"{base}/{endpoint['id']}", json={"description": "ops", "events": ["user.online"]}
    )
    assert status == 200 and "secret" not in patched
    assert (patched["description"], patched["events"]) == ("ops", ["user.online"])
    assert endpoint["secret"] not in str(
        await node.request("GET", f"/api/v1/tenants/{tenant.slug}")
    )


async def test_bad_input_gets_coded_4xx_errors(database_url: str, tmp_path: Path) -> None:
    settings = node_settings(
        database_url, tmp_path, webhooks=WebhooksSettings(max_endpoints_per_tenant=10)
    )
    async with start_server(settings) as node:
        tenant, other = await node.create_tenant(), await node.create_tenant()
        base = f"/api/v1/tenants/{tenant.slug}/webhooks"

        async def create(body: Any, token: str | None = tenant.api_key) -> tuple[int, Any]:
            return await node.request("POST", base, token=token, json=body)

        status, body = await create({"url": "ftp://example.com/x", "events": ["*"]})
        assert (status, body["error"]["code"]) == (422, "validation_failed")
        assert body["error"]["details"][0]["field"] == "url"
        status, body = await create({"url": "not a url", "events": ["*"]})
        assert (status, body["error"]["code"]) == (422, "validation_failed")
        status, body = await create({"url": "https://example.com/x", "events": ["message.sent"]})
        assert (status, body["error"]["code"]) == (422, "validation_failed")
        assert "unknown event type 'message.sent'" in body["error"]["message"]
        status, body = await create({"url": "https://example.com/x", "events": []})
        assert (status, body["error"]["code"]) == (422, "validation_failed")
        for url in ("http://127.0.0.1:9/x", "http://169.254.169.254/latest", "http://[::1]/x",
                    "http://10.1.2.3/x", "http://localhost/x"):  # fmt: skip
            status, body = await create({"url": url, "events": ["*"]})
            assert (status, body["error"]["code"]) == (422, "target_forbidden"), url
        # Another tenant's API key: forbidden, whatever the route.
        status, body = await create(
            {"url": "https://example.com/x", "events": ["*"]}, other.api_key
        )
        assert (status, body["error"]["code"]) == (403, "forbidden")
        status, body = await node.request("GET", base, token=other.api_key)
        assert (status, body["error"]["code"]) == (403, "forbidden")
        ids = []
        for i in range(10):
            status, body = await create({"url": f"https://192.0.2.{i}.nip.io/x", "events": ["*"]})
            if status == 422:  # a resolver that answers those names with private addresses
                status, body = await create({"url": f"https://example.com/{i}", "events": ["*"]})
            assert status == 201, body
            ids.append(body["id"])
        status, body = await create({"url": "https://example.com/11", "events": ["*"]})
        assert (status, body["error"]["code"]) == (409, "webhook_limit")
        # Another tenant's endpoint id under one's own slug does not exist.
        other_base = f"/api/v1/tenants/{other.slug}/webhooks"
        for method, suffix in (("GET", ""), ("PATCH", ""), ("DELETE", ""),
                               ("POST", "/rotate-secret"), ("GET", "/deliveries")):  # fmt: skip
            kwargs = {"json": {"enabled": False}} if method == "PATCH" else {}
            status, body = await node.request(
                method, f"{other_base}/{ids[0]}{suffix}", token=other.api_key, **kwargs
            )
            assert (status, body["error"]["code"]) == (404, "webhook_not_found"), (method, suffix)
        status, body = await node.request(
            "POST", f"{base}/{ids[0]}/deliveries/msg_nothing/redeliver", token=tenant.api_key
        )
        assert (status, body["error"]["code"]) == (404, "delivery_not_found")
        status, body = await node.request(
            "PATCH", f"{base}/{ids[0]}", token=tenant.api_key, json={"url": "http://127.0.0.2/"}
        )
        assert (status, body["error"]["code"]) == (422, "target_forbidden")
        status, body = await node.request("DELETE", f"{base}/{ids[0]}", token=tenant.api_key)
        assert status == 204
        status, body = await node.request("GET", f"{base}/{ids[0]}", token=tenant.api_key)
        assert (status, body["error"]["code"]) == (404, "webhook_not_found")


async def test_a_success_is_recorded_when_the_node_stops_right_after_the_post(
    database_url: str, tmp_path: Path, target: Receiver
) -> None:
    # Successes are recorded by the worker's next round; a node stopping before that round
    # records them on its way out (else its lease runs out and the batch goes out again).
    settings = node_settings(database_url, tmp_path, webhooks=FAST)
    async with start_server(settings) as first:
        tenant = await first.create_tenant()
        endpoint = await add_endpoint(first, tenant, target.url)
        await publish(first, tenant, "news", "last words")
        await asyncio.wait_for(target.arrived.wait(), timeout=10)
    assert target.attempts == 1
    async with start_server(settings) as second:
        logged = await deliveries(second, tenant, endpoint["id"])
    assert [(d["status"], d["attempt"], d["http_status"]) for d in logged] == [
        ("delivered", 1, 200)
    ]
    assert target.attempts == 1


async def test_the_delivery_log_pages_newest_first_and_redeliver_sends_the_events_again(
    node: Server, target: Receiver
) -> None:
    tenant = await node.create_tenant()
    endpoint = await add_endpoint(node, tenant, target.url)
    sent = []
    for i in range(3):
        sent.append(await publish(node, tenant, "lobby", i))
        count = i + 1

        async def arrived(count: int = count) -> bool:
            return len(target.events()) == count

        await eventually(arrived)
    base = f"/api/v1/tenants/{tenant.slug}/webhooks/{endpoint['id']}/deliveries"
    status, first = await node.request("GET", base + "?limit=2", token=tenant.api_key)
    assert status == 200 and len(first["deliveries"]) == 2 and first["next_cursor"]
    status, rest = await node.request(
        "GET", f"{base}?limit=2&cursor={first['next_cursor']}", token=tenant.api_key
    )
    assert status == 200 and len(rest["deliveries"]) == 1 and rest["next_cursor"] is None
    pages = first["deliveries"] + rest["deliveries"]
    assert [d["event_ids"] for d in pages] == [["evt_" + s["id"]] for s in reversed(sent)]
    oldest = pages[-1]
    status, copy = await node.request(
        "POST", f"{base}/{oldest['id']}/redeliver", token=tenant.api_key
    )
    assert status == 202, copy
    assert copy["event_ids"] == oldest["event_ids"] and copy["id"] != oldest["id"]

    async def again() -> bool:
        return len(target.received) == 4

    await eventually(again)
    assert target.received[-1].headers["webhook-id"] == copy["id"]
    assert verified(target, endpoint["secret"])[-1]["id"] == "evt_" + sent[0]["id"]


async def test_finished_deliveries_are_pruned_after_keep_days(
    database_url: str, tmp_path: Path, target: Receiver
) -> None:
    brief = FAST.model_copy(update={"keep_days": 0.001 / 86400})
    async with start_server(node_settings(database_url, tmp_path, webhooks=brief)) as node:
        tenant = await node.create_tenant()
        endpoint = await add_endpoint(node, tenant, target.url)
        await publish(node, tenant, "lobby", "hello")

        async def delivered() -> bool:
            return len(target.received) == 1

        await eventually(delivered)

        async def pruned() -> bool:
            await node.app[WEBHOOK_WORKER].prune()
            return await deliveries(node, tenant, endpoint["id"]) == []

        await eventually(pruned)


async def test_sqlite_writes_the_outbox_in_the_message_transaction_too(
    tmp_path: Path, target: Receiver
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'orgcast.sqlite3'}"
    async with start_server(node_settings(url, tmp_path, webhooks=FAST)) as node:
        tenant = await node.create_tenant()
        endpoint = await add_endpoint(node, tenant, target.url)
        first = await publish(node, tenant, "lobby", {"a": 1}, client_id="k")
        second = await publish(node, tenant, "lobby", {"a": 2})

        async def arrived() -> bool:
            return len(target.events()) == 2

        await eventually(arrived)
        events = verified(target, endpoint["secret"])
        assert [e["data"]["seq"] for e in events] == [1, 2]
        assert events[0]["data"] == {
            "id": first["id"], "room": "lobby", "seq": 1, "ts": first["ts"],
            "sender": {"id": "system", "name": "system"}, "body": {"a": 1}, "client_id": "k",
        }  # fmt: skip
        assert events[1]["id"] == "evt_" + second["id"]


async def test_delivery_checks_the_target_again_and_refuses_private_addresses(
    database_url: str, tmp_path: Path, target: Receiver
) -> None:
    # Endpoints made while private targets were allowed, delivered by a node that forbids them:
    # an IP literal and a name that resolves to loopback are both refused at connection time.
    port = target.url.split(":")[2].split("/")[0]
    async with start_server(node_settings(database_url, tmp_path, webhooks=FAST)) as node:
        tenant = await node.create_tenant()
        literal = await add_endpoint(node, tenant, target.url)
        named = await add_endpoint(node, tenant, f"http://localhost:{port}/hook")
    strict = FAST.model_copy(
        update={"allow_private_targets": False, "retry_schedule_seconds": [60.0]}
    )
    async with start_server(node_settings(database_url, tmp_path, webhooks=strict)) as node:
        await publish(node, tenant, "lobby", "hello")
        errors: dict[str, str] = {}

        async def refused() -> bool:
            for endpoint in (literal, named):
                logged = await deliveries(node, tenant, endpoint["id"])
                if logged and logged[0]["attempt"] == 1:
                    errors[endpoint["id"]] = logged[0]["error"]
            return len(errors) == 2

        await eventually(refused)
        assert errors[literal["id"]] == "127.0.0.1 is a private address"
        assert "localhost resolves to" in errors[named["id"]]
        assert "a private address" in errors[named["id"]]
        assert target.attempts == 0


async def test_metrics_count_deliveries_by_result_and_report_the_backlog(
    database_url: str, tmp_path: Path, target: Receiver
) -> None:
    from orgcast.settings import MetricsSettings
    from tests.test_metrics import orgcast, scrape

    settings = node_settings(
        database_url, tmp_path, webhooks=FAST, metrics=MetricsSettings(enabled=True)
    )
    async with start_server(settings) as node:
        tenant = await node.create_tenant()
        endpoint = await add_endpoint(node, tenant, target.url)
        target.script = [500]
        await publish(node, tenant, "lobby", "hello")
        await settled(node, tenant, endpoint["id"])

        async def counted() -> bool:
            found = orgcast(await scrape(node), "orgcast_webhook_deliveries_total")
            return (
                found.get(
                    f"orgcast_webhook_deliveries_total{{result=delivered,tenant={tenant.slug}}}"
                )
                == 1
            )

        await eventually(counted)
        samples = orgcast(await scrape(node), "orgcast_webhook")
        key = f"orgcast_webhook_deliveries_total{{result=retry,tenant={tenant.slug}}}"
        assert samples[key] == 1
        assert samples["orgcast_webhook_delivery_latency_seconds_count"] == 2
        assert "orgcast_webhook_backlog" in samples
        assert "orgcast_webhook_oldest_pending_seconds" in samples
