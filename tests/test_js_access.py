"""The official JavaScript client against two nodes sharing PostgreSQL and Redis (DESIGN §10):
a socket that refreshes outlives its token and one that does not is closed with ``auth_expired``;
kick and key revocation made on one node close sockets on the other within a second; REST
presence on either node equals the socket ``presence`` ack."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support import ADMIN_TOKEN, node_or_skip
from tests.test_access_cluster import two_nodes
from tests.test_js_interop import run_node
from tests.test_realtime_connect import sign

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "js" / "access.mjs"

pytestmark = pytest.mark.node


async def test_official_js_client_lives_through_the_access_lifecycle_on_two_nodes(
    pg_database: str, tmp_path: Path, redis_url: str, redis_channel: str
) -> None:
    node = node_or_skip()
    async with two_nodes(pg_database, tmp_path, redis_url, redis_channel) as (one, two):
        tenant = await one.create_tenant()
        old = sign(tenant, sub="old")
        status, key = await one.request("POST", f"/api/v1/tenants/{tenant.slug}/keys")
        assert status == 201

        def fresh(sub: str, **claims: object) -> str:
            return sign(tenant, sub=sub, kid=key["kid"], secret=key["secret"], **claims)

        short = int(time.time()) + 5
        tokens = {
            "refresher": fresh("refresher", exp=short),
            "lapser": fresh("lapser", exp=short),
            "kicked": fresh("kicked"),
            "stays": fresh("stays"),
            "old": old,
            "fresh": fresh("fresh"),
            "alice": fresh("alice", name="Alice"),
            "bob": fresh("bob"),
        }
        result = await run_node(
            node,
            SCRIPT,
            {
                "urls": [one.url, two.url],
                "slug": tenant.slug,
                "admin": ADMIN_TOKEN,
                "kid": tenant.kid,
                "tokens": tokens,
            },
        )
    assert "error" not in result, result["error"]

    expiry = result["expiry"]
    assert expiry["refresh"]["exp"] == short
    assert expiry["refresh"]["ack"] == {"ok": True, "exp": expiry["refresh"]["newExp"]}
    assert expiry["lapser"]["expiring"] == [{"exp": short}]
    assert [c["code"] for c in expiry["lapser"]["closing"]] == ["auth_expired"]
    assert expiry["lapser"]["disconnect"] == "io server disconnect"
    assert expiry["refresher"]["closing"] == [] and expiry["refresher"]["connected"] is True
    assert expiry["refresher"]["join"] is True

    kick = result["kick"]
    assert kick["answer"] == {"status": 200, "body": {"disconnected": 2}}
    for tab in kick["tabs"]:
        assert tab["closing"] == [{"code": "kicked", "message": "bye"}]
        assert tab["disconnect"] == "io server disconnect"
    assert kick["stays"] is True

    revoke = result["revoke"]
    assert revoke["status"] == 204
    assert [c["code"] for c in revoke["old"]["closing"]] == ["key_revoked"]
    assert revoke["fresh"] is True

    presence = result["presence"]
    expected = sorted(presence["socketView"]["members"], key=lambda m: m["id"])
    assert expected == [{"id": "alice", "name": "Alice"}, {"id": "bob", "name": "bob"}]
    for answer in (presence["restOne"], presence["restTwo"]):
        assert answer["status"] == 200
        assert answer["body"]["room"] == "lobby"
        assert sorted(answer["body"]["members"], key=lambda m: m["id"]) == expected
