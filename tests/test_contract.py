"""The independent contract test (``tests/contract/contract.mjs``) against ``orgcast serve`` nodes.

The script is written from the design contract alone and drives the official JavaScript client; here
it runs against servers started the way the README starts them: one node on the embedded SQLite
default, one on PostgreSQL, and two on one PostgreSQL database sharing Redis. Node.js and
``node_modules/socket.io-client`` are required in CI; locally their absence is a skip.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.nodes import NodeProcess
from tests.support import ADMIN_TOKEN, node_or_skip, run_process

pytestmark = pytest.mark.node

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "contract" / "contract.mjs"
# Smaller than the default so `join {since}` truncation is reachable with a few hundred messages.
REPLAY_PAGE = 100
# The whole script takes seconds; the bound leaves pytest's own timeout room to report it.
RUN_SECONDS = 90.0


@contextlib.asynccontextmanager
async def nodes(
    count: int, database_url: str, tmp_path: Path, **env: str
) -> AsyncIterator[list[str]]:
    """``count`` ``orgcast serve --migrate`` processes, each with its own data directory."""
    env = {"ORGCAST_MESSAGES__REPLAY_PAGE": str(REPLAY_PAGE), **env}
    started: list[NodeProcess] = []
    try:
        for index in range(count):
            data_dir = tmp_path / f"node{index}"
            data_dir.mkdir()
            node = NodeProcess(database_url, data_dir, **env)
            started.append(node)
            # One at a time: two nodes migrating one empty database at once would race.
            await node.ready()
        yield [node.url for node in started]
    finally:
        for node in started:
            node.stop()


async def run_contract(urls: list[str]) -> str:
    """Run the script against ``urls``; fail with its whole report unless every check passed."""
    config = json.dumps({"nodes": urls, "admin_token": ADMIN_TOKEN, "replay_page": REPLAY_PAGE})
    code, report, errors = await run_process(
        node_or_skip(), str(SCRIPT), config, within=RUN_SECONDS
    )
    summary = report.strip().splitlines()[-1] if report.strip() else ""
    assert code == 0 and summary.endswith(" passed, 0 failed"), report + errors
    return report


def assert_embedded_sqlite_file(data_dir: Path) -> None:
    # config/default.toml: an empty database.url is <data_dir>/orgcast.sqlite3.
    assert (data_dir / "orgcast.sqlite3").is_file(), sorted(data_dir.iterdir())


async def test_contract_holds_on_one_node_with_the_embedded_sqlite_default(tmp_path: Path) -> None:
    node_or_skip()
    # An empty database URL is the zero-configuration default: a SQLite file in the data dir.
    async with nodes(1, "", tmp_path) as urls:
        await run_contract(urls)
    assert_embedded_sqlite_file(tmp_path / "node0")


@pytest.mark.postgres
async def test_contract_holds_on_one_node_with_postgresql(pg_database: str, tmp_path: Path) -> None:
    node_or_skip()
    async with nodes(1, pg_database, tmp_path) as urls:
        await run_contract(urls)


@pytest.mark.postgres
@pytest.mark.redis
async def test_contract_holds_with_clients_split_across_two_nodes(
    pg_database: str, tmp_path: Path, redis_url: str, redis_channel: str
) -> None:
    node_or_skip()
    redis = {
        "ORGCAST_REDIS__URL": redis_url,
        "ORGCAST_REDIS__CHANNEL": redis_channel,
        "ORGCAST_REDIS__NODE_TTL_SECONDS": "2",
    }
    async with nodes(2, pg_database, tmp_path, **redis) as urls:
        await run_contract(urls)
