"""Access control across two nodes sharing PostgreSQL and Redis (DESIGN §10), python-socketio:
kick and key revocation made through one node close sockets on the other within a second, the kick
count is cluster-wide, REST presence equals socket presence, and the API rate limit is one budget
for the whole cluster."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from orgcast.settings import AuthSettings, DatabaseSettings, RedisSettings
from tests.support import Server, node_settings, start_server
from tests.test_access import WINDOW, Watched, api, watch
from tests.test_realtime_connect import sign


@contextlib.asynccontextmanager
async def two_nodes(
    database_url: str, tmp_path: Path, redis_url: str, channel: str
) -> AsyncIterator[tuple[Server, Server]]:
    redis = RedisSettings(url=redis_url, channel=channel, node_ttl_seconds=2.0)
    auth = AuthSettings(refresh_window_seconds=WINDOW)
    async with (
        start_server(node_settings(database_url, tmp_path / "a", redis=redis, auth=auth)) as one,
        start_server(node_settings(database_url, tmp_path / "b", redis=redis, auth=auth)) as two,
    ):
        yield one, two


async def all_closed(sockets: list[Watched], code: str, within: float) -> None:
    await asyncio.wait_for(asyncio.gather(*(s.closed_with(code, within) for s in sockets)), within)


async def test_kick_through_one_node_closes_the_users_sockets_on_both_within_a_second(
    pg_database: str, tmp_path: Path, redis_url: str, redis_channel: str
) -> None:
    async with two_nodes(pg_database, tmp_path, redis_url, redis_channel) as (one, two):
        tenant = await one.create_tenant()
        tabs = [await watch(node, tenant, sign(tenant, sub="alice")) for node in (one, two, two)]
        bob = await watch(two, tenant, sign(tenant, sub="bob"))
        started = time.monotonic()
        status, body = await one.request(
            "POST", api(tenant, "/users/alice/disconnect"), json={}, token=tenant.api_key
        )
        assert (status, body) == (200, {"disconnected": 3})
        await all_closed(tabs, "kicked", within=1.0)
        assert time.monotonic() - started < 1.5
        await bob.closing.expect_nothing()
        assert bob.client.connected


async def test_revoking_a_key_on_one_node_closes_its_sockets_on_the_other_within_a_second(
    pg_database: str, tmp_path: Path, redis_url: str, redis_channel: str
) -> None:
    async with two_nodes(pg_database, tmp_path, redis_url, redis_channel) as (one, two):
        tenant = await one.create_tenant()
        status, key = await one.request("POST", api(tenant, "/keys"))
        assert status == 201
        revoked = [await watch(two, tenant, sign(tenant, sub=f"u{i}")) for i in range(3)]
        kept = await watch(
            two, tenant, sign(tenant, sub="kept", kid=key["kid"], secret=key["secret"])
        )
        status, _ = await one.request("DELETE", api(tenant, f"/keys/{tenant.kid}"))
        assert status == 204
        await all_closed(revoked, "key_revoked", within=1.0)
        await kept.closing.expect_nothing()
        assert kept.client.connected


async def test_rest_presence_on_either_node_equals_socket_presence(
    pg_database: str, tmp_path: Path, redis_url: str, redis_channel: str
) -> None:
    async with two_nodes(pg_database, tmp_path, redis_url, redis_channel) as (one, two):
        tenant = await one.create_tenant()
        alice = await watch(one, tenant, sign(tenant, sub="alice", name="Alice"))
        bob = await watch(two, tenant, sign(tenant, sub="bob", name="Bob"))
        for member in (alice, bob):
            assert (await member.call("join", {"room": "lobby"}))["ok"] is True
        socket_view = await alice.call("presence", {"room": "lobby"})
        expected = sorted(socket_view["members"], key=lambda m: m["id"])
        assert expected == [{"id": "alice", "name": "Alice"}, {"id": "bob", "name": "Bob"}]
        for node in (one, two):
            status, body = await node.request("GET", api(tenant, "/rooms/lobby/presence"))
            assert status == 200
            assert sorted(body["members"], key=lambda m: m["id"]) == expected


async def test_the_api_rate_limit_is_counted_across_nodes(
    pg_database: str, tmp_path: Path, redis_url: str, redis_channel: str
) -> None:
    async with two_nodes(pg_database, tmp_path, redis_url, redis_channel) as (one, two):
        tenant = await one.create_tenant(limits={"api_requests_per_second": 0.1})
        path = api(tenant, "/rooms")
        status, _ = await one.request("GET", path, token=tenant.api_key)
        assert status == 200
        status, body = await two.request("GET", path, token=tenant.api_key)
        assert status == 429 and body["error"]["code"] == "rate_limited"


async def test_without_redis_a_revocation_reaches_the_other_node_through_the_database(
    pg_database: str, tmp_path: Path
) -> None:
    # No Redis: the other node learns of the revocation from the tenant watcher's next pass.
    database = DatabaseSettings(url=pg_database, pool_size=5, watch_interval_seconds=0.2)
    async with (
        start_server(node_settings(pg_database, tmp_path / "a", database=database)) as one,
        start_server(node_settings(pg_database, tmp_path / "b", database=database)) as two,
    ):
        tenant = await one.create_tenant()
        status, key = await one.request("POST", api(tenant, "/keys"))
        assert status == 201
        revoked = await watch(two, tenant, sign(tenant, sub="revoked"))
        kept = await watch(
            two, tenant, sign(tenant, sub="kept", kid=key["kid"], secret=key["secret"])
        )
        status, _ = await one.request("DELETE", api(tenant, f"/keys/{tenant.kid}"))
        assert status == 204
        await revoked.closed_with("key_revoked", within=3.0)
        assert kept.client.connected
