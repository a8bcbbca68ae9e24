"""The official JavaScript client (socket.io-client) against a real node: refusal codes as
``err.message``/``err.data``, join, broadcast to everyone but the sender, acks, history and a
long-polling connection. Node and ``node_modules`` are required in CI; locally they may be absent.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import Server, node_or_skip, run_process
from tests.test_realtime_connect import polling_server, sign

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "js" / "interop.mjs"
IN_CI = os.environ.get("CI", "").lower() == "true"

pytestmark = pytest.mark.node
__all__ = ["polling_server", "run_node"]


async def run_node(node: str, script: Path, config: dict[str, Any], within: float = 60) -> Any:
    """Run a Node script; returns the JSON object it prints last."""
    code, stdout, stderr = await run_process(node, str(script), json.dumps(config), within=within)
    lines = stdout.strip().splitlines()
    assert lines, f"no output (exit {code}): {stderr[-2000:]}"
    result = json.loads(lines[-1])
    assert code == 0, (result, stderr[-2000:])
    return result


async def test_official_js_client_speaks_the_realtime_contract(polling_server: Server) -> None:
    # A short ping interval: the polling client's last long-poll would otherwise hold shutdown.
    server = polling_server
    node = node_or_skip()
    tenant = await server.create_tenant(allowed_origins=["https://app.example.com"])
    suspended = await server.create_tenant()
    status, _ = await server.request(
        "PATCH", f"/api/v1/tenants/{suspended.slug}", json={"status": "suspended"}
    )
    assert status == 200
    tokens = {
        "alice": await server.token(tenant.slug, "alice", name="Alice"),
        "bob": await server.token(tenant.slug, "bob"),
        "carol": await server.token(tenant.slug, "carol"),
        "dave": await server.token(tenant.slug, "dave"),
        "expired": sign(tenant, exp=int(time.time()) - 60),
    }
    result = await run_node(
        node,
        SCRIPT,
        {
            "url": server.url,
            "slug": tenant.slug,
            "suspendedSlug": suspended.slug,
            "allowedOrigin": "https://app.example.com",
            "tokens": tokens,
        },
    )
    assert "error" not in result, result["error"]

    refusals = result["refusals"]
    assert refusals.pop("allowed_origin") == {"connected": True, "transport": "websocket"}
    for code, outcome in refusals.items():
        assert outcome["message"] == code, (code, outcome)
        assert set(outcome["data"]) == {"code", "message"}, (code, outcome)
        assert outcome["data"]["code"] == code
        assert isinstance(outcome["data"]["message"], str) and outcome["data"]["message"]
    assert sorted(refusals) == sorted(
        [
            "namespace_required",
            "tenant_not_found",
            "tenant_suspended",
            "auth_required",
            "auth_invalid",
            "auth_expired",
            "origin_forbidden",
        ]
    )

    run = result["messaging"]
    assert run["connects"] == [{"connected": True, "transport": "websocket"}] * 2
    assert run["joins"][0] == {
        "ok": True,
        "room": "lobby",
        "seq": 0,
        "members": [{"id": "alice", "name": "Alice"}],
    }
    assert sorted(m["id"] for m in run["joins"][1]["members"]) == ["alice", "bob"]
    sent = run["sent"]
    assert set(sent) == {"ok", "id", "room", "seq", "ts"} and sent["seq"] == 1
    assert run["received"] == {
        "id": sent["id"],
        "room": "lobby",
        "seq": 1,
        "ts": sent["ts"],
        "sender": {"id": "alice", "name": "Alice"},
        "body": {"text": "hello from js", "n": 1},
        "client_id": "js-1",
    }
    assert run["resent"] == sent
    assert run["notJoined"]["error"]["code"] == "not_joined"
    assert run["badRequest"]["error"]["code"] == "bad_request"
    assert run["unknown"]["error"]["code"] == "unknown_event"

    carol = run["carol"]
    assert carol["connect"] == {"connected": True, "transport": "polling"}
    assert carol["transport"] == "polling"
    assert carol["join"]["seq"] == 1 and [m["seq"] for m in carol["join"]["missed"]] == [1]
    assert carol["sent"]["seq"] == 2
    assert run["bobGotCarol"]["body"] == "from polling"
    assert run["bobGotCarol"]["sender"] == {"id": "carol", "name": "carol"}
    # The sender never hears its own broadcast: alice got carol's, bob's and dave's messages.
    assert [m["seq"] for m in run["aliceInbox"]] == [2, 3, 4]
    history = run["history"]
    assert [(m["seq"], m["sender"]["id"]) for m in history["messages"]] == [
        (1, "alice"),
        (2, "carol"),
    ]
    assert history["has_more"] is False
    # Default transports: connected on long-polling, upgraded, then messages both ways.
    dave = run["dave"]
    # (the upgrade may complete before the namespace connect does)
    assert dave["connect"]["connected"] is True
    assert dave["upgraded"] is True and dave["transport"] == "websocket"
    assert dave["join"]["ok"] is True and dave["join"]["seq"] == 2
    assert (dave["got"]["seq"], dave["got"]["body"]) == (3, "to the upgraded")
    assert dave["sent"]["seq"] == 4
    assert (dave["bobGot"]["seq"], dave["bobGot"]["body"]) == (4, "from the upgraded")
