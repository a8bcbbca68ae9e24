"""The README's webhook receiver runs as written: it verifies a real delivery with the
``standardwebhooks`` package and prints the event, and refuses a forged one."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import ROOT, Server, free_port, node_settings, start_server
from tests.test_webhooks import add_endpoint, publish
from tests.webhooks_support import FAST, quiet_endpoints

EXAMPLE = ROOT / "examples" / "webhook_receiver.py"


@pytest.fixture(autouse=True)
async def _quiet_endpoints(database_url: str) -> AsyncIterator[None]:
    yield
    await quiet_endpoints(database_url)


def test_readme_shows_the_receiver_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- webhook_receiver.py -->\n```python\n(.*?)```", readme, re.S)
    assert block is not None, "README lost its webhook_receiver.py block"
    assert block.group(1) == EXAMPLE.read_text()


async def test_the_receiver_verifies_a_delivery_and_refuses_a_forgery(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/orgcast"
    async with start_server(node_settings(database_url, tmp_path, webhooks=FAST)) as node:
        tenant = await node.create_tenant()
        endpoint = await add_endpoint(node, tenant, url)
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLE),
            env={"ORGCAST_WEBHOOK_SECRET": endpoint["secret"], "PORT": str(port),
                 "PATH": "/usr/bin:/bin"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await _check(node, tenant, url, process)
        finally:
            process.terminate()
            await process.wait()


async def _check(
    node: Server, tenant: object, url: str, process: asyncio.subprocess.Process
) -> None:
    assert process.stdout is not None
    sent = await publish(node, tenant, "lobby", {"text": "hi"})
    line = await asyncio.wait_for(process.stdout.readline(), 20)
    assert line.decode().startswith(f"message.created evt_{sent['id']} {{'id': '{sent['id']}'")
    async with aiohttp.ClientSession() as http:
        forged = {"webhook-id": "msg_x", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"}
        async with http.post(url, data=b'{"events": []}', headers=forged) as response:
            assert response.status == 401
