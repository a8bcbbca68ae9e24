"""The ``orgcast`` console script, run for real in a subprocess, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import socketio

from orgcast.store import schema
from tests.support import RedisSettings, node_settings, start_server

ORGCAST = Path(sys.executable).parent / "orgcast"
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Cli:
    """Runs ``orgcast`` against one database, with a working directory and data dir of its own."""

    url: str
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        # Only this test's settings: nothing from the caller's ORGCAST_* environment leaks in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORGCAST_")}
        env.update(ORGCAST_DATA_DIR=str(self.cwd / "data"), ORGCAST_DATABASE__URL=self.url)
        env.update(self.env)
        return env

    def __call__(self, *args: str) -> Result:
        done = subprocess.run(
            [str(ORGCAST), *args],
            cwd=self.cwd,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return Result(done.returncode, done.stdout, done.stderr)

    async def run_async(self, *args: str) -> Result:
        """The same, without blocking the event loop a test's server runs on."""
        process = await asyncio.create_subprocess_exec(
            str(ORGCAST),
            *args,
            cwd=self.cwd,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert b"Traceback" not in err, err.decode()
        return Result(process.returncode or 0, out.decode(), err.decode())

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.code == 0, result.err
        return result

    def create(self, slug: str, *extra: str) -> dict[str, Any]:
        body: dict[str, Any] = self.ok(
            "tenants", "create", slug, "--name", f"Org {slug}", "--json", *extra
        ).json()
        return body


def make_cli(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    """A ``Cli`` on a fresh SQLite file or a fresh PostgreSQL database migrated to head."""
    work = tmp_path / "work"
    work.mkdir()
    if backend == "sqlite":
        return Cli(f"sqlite+aiosqlite:///{tmp_path / 'cli.sqlite3'}", work)
    cli = Cli(request.getfixturevalue("pg_database"), work)
    cli.ok("db", "upgrade")
    return cli


@pytest.fixture(params=["sqlite", "postgres"])
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    return make_cli(request.param, request, tmp_path)


def slugs(result: Result) -> list[str]:
    return [tenant["slug"] for tenant in result.json()["tenants"]]


# -- create / show ------------------------------------------------------------------------------


def test_create_prints_the_keys_once_and_show_never_prints_secrets(cli: Cli) -> None:
    created = cli.ok("tenants", "create", "acme", "--name", "Acme Inc")
    lines = created.out.splitlines()
    assert lines[0] == "created tenant acme (Acme Inc), namespace /acme"
    assert lines[1].startswith("  signing key: kid k") and ", secret " in lines[1]
    assert lines[2].startswith("  API key:     oc_")
    assert lines[3] == "Store both now: they are not shown again."
    secret = lines[1].split(", secret ")[1]
    api_key = lines[2].split()[2]

    shown = cli.ok("tenants", "show", "acme")
    assert shown.out.splitlines()[:3] == [
        "acme: Acme Inc",
        "  status:           active",
        "  namespace:        /acme",
    ]
    assert secret not in shown.out and api_key not in shown.out
    assert api_key[:10] + "..." in shown.out
    body = cli.ok("tenants", "show", "acme", "--json").json()
    assert secret not in json.dumps(body) and api_key not in json.dumps(body)
    assert [set(key) for key in body["signing_keys"]] == [{"kid", "created_at", "revoked_at"}]
    assert [key["prefix"] for key in body["api_keys"]] == [api_key[:10]]


def test_create_json_returns_the_tenant_with_its_first_signing_key_and_api_key(cli: Cli) -> None:
    body = cli.create("acme")
    assert set(body) == {
        "slug", "name", "status", "limits", "ephemeral_events", "allowed_origins",
        "created_at", "updated_at", "signing_key", "api_key",
    }  # fmt: skip
    assert (body["slug"], body["name"], body["status"]) == ("acme", "Org acme", "active")
    assert (body["limits"], body["ephemeral_events"], body["allowed_origins"]) == ({}, [], [])
    assert set(body["signing_key"]) == {"kid", "secret", "created_at", "revoked_at"}
    assert set(body["api_key"]) == {"id", "prefix", "key", "created_at", "revoked_at"}
    assert body["api_key"]["key"].startswith(body["api_key"]["prefix"])


def test_create_stores_limits_ephemeral_events_and_origins(cli: Cli) -> None:
    cli.create(
        "acme",
        "--limit", "max_connections=5", "messages_per_second=2.5",
        "--limit", "history_retention_days=7",
        "--ephemeral", "typing", "cursor",
        "--origin", "https://app.example", "--origin", "http://localhost:3000",
    )  # fmt: skip
    body = cli.ok("tenants", "show", "acme", "--json").json()
    assert body["limits"] == {
        "max_connections": 5,
        "messages_per_second": 2.5,
        "history_retention_days": 7,
    }
    assert body["effective_limits"] == {
        "max_connections": 5,
        "max_message_bytes": 65536,
        "max_rooms_per_connection": 100,
        "messages_per_second": 2.5,
        "history_retention_days": 7,
        "connection_rate": 10,
        "api_requests_per_second": 100,
    }
    assert body["ephemeral_events"] == ["cursor", "typing"]
    assert body["allowed_origins"] == ["https://app.example", "http://localhost:3000"]
    shown = cli.ok("tenants", "show", "acme").out
    assert "  ephemeral events: cursor, typing" in shown.splitlines()
    assert "max_connections=5 (override), max_message_bytes=65536," in shown


def test_create_of_a_taken_slug_exits_1_with_tenant_exists(cli: Cli) -> None:
    cli.create("acme")
    again = cli("tenants", "create", "acme", "--name", "Other", "--json")
    assert again.code == 1
    assert again.json()["error"]["code"] == "tenant_exists"
    human = cli("tenants", "create", "acme", "--name", "Other")
    assert (human.code, human.out) == (1, "")
    assert human.err == "orgcast: tenant 'acme' already exists\n"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["Bad_Slug", "--name", "x"], "slug"),
        (["api", "--name", "x"], "slug"),
        (["acme", "--name", "   "], "name"),
        (["acme", "--name", "x", "--limit", "colour=red"], "limits.colour"),
        (["acme", "--name", "x", "--limit", "max_connections=0"], "limits.max_connections"),
        (["acme", "--name", "x", "--ephemeral", "join"], "ephemeral_events"),
        (["acme", "--name", "x", "--origin", "app.example"], "allowed_origins.0"),
    ],
)
def test_create_with_an_invalid_field_exits_1_naming_it_and_creates_nothing(
    cli: Cli, args: list[str], field: str
) -> None:
    human = cli("tenants", "create", *args)
    assert human.code == 1
    assert human.err.startswith(f"orgcast: invalid tenant: {field}: ")
    result = cli("tenants", "create", *args, "--json")
    assert result.code == 1
    error = result.json()["error"]
    assert error["code"] == "validation_failed"
    assert [detail["field"] for detail in error["details"]] == [field]
    assert slugs(cli.ok("tenants", "list", "--json")) == []


# -- list / suspend / resume / delete -----------------------------------------------------------


def test_list_shows_every_tenant_and_filters_by_status(cli: Cli) -> None:
    assert cli.ok("tenants", "list").out == "no tenants\n"
    assert cli.ok("tenants", "list", "--json").json() == {"tenants": []}
    for slug in ("alpha", "beta", "gamma"):
        cli.create(slug)
    cli.ok("tenants", "suspend", "beta")

    assert cli.ok("tenants", "list").out.splitlines() == [
        "SLUG   STATUS     NAME",
        "alpha  active     Org alpha",
        "beta   suspended  Org beta",
        "gamma  active     Org gamma",
    ]
    assert slugs(cli.ok("tenants", "list", "--json")) == ["alpha", "beta", "gamma"]
    assert slugs(cli.ok("tenants", "list", "--status", "active", "--json")) == ["alpha", "gamma"]
    suspended = cli.ok("tenants", "list", "--status", "suspended")
    assert suspended.out.splitlines() == ["SLUG  STATUS     NAME", "beta  suspended  Org beta"]
    cli.ok("tenants", "resume", "beta")
    assert cli.ok("tenants", "list", "--status", "suspended").out == (
        "no tenants with status suspended\n"
    )


def test_suspend_and_resume_change_the_status(cli: Cli) -> None:
    cli.create("acme")
    assert cli.ok("tenants", "suspend", "acme").out == "acme: suspended\n"
    assert cli.ok("tenants", "show", "acme", "--json").json()["status"] == "suspended"
    resumed = cli.ok("tenants", "resume", "acme", "--json").json()
    assert (resumed["slug"], resumed["status"]) == ("acme", "active")
    suspended = cli.ok("tenants", "suspend", "acme", "--json").json()
    assert suspended["status"] == "suspended"
    assert cli.ok("tenants", "resume", "acme").out == "acme: active\n"


def test_delete_needs_yes_when_not_on_a_terminal_then_removes_the_tenant(cli: Cli) -> None:
    cli.create("acme")
    cli.create("other")
    refused = cli("tenants", "delete", "acme")
    assert refused.code == 1
    assert "confirm with --yes" in refused.err
    assert cli("tenants", "delete", "acme", "--json").json()["error"]["code"] == "not_confirmed"
    assert slugs(cli.ok("tenants", "list", "--json")) == ["acme", "other"]

    assert cli.ok("tenants", "delete", "acme", "--yes").out == "acme: deleted\n"
    assert cli.ok("tenants", "delete", "other", "--yes", "--json").json() == {
        "slug": "other",
        "deleted": True,
    }
    assert slugs(cli.ok("tenants", "list", "--json")) == []
    gone = cli("tenants", "show", "acme", "--json")
    assert gone.code == 1
    assert gone.json()["error"]["code"] == "tenant_not_found"


@pytest.mark.parametrize(
    "command",
    [
        ["tenants", "show", "nobody"],
        ["tenants", "suspend", "nobody"],
        ["tenants", "resume", "nobody"],
        ["tenants", "delete", "nobody", "--yes"],
        ["token", "nobody", "--sub", "alice"],
    ],
)
def test_an_unknown_tenant_exits_1_for_every_command(cli: Cli, command: list[str]) -> None:
    human = cli(*command)
    assert (human.code, human.out, human.err) == (1, "", "orgcast: tenant 'nobody' not found\n")
    result = cli(*command, "--json")
    assert result.code == 1
    assert result.json() == {
        "error": {"code": "tenant_not_found", "message": "tenant 'nobody' not found"}
    }


# -- token --------------------------------------------------------------------------------------


def test_token_prints_a_jwt_that_verifies_with_the_tenant_signing_key(cli: Cli) -> None:
    key = cli.create("acme")["signing_key"]
    before = int(time.time())
    result = cli.ok("token", "acme", "--sub", "alice", "--ttl", "600")
    token = result.out.strip()
    assert result.out == token + "\n"
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT", "kid": key["kid"]}
    claims = jwt.decode(token, key["secret"], algorithms=["HS256"], audience="acme")
    assert set(claims) == {"sub", "exp", "aud"}
    assert (claims["sub"], claims["aud"]) == ("alice", "acme")
    assert before + 600 <= claims["exp"] <= int(time.time()) + 600
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, key["secret"] + "x", algorithms=["HS256"], audience="acme")


def test_token_json_carries_name_rooms_and_expiry(cli: Cli) -> None:
    key = cli.create("acme")["signing_key"]
    body = cli.ok(
        "token", "acme", "--sub", "bob", "--name", "Bob B", "--rooms", "team:*", "lobby", "--json"
    ).json()
    assert set(body) == {"slug", "token", "kid", "expires_at"}
    assert (body["slug"], body["kid"]) == ("acme", key["kid"])
    claims = jwt.decode(body["token"], key["secret"], algorithms=["HS256"], audience="acme")
    assert claims == {
        "sub": "bob",
        "name": "Bob B",
        "rooms": ["team:*", "lobby"],
        "aud": "acme",
        "exp": body["expires_at"],
    }


def test_token_with_a_ttl_out_of_range_exits_1(cli: Cli) -> None:
    cli.create("acme")
    result = cli("token", "acme", "--sub", "alice", "--ttl", "0", "--json")
    assert result.code == 1
    assert result.json()["error"]["code"] == "bad_request"
    assert (
        "ttl_seconds must be between 1 and 2592000"
        in cli("token", "acme", "--sub", "a", "--ttl", "0").err
    )


def test_token_for_a_suspended_tenant_is_minted_with_a_note(cli: Cli) -> None:
    cli.create("acme")
    cli.ok("tenants", "suspend", "acme")
    result = cli.ok("token", "acme", "--sub", "alice")
    assert result.out.count(".") == 2
    assert result.err == (
        "orgcast: note: acme is suspended; connects are refused until it is resumed\n"
    )


# -- usage, placement of options, failures ------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["bogus"],
        ["tenants"],
        ["tenants", "create", "acme"],
        ["tenants", "create", "acme", "--name", "x", "--limit", "nonsense"],
        ["tenants", "list", "--status", "deleted"],
        ["tenants", "show"],
        ["tenants", "apply", "a", "b"],
        ["token", "acme"],
        ["token", "acme", "--sub", "alice", "--ttl", "soon"],
        ["db", "sideways"],
    ],
)
def test_usage_errors_exit_2_with_the_usage_line(tmp_path: Path, command: list[str]) -> None:
    cli = Cli(f"sqlite+aiosqlite:///{tmp_path / 'unused.sqlite3'}", tmp_path)
    result = cli(*command)
    assert result.code == 2
    assert result.out == ""
    assert "usage: orgcast" in result.err
    assert not (tmp_path / "unused.sqlite3").exists()


def test_json_flag_works_before_and_after_the_sub_command(cli: Cli) -> None:
    cli.create("acme")
    for args in (
        ["--json", "tenants", "show", "acme"],
        ["tenants", "--json", "show", "acme"],
        ["tenants", "show", "acme", "--json"],
    ):
        assert cli.ok(*args).json()["slug"] == "acme"
    assert cli.ok("--json", "db", "current").json()["at_head"] is True


def test_an_unreachable_database_exits_1_without_a_traceback(tmp_path: Path) -> None:
    cli = Cli("postgresql+asyncpg://postgres@127.0.0.1:1/orgcast", tmp_path)
    for command in (["tenants", "list"], ["tenants", "apply", str(REPO / "tenants")]):
        result = cli(*command)
        assert result.code == 1
        assert result.err.startswith("orgcast: database unreachable: ")
    result = cli("token", "demo", "--sub", "alice", "--json")
    assert result.code == 1
    assert result.json()["error"]["code"] == "unavailable"


def test_a_postgres_schema_not_at_head_is_refused_with_the_upgrade_command(
    pg_database: str, tmp_path: Path
) -> None:
    cli = Cli(pg_database, tmp_path)
    refused = cli("tenants", "list")
    assert refused.code == 1
    assert refused.err == (
        f"orgcast: the database schema is at nothing, not at {schema.head_revision()}: "
        "run: orgcast db upgrade (or alembic upgrade head)\n"
    )
    assert cli("tenants", "list", "--json").json()["error"]["code"] == "schema_not_at_head"
    cli.ok("db", "upgrade")
    assert cli.ok("tenants", "list").out == "no tenants\n"


def test_the_embedded_sqlite_file_is_created_and_migrated_on_first_use(tmp_path: Path) -> None:
    cli = Cli("", tmp_path)  # empty database.url: the embedded default under data_dir
    assert not (tmp_path / "data").exists()
    assert cli.ok("tenants", "list").out == "no tenants\n"
    assert (tmp_path / "data" / "orgcast.sqlite3").is_file()
    assert cli.ok("db", "current", "--json").json()["current"] == schema.head_revision()


def test_python_dash_m_orgcast_reports_failures_without_a_traceback(tmp_path: Path) -> None:
    cli = Cli(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}", tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "orgcast", "tenants", "show", "nobody", "--json"],
        cwd=tmp_path,
        env=cli.environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr
    assert done.returncode == 1
    assert json.loads(done.stdout)["error"]["code"] == "tenant_not_found"


# -- reaching a running node --------------------------------------------------------------------


@pytest.fixture
def redis_cli(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, redis_channel: str
) -> Cli:
    cli = make_cli(request.param, request, tmp_path)
    cli.env = {"ORGCAST_REDIS__URL": redis_url, "ORGCAST_REDIS__CHANNEL": redis_channel}
    return cli


@pytest.mark.redis
@pytest.mark.parametrize("redis_cli", ["sqlite", "postgres"], indirect=True)
async def test_suspend_from_the_shell_disconnects_live_sockets_of_a_node_via_redis(
    redis_cli: Cli, tmp_path: Path
) -> None:
    redis = RedisSettings(
        url=redis_cli.env["ORGCAST_REDIS__URL"], channel=redis_cli.env["ORGCAST_REDIS__CHANNEL"]
    )
    settings = node_settings(redis_cli.url, tmp_path / "node", redis=redis)
    slug = f"t-{uuid.uuid4().hex[:8]}"
    namespace = f"/{slug}"
    created = await redis_cli.run_async("tenants", "create", slug, "--name", "Live", "--json")
    assert created.code == 0, created.err
    async with start_server(settings) as node:
        token = (await redis_cli.run_async("token", slug, "--sub", "alice")).out.strip()
        client = await node.connect(slug, token)
        gone: asyncio.Queue[Any] = asyncio.Queue()

        async def on_disconnect(*reason: Any) -> None:
            gone.put_nowait(reason)

        client.on("disconnect", on_disconnect, namespace=namespace)

        suspended = await redis_cli.run_async("tenants", "suspend", slug)
        assert (suspended.code, suspended.out, suspended.err) == (0, f"{slug}: suspended\n", "")
        await asyncio.wait_for(gone.get(), 5)

        refused: asyncio.Queue[Any] = asyncio.Queue()
        late = socketio.AsyncClient(reconnection=False)
        late.on("connect_error", refused.put_nowait, namespace=namespace)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await late.connect(
                node.url,
                namespaces=[namespace],
                auth={"token": token},
                transports=["websocket"],
                wait_timeout=5,
            )
        assert (await asyncio.wait_for(refused.get(), 5))["message"] == "tenant_suspended"
        await late.disconnect()


async def test_suspend_and_delete_from_the_shell_reach_a_node_without_redis(
    cli: Cli, tmp_path: Path
) -> None:
    # No Redis: the node finds the change in the tenant table (database.watch_interval_seconds).
    settings = node_settings(cli.url, tmp_path / "node")
    interval = settings.database.watch_interval_seconds
    slugs = [f"t-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for slug in slugs:
        assert (await cli.run_async("tenants", "create", slug, "--name", "Live")).code == 0
    async with start_server(settings) as node:
        clients = []
        for slug in slugs:
            token = (await cli.run_async("token", slug, "--sub", "alice")).out.strip()
            clients.append(await node.connect(slug, token))
        gone = [asyncio.Event() for _ in slugs]
        for slug, client, event in zip(slugs, clients, gone, strict=True):
            client.on("disconnect", lambda *_, e=event: e.set(), namespace=f"/{slug}")

        assert (await cli.run_async("tenants", "suspend", slugs[0])).code == 0
        await asyncio.wait_for(gone[0].wait(), interval + 2)
        assert (await cli.run_async("tenants", "delete", slugs[1], "--yes")).code == 0
        await asyncio.wait_for(gone[1].wait(), interval + 2)
        refusal = await node.refusal(slugs[0], {"token": await node.token(slugs[0])})
        assert refusal["code"] == "tenant_suspended"


async def test_serve_freezes_startup_objects_and_raises_the_young_threshold_while_up() -> None:
    from orgcast.__main__ import _tuned_gc

    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    tune = _tuned_gc(12_345)(None)
    await tune.__anext__()
    try:
        assert gc.get_threshold() == (12_345, before[1], before[2])
        assert gc.get_freeze_count() > frozen
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await tune.__anext__()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
