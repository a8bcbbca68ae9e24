"""``orgcast webhooks ...`` and webhook endpoints declared in manifests, run for real."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import eventually, node_settings, start_server
from tests.test_cli import Cli, make_cli
from tests.webhooks_support import FAST, receiver


@pytest.fixture(params=["sqlite", "postgres"])
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    return make_cli(request.param, request, tmp_path)


def test_add_prints_the_secret_once_and_list_remove_work(cli: Cli) -> None:
    cli.create("acme")
    added = cli.ok("webhooks", "add", "acme", "https://example.com/hook", "--events",
                   "message.created", "user.offline")  # fmt: skip
    assert "secret: whsec_" in added.out and "not shown again" in added.out
    secret = added.out.split("secret: ")[1].split()[0]
    listed = cli.ok("webhooks", "list", "acme", "--json").json()
    (endpoint,) = listed["webhooks"]
    assert endpoint["url"] == "https://example.com/hook"
    assert endpoint["events"] == ["message.created", "user.offline"]
    assert secret not in cli.ok("webhooks", "list", "acme").out
    assert secret not in cli.ok("tenants", "show", "acme").out
    as_json = cli.ok("webhooks", "add", "acme", "https://example.com/all", "--json").json()
    assert as_json["events"] == ["*"] and as_json["secret"].startswith("whsec_")
    assert cli.ok("webhooks", "deliveries", "acme", endpoint["id"]).out.strip() == (
        f"no deliveries for {endpoint['id']}"
    )
    removed = cli.ok("webhooks", "remove", "acme", endpoint["id"])
    assert removed.out.strip() == f"acme: removed webhook {endpoint['id']}"
    assert [e["id"] for e in cli.ok("webhooks", "list", "acme", "--json").json()["webhooks"]] == [
        as_json["id"]
    ]


BAD_INPUT = [
    (["add", "acme", "https://example.com/x", "--events", "nope"], "unknown event type"),
    (["add", "acme", "ftp://example.com/x"], "must be an http:// or https:// URL"),
    (["add", "acme", "http://127.0.0.1/x"], "127.0.0.1 is a loopback, private"),
    (["add", "nobody", "https://example.com/x"], "tenant 'nobody' not found"),
    (["remove", "acme", "ep_missing"], "no webhook endpoint 'ep_missing'"),
    (["deliveries", "acme", "ep_missing"], "no webhook endpoint 'ep_missing'"),
    (["redeliver", "acme", "ep_missing", "msg_x"], "no webhook endpoint 'ep_missing'"),
]


def test_bad_input_exits_1_with_a_message(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    cli = make_cli("sqlite", request, tmp_path)
    cli.create("acme")
    for args, message in BAD_INPUT:
        result = cli("webhooks", *args)
        assert result.code == 1, (args, result.out)
        assert message in result.err, (args, result.err)
    usage = cli("webhooks", "add", "acme")
    assert usage.code == 2 and "usage:" in usage.err


@pytest.fixture
def pg_cli(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    return make_cli("postgres", request, tmp_path)


async def test_deliveries_and_redeliver_from_the_shell_reach_a_running_node(
    pg_cli: Cli, tmp_path: Path
) -> None:
    cli = pg_cli
    cli.env["ORGCAST_WEBHOOKS__ALLOW_PRIVATE_TARGETS"] = "true"
    async with (
        receiver() as target,
        start_server(node_settings(cli.url, tmp_path, webhooks=FAST)) as node,
    ):
        tenant = await node.create_tenant()
        result = await cli.run_async("webhooks", "add", tenant.slug, target.url, "--json")
        assert result.code == 0, result.out
        added = result.json()

        # The node learns of the endpoint from the database (no Redis here) within a second:
        # until then its messages have no event, so publish until one arrives.
        async def delivered() -> bool:
            if not target.received:
                status, _ = await node.request(
                    "POST", f"/api/v1/tenants/{tenant.slug}/rooms/lobby/messages", json={"body": 1}
                )
                assert status == 201
            return bool(target.received)

        await eventually(delivered)
        log = await cli.run_async("webhooks", "deliveries", tenant.slug, added["id"], "--json")
        first = log.json()["deliveries"][-1]
        assert first["status"] == "delivered"
        count = len(target.received)
        again = await cli.run_async("webhooks", "redeliver", tenant.slug, added["id"], first["id"])
        assert again.code == 0 and again.out.startswith("queued delivery msg_")

        async def redelivered() -> bool:
            return len(target.received) > count

        await eventually(redelivered)
        assert target.received[-1].events[0]["id"] == first["event_ids"][0]


def write(directory: Path, name: str, text: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(text)


def test_manifests_declare_endpoints_without_secrets(cli: Cli, tmp_path: Path) -> None:
    manifests = tmp_path / "tenants"
    write(manifests, "acme.toml", 'slug = "acme"\nname = "Acme"\n\n[[webhooks]]\n'
          'url = "https://example.com/hook"\nevents = ["message.created"]\n')  # fmt: skip
    applied = cli.ok("tenants", "apply", str(manifests), "--json").json()
    assert applied["tenants"][0]["action"] == "created"
    assert "whsec_" not in cli.ok("tenants", "apply", str(manifests)).out
    (endpoint,) = cli.ok("webhooks", "list", "acme", "--json").json()["webhooks"]
    assert (endpoint["url"], endpoint["events"]) == (
        "https://example.com/hook",
        ["message.created"],
    )
    assert cli.ok("tenants", "apply", str(manifests), "--json").json()["tenants"][0]["action"] == (
        "unchanged"
    )
    write(manifests, "acme.toml", 'slug = "acme"\nname = "Acme"\n\n[[webhooks]]\n'
          'url = "https://example.com/hook"\nevents = ["*"]\n')  # fmt: skip
    change = cli.ok("tenants", "apply", str(manifests), "--json").json()["tenants"][0]
    assert (change["action"], change["fields"]) == ("updated", ["webhooks"])
    (again,) = cli.ok("webhooks", "list", "acme", "--json").json()["webhooks"]
    assert (again["id"], again["events"]) == (endpoint["id"], ["*"])
    write(manifests, "acme.toml", 'slug = "acme"\nname = "Acme"\n\n[[webhooks]]\n'
          'url = "https://example.com/hook"\nevents = ["*"]\nsecret = "whsec_abc"\n')  # fmt: skip
    refused = cli("tenants", "apply", str(manifests))
    assert refused.code == 1
    assert "webhooks.0.secret: secrets are never kept in manifests" in refused.err
    assert "whsec_abc" not in refused.err
