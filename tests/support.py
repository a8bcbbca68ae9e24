"""Test helpers: real servers, real clients, throwaway databases. No mocks."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import os
import random
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import pytest
import socketio
from aiohttp import web
from sqlalchemy.engine import make_url

from orgcast.app import create_app
from orgcast.settings import (
    AdminSettings,
    DatabaseSettings,
    MessagesSettings,
    RedisSettings,
    ServerSettings,
    Settings,
)

T = TypeVar("T")

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


def pg_admin_url() -> str:
    return os.environ.get(
        "ORGCAST_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    )


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_available(url: str) -> bool:
    async def probe() -> bool:
        try:
            connection = await asyncpg.connect(_dsn(url), timeout=3)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await connection.close()
        return True

    return asyncio.run(probe())


def redis_available(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.ping()
        client.close()
    except redis.RedisError:
        return False
    return True


async def create_pg_database(admin_url: str) -> str:
    name = f"orgcast_test_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(_dsn(admin_url))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


async def drop_pg_database(admin_url: str, url: str) -> None:
    name = make_url(url).database
    connection = await asyncpg.connect(_dsn(admin_url))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def node_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test node; keyword arguments replace whole sections."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database": DatabaseSettings(url=database_url, pool_size=5),
        "admin": AdminSettings(token=ADMIN_TOKEN),
        "messages": MessagesSettings(retention_interval_seconds=3600),
        "server": ServerSettings(port=0),
    }
    values.update(overrides)
    return Settings(**values)


async def allow_connections(pg_server: str, database: str | None, allowed: bool) -> None:
    """Open or close ``database`` to new connections; closing also ends the live ones (the
    database is down for the nodes using it, the server stays up)."""
    connection = await asyncpg.connect(_dsn(pg_server))
    try:
        flag = "true" if allowed else "false"
        await connection.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {flag}')
        if not allowed:
            await connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                database,
            )
    finally:
        await connection.close()


def unique_slug(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _ephemeral_floor() -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


def free_port() -> int:
    """A free port below the kernel's ephemeral range, for a server a test starts.

    Outgoing connections take their local port from the ephemeral range, so one made while the
    server is down (a client retrying a stopped Redis) can neither take the port before the
    server binds it again nor connect to itself on it (a TCP self-connect: the client then reads
    its own commands back as replies and believes the server answered)."""
    ceiling = _ephemeral_floor()
    for _ in range(200):
        port = random.randrange(10_000, ceiling)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in 10000..{ceiling - 1}")


@dataclass
class Tenant:
    slug: str
    kid: str
    secret: str
    api_key: str
    api_key_id: str
    body: dict[str, Any]


@dataclass
class Server:
    """A running node and an HTTP session to it."""

    url: str
    app: web.Application
    settings: Settings
    http: aiohttp.ClientSession
    clients: list[socketio.AsyncClient] = field(default_factory=list)

    async def request(
        self, method: str, path: str, *, token: str | None = ADMIN_TOKEN, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.request(
            method, self.url + path, headers=headers, **kwargs
        ) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()

    async def create_tenant(self, slug: str | None = None, **fields: Any) -> Tenant:
        slug = slug or unique_slug()
        status, body = await self.request(
            "POST", "/api/v1/tenants", json={"slug": slug, "name": f"Tenant {slug}", **fields}
        )
        assert status == 201, body
        return Tenant(
            slug=slug,
            kid=body["signing_key"]["kid"],
            secret=body["signing_key"]["secret"],
            api_key=body["api_key"]["key"],
            api_key_id=body["api_key"]["id"],
            body=body,
        )

    async def token(self, slug: str, sub: str = "alice", **claims: Any) -> str:
        status, body = await self.request(
            "POST", f"/api/v1/tenants/{slug}/tokens", json={"sub": sub, **claims}
        )
        assert status == 200, body
        return str(body["token"])

    async def connect(
        self,
        slug: str,
        token: str | None = None,
        *,
        transports: list[str] | None = None,
        headers: dict[str, str] | None = None,
        auth: Any = ...,
    ) -> socketio.AsyncClient:
        """A connected python-socketio client (disconnected at teardown)."""
        client = socketio.AsyncClient(reconnection=False)
        self.clients.append(client)
        await client.connect(
            self.url,
            namespaces=[f"/{slug}"],
            auth={"token": token} if auth is ... else auth,
            transports=transports or ["websocket"],
            headers=headers or {},
            wait_timeout=5,
        )
        return client

    async def refusal(self, slug: str, auth: Any) -> dict[str, Any]:
        """Connect and expect a refusal; returns the ``connect_error`` data ``{code, message}``."""
        refused = await self.try_connect(slug, auth)
        if refused is None:
            raise AssertionError(f"connect to /{slug} was admitted")
        return refused

    async def try_connect(self, slug: str, auth: Any) -> dict[str, Any] | None:
        """The refusal's ``{code, message}``, or None when admitted (then disconnected)."""
        refused: list[Any] = []
        client = socketio.AsyncClient(reconnection=False)
        client.on("connect_error", refused.append, namespace=f"/{slug}")
        try:
            await client.connect(
                self.url, namespaces=[f"/{slug}"], auth=auth, transports=["websocket"],
                wait_timeout=5,
            )  # fmt: skip
        except socketio.exceptions.ConnectionError:
            pass
        else:
            await client.disconnect()
            return None
        assert len(refused) == 1, refused
        assert refused[0]["message"] == refused[0]["data"]["code"], refused
        return dict(refused[0]["data"])

    async def close_clients(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.disconnect()
        self.clients.clear()


@contextlib.asynccontextmanager
async def start_server(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Server]:
    app = create_app(settings, migrate=migrate)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", settings.server.port)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as http:
        node = Server(url=f"http://127.0.0.1:{port}", app=app, settings=settings, http=http)
        try:
            yield node
        finally:
            await node.close_clients()
            await runner.cleanup()


POLL_INTERVAL = 0.05


async def eventually(predicate: Callable[[], Awaitable[bool]], within: float = 5.0) -> float:
    """Poll ``predicate`` until it holds, for state no event announces (a process's port, a
    counter); fails after ``within`` seconds. Returns how long it took."""
    start = time.monotonic()
    while not await predicate():
        if time.monotonic() - start > within:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(POLL_INTERVAL)
    return time.monotonic() - start


async def stacks_if_stuck(work: Awaitable[T], within: float) -> T:
    """Await ``work``; if it has not finished after ``within`` seconds, fail with the stack of
    every task of the loop (where a hang is, which pytest's own timeout cannot show: it sees
    only the loop waiting)."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=within)
    if not done:
        stacks = io.StringIO()
        for each in asyncio.all_tasks():
            print(f"--- task {each.get_name()}", file=stacks)
            each.print_stack(file=stacks)
        task.cancel()
        raise AssertionError(f"still running after {within} s; tasks:\n{stacks.getvalue()}")
    return task.result()


@contextlib.contextmanager
def objects_made_inside() -> Iterator[Callable[[], list[Any]]]:
    """``alive()`` lists the objects created inside the block that a collection leaves alive,
    as ``gc.get_objects()`` does, without collecting or scanning the rest of the heap
    (``gc.freeze`` sets it aside until the block ends). Late in a full run the heap holds over a
    million objects, and a collection and scan of all of it blocks the event loop, which a test
    server and its clients share, for seconds: past a ``polling_server`` client's read timeout
    (ping interval + ping timeout, 3 s) the clients give up and disconnect."""
    gc.freeze()
    try:

        def alive() -> list[Any]:
            gc.collect()
            return gc.get_objects()

        yield alive
    finally:
        gc.unfreeze()


def eventually_sync(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """``eventually`` for synchronous start-up code (a child process coming up)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        time.sleep(POLL_INTERVAL)


ROOT = Path(__file__).resolve().parents[1]


def node_or_skip() -> str:
    """The ``node`` executable with the official client installed; skip locally, fail in CI."""
    node = shutil.which("node")
    missing = [] if node else ["the `node` executable"]
    if not (ROOT / "node_modules" / "socket.io-client").is_dir():
        missing.append("node_modules/socket.io-client (run `npm ci` in the repo root)")
    if missing:
        reason = "this test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}: CI requires it", pytrace=False)
        pytest.skip(reason)
    assert node is not None
    return node


async def run_process(
    *argv: str, env: dict[str, str] | None = None, within: float = 60
) -> tuple[int, str, str]:
    """Run a command from the repo root without blocking the event loop; (exit, stdout, stderr).
    Killed and reported if still running after ``within`` seconds."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        stdout, stderr = await process.communicate()
        raise AssertionError(
            f"{argv[:2]} still running after {within} s:\n{stdout.decode()}\n{stderr.decode()}"
        ) from None
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


class Inbox:
    """Collects one event name on a client; ``get`` waits with a timeout, never a fixed sleep."""

    def __init__(self, client: socketio.AsyncClient, event: str, namespace: str) -> None:
        self.items: asyncio.Queue[Any] = asyncio.Queue()
        client.on(event, self.items.put_nowait, namespace=namespace)

    async def get(self, within: float = 5.0) -> Any:
        return await asyncio.wait_for(self.items.get(), within)

    async def expect_nothing(self, within: float = 0.3) -> None:
        """Assert that no event arrives within ``within`` seconds (a bounded wait).

        Prefer a marker where one can be sent after the event that must not arrive (see
        ``expect_next``): it waits as long as the server needs, not a guessed interval."""
        with contextlib.suppress(TimeoutError):
            item = await asyncio.wait_for(self.items.get(), within)
            raise AssertionError(f"unexpected event: {item!r}")

    async def expect_next(self, *items: Any) -> None:
        """Assert that the next events are exactly ``items`` (each a bounded wait).

        With a marker: after an acknowledged action whose unwanted event would have been queued
        to this client before the ack, cause a marker event and expect it next; one node delivers
        a socket's events in order, so anything unwanted arrives first and fails here."""
        for expected in items:
            item = await self.get()
            assert item == expected, f"expected {expected!r} next, got {item!r}"


WITHIN = 5.0


async def call(client: socketio.AsyncClient, slug: str, event: str, data: Any = None) -> Any:
    """Emit with an acknowledgement and return the ack (bounded wait)."""
    return await client.call(event, data, namespace=f"/{slug}", timeout=WITHIN)


async def connect(server: Server, tenant: Tenant, sub: str, **claims: Any) -> socketio.AsyncClient:
    """A client of ``sub`` connected to ``tenant`` with a token carrying ``claims``."""
    return await server.connect(tenant.slug, await server.token(tenant.slug, sub, **claims))


async def joined(
    server: Server, tenant: Tenant, sub: str, room: str = "lobby", **claims: Any
) -> socketio.AsyncClient:
    """A client of ``sub`` connected to ``tenant`` and joined to ``room``."""
    client = await connect(server, tenant, sub, **claims)
    ack = await call(client, tenant.slug, "join", {"room": room})
    assert ack["ok"] is True, ack
    return client


def assert_error(ack: Any, code: str) -> None:
    """A Socket.IO error ack, exactly ``{ok: false, error: {code, message}}`` (plus
    ``retry_after_ms`` for ``rate_limited``)."""
    assert isinstance(ack, dict) and ack.get("ok") is False, ack
    assert set(ack) == {"ok", "error"}, ack
    error = ack["error"]
    expected_keys = {"code", "message", "retry_after_ms"} if code == "rate_limited" else None
    assert set(error) == (expected_keys or {"code", "message"}), error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error


__all__ = [
    "ADMIN_TOKEN",
    "Inbox",
    "RedisSettings",
    "Server",
    "Tenant",
    "allow_connections",
    "assert_error",
    "call",
    "connect",
    "free_port",
    "joined",
    "node_settings",
    "start_server",
    "unique_slug",
]
