"""The README's 60-second tour runs as written: both snippets against a real node with a ``demo``
tenant, and ``examples/tour.mjs`` is exactly the code block the README shows."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orgcast.settings import AuthSettings, ServerSettings
from tests.support import Server, node_or_skip, node_settings, run_process, start_server
from tests.test_realtime_connect import polling_server

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

__all__ = ["polling_server"]


async def run(*command: str, env: dict[str, str], within: float = 60) -> str:
    """Run a snippet as a new user would; returns stdout, fails on a non-zero exit."""
    code, stdout, stderr = await run_process(*command, env=env, within=within)
    assert code == 0, (command, stdout, stderr[-2000:])
    return stdout


@pytest.fixture
async def demo(polling_server: Server) -> tuple[Server, dict[str, str]]:
    """A node with a fresh ``demo`` tenant and the environment the README tells users to set.

    The node has a short ping interval: both clients start on long-polling, whose last request
    would otherwise hold the node's shutdown for the default interval.
    """
    server = polling_server
    status, body = await server.request("DELETE", "/api/v1/tenants/demo")
    assert status in (204, 404), body
    await server.create_tenant("demo", ephemeral_events=["typing"])
    env = {"ORGCAST_URL": server.url, "ORGCAST_TOKEN": await server.token("demo", "tour-user")}
    return server, env


def test_readme_shows_both_tour_snippets_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    for snippet, language in (("tour.mjs", "js"), ("tour.py", "python"), ("refresh.mjs", "js")):
        pattern = rf"<!-- {re.escape(snippet)} -->\n```{language}\n(.*?)```"
        block = re.search(pattern, readme, re.S)
        assert block is not None, f"README lost its {snippet} block"
        assert block.group(1) == (EXAMPLES / snippet).read_text()
    for snippet in ("tour.mjs", "tour.py", "refresh.mjs"):
        assert f"examples/{snippet}" in readme
        assert len((EXAMPLES / snippet).read_text().splitlines()) <= 25


async def test_tour_snippets_connect_join_and_send(demo: tuple[Server, dict[str, str]]) -> None:
    server, env = demo
    node = node_or_skip()
    js = await run(node, str(EXAMPLES / "tour.mjs"), env=env)
    # Node prints the ack with util.inspect: `0 { ok: true, id: ..., room: 'lobby', seq: 1, ... }`.
    assert re.fullmatch(
        r"0 \{\s+ok: true,\s+id: [^,]+,\s+room: 'lobby',\s+seq: 1,\s+ts: \d+\s+\}\n", js
    ), js
    py = await run(sys.executable, str(EXAMPLES / "tour.py"), env=env)
    assert re.fullmatch(
        r"1 \{'ok': True, 'id': [^,]+, 'room': 'lobby', 'seq': 2, 'ts': \d+\}\n", py
    ), py
    status, body = await server.request("GET", "/api/v1/tenants/demo/rooms/lobby/messages")
    assert status == 200, body
    assert [(m["seq"], m["sender"]["id"], m["body"]) for m in body["messages"]] == [
        (1, "tour-user", {"text": "hello"}),
        (2, "tour-user", {"text": "hello"}),
    ]


async def test_tour_snippet_reports_a_refused_token(demo: tuple[Server, dict[str, str]]) -> None:
    _, env = demo
    node = node_or_skip()
    process = await asyncio.create_subprocess_exec(
        node,
        str(EXAMPLES / "tour.mjs"),
        cwd=ROOT,
        env={**os.environ, **env, "ORGCAST_TOKEN": "not-a-token"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert stderr.decode().startswith("auth_invalid { code: 'auth_invalid', message: ")


@pytest.fixture
async def refresh_demo(database_url: str, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """A node whose refresh window is one second shorter than the snippet's hour-long tokens:
    ``token_expiring`` comes a second after connecting. A short ping interval, as above: the
    client starts on long-polling."""
    settings = node_settings(
        database_url,
        tmp_path,
        server=ServerSettings(port=0, ping_interval=1, ping_timeout=2),
        auth=AuthSettings(refresh_window_seconds=3599),
    )
    async with start_server(settings) as server:
        status, body = await server.request("DELETE", "/api/v1/tenants/demo")
        assert status in (204, 404), body
        tenant = await server.create_tenant("demo")
        yield {"ORGCAST_URL": server.url, "ORGCAST_API_KEY": tenant.api_key}


async def test_refresh_snippet_answers_token_expiring_with_a_new_token(
    refresh_demo: dict[str, str],
) -> None:
    node = node_or_skip()
    out = await run(node, str(EXAMPLES / "refresh.mjs"), env=refresh_demo)
    # `refreshed <old exp> { ok: true, exp: <new exp> }`, and no `closing` before it.
    match = re.fullmatch(r"refreshed (\d+) \{ ok: true, exp: (\d+) \}\n", out)
    assert match is not None, out
    assert int(match.group(2)) >= int(match.group(1))
