"""A real webhook receiver on 127.0.0.1 for the webhook tests, and their settings.

The receiver records every request it answers (headers and raw body) and can be told how to
answer the next ones: a status, a redirect, a hang, a reset connection, or bytes that are not
HTTP. Signatures are checked by the tests with the reference ``standardwebhooks`` package.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from orgcast.settings import WebhooksSettings

# Short delays so that retries happen within a test's bounded waits.
FAST = WebhooksSettings(
    allow_private_targets=True,
    retry_schedule_seconds=[0.2],
    retry_jitter=0,
    poll_interval_seconds=0.2,
    timeout_seconds=1.0,
    presence_grace_seconds=0.5,
)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(json.loads(self.body)["events"])


@dataclass
class Receiver:
    """Answers 200 unless ``script`` says otherwise (one entry per request, first used first):
    an int status, ``"redirect"``, ``"hang"``, ``"reset"`` or ``"garbage"``."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    script: list[int | str] = field(default_factory=list)
    attempts: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def events(self) -> list[dict[str, Any]]:
        return [event for request in self.received for event in request.events]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.attempts += 1
        self.arrived.set()
        action: int | str = self.script.pop(0) if self.script else 200
        if action == "hang":
            await asyncio.Event().wait()  # until the client gives up and the server closes
        if action in ("reset", "garbage"):
            transport = request.transport
            assert transport is not None
            if action == "garbage":
                transport.write(b"this is not HTTP at all\r\n\r\n")
            transport.abort() if action == "reset" else transport.close()
            return web.Response()  # never sent: the connection is gone
        if action == "redirect":
            return web.Response(status=302, headers={"Location": "http://127.0.0.1:1/elsewhere"})
        assert isinstance(action, int)
        if 200 <= action < 300:
            self.received.append(Received(dict(request.headers), body))
        return web.Response(status=action, text="ok")


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    target = Receiver()
    app = web.Application()
    app.router.add_post("/hook", target.handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    target.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield target
    finally:
        await runner.cleanup()


async def quiet_endpoints(database_url: str) -> None:
    """Disable every endpoint left in a shared test database: their receivers are gone, and with
    the short test delays they would be retried several times a second by every later node."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE webhook_endpoints SET enabled = false"))
    finally:
        await engine.dispose()
