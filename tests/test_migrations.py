"""Migrations: up, down and up again through ``alembic`` and ``orgcast db``; the models and the
migrations agree (autogenerate finds nothing at head); a PostgreSQL node refuses a stale schema."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from orgcast.store import schema
from orgcast.store.models import Base
from tests.support import eventually_sync, free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
INITIAL_TABLES = ["api_keys", "messages", "rooms", "signing_keys", "tenants"]
WEBHOOK_TABLES = [
    "webhook_deliveries", "webhook_endpoints", "webhook_events", "webhook_generation",
]  # fmt: skip
TABLES = sorted(INITIAL_TABLES + WEBHOOK_TABLES)
HEAD = schema.head_revision()


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'migrations.sqlite3'}"
    url: str = request.getfixturevalue("pg_database")
    return url


def run(program: str, *args: str, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORGCAST_")}
    env.update(ORGCAST_DATABASE__URL=url, ORGCAST_DATA_DIR=str(cwd / "data"))
    done = subprocess.run(
        [str(BIN / program), *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done


def tables(url: str) -> list[str]:
    """The application's tables in the database (alembic's own bookkeeping table left out)."""

    async def read() -> list[str]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                names = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
        finally:
            await engine.dispose()
        return sorted(name for name in names if name != "alembic_version")

    return asyncio.run(read())


def test_alembic_from_the_repo_root_upgrades_downgrades_and_upgrades_again(
    empty_database: str, tmp_path: Path
) -> None:
    # No URL on the command line: [tool.alembic] in pyproject.toml finds migrations/, and env.py
    # reads the database from orgcast's settings (ORGCAST_DATABASE__URL).
    run("alembic", "upgrade", "head", url=empty_database, cwd=REPO)
    assert tables(empty_database) == TABLES
    current = run("alembic", "current", url=empty_database, cwd=REPO)
    assert current.stdout.strip() == f"{HEAD} (head)"

    run("alembic", "downgrade", "base", url=empty_database, cwd=REPO)
    assert tables(empty_database) == []
    assert run("alembic", "current", url=empty_database, cwd=REPO).stdout.strip() == ""

    run("alembic", "upgrade", "head", url=empty_database, cwd=REPO)
    assert tables(empty_database) == TABLES


def test_orgcast_db_upgrade_downgrade_and_current(empty_database: str, tmp_path: Path) -> None:
    def current() -> Any:
        done = run("orgcast", "db", "current", "--json", url=empty_database, cwd=tmp_path)
        return json.loads(done.stdout)

    assert current() == {"current": None, "head": HEAD, "at_head": False}
    upgraded = run("orgcast", "db", "upgrade", url=empty_database, cwd=tmp_path)
    assert upgraded.stdout == f"database at {HEAD}; head is {HEAD}\n"
    assert tables(empty_database) == TABLES
    assert current() == {"current": HEAD, "head": HEAD, "at_head": True}

    # One step down removes the webhook tables and keeps the initial schema; the next empties it.
    downgraded = run("orgcast", "db", "downgrade", url=empty_database, cwd=tmp_path)
    assert downgraded.stdout == f"database at 0001; head is {HEAD}\n"
    assert tables(empty_database) == INITIAL_TABLES
    downgraded = run("orgcast", "db", "downgrade", url=empty_database, cwd=tmp_path)
    assert downgraded.stdout == f"database at nothing (empty); head is {HEAD}\n"
    assert tables(empty_database) == []
    assert current() == {"current": None, "head": HEAD, "at_head": False}

    again = run("orgcast", "db", "upgrade", "head", "--json", url=empty_database, cwd=tmp_path)
    assert json.loads(again.stdout) == {"current": HEAD, "head": HEAD, "at_head": True}
    assert tables(empty_database) == TABLES


def test_autogenerate_against_the_models_finds_no_difference_at_head(
    empty_database: str,
) -> None:
    asyncio.run(schema.upgrade(empty_database))

    async def compare() -> list[Any]:
        engine = create_async_engine(empty_database)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(
                    lambda sync: compare_metadata(
                        MigrationContext.configure(
                            sync, opts={"compare_type": True, "compare_server_default": True}
                        ),
                        Base.metadata,
                    )
                )
        finally:
            await engine.dispose()

    assert asyncio.run(compare()) == []


# -- the server and a stale PostgreSQL schema -----------------------------------------------------


def serve(url: str, tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORGCAST_")}
    env.update(ORGCAST_DATABASE__URL=url, ORGCAST_DATA_DIR=str(tmp_path / "data"))
    process = subprocess.Popen(
        [str(BIN / "orgcast"), "serve", "--host", "127.0.0.1", "--port", str(port), *args],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, port


def ready_status(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None  # not listening yet


def test_serve_refuses_a_postgres_schema_not_at_head_without_migrate(
    pg_database: str, tmp_path: Path
) -> None:
    process, _port = serve(pg_database, tmp_path)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "orgcast db upgrade" in err
    assert err.splitlines()[-1] == (
        f"orgcast: the database schema is at nothing, not at {HEAD}: "
        "run: alembic upgrade head (or orgcast db upgrade), or start with --migrate"
    )
    assert "Traceback" not in err
    assert tables(pg_database) == []


def test_serve_with_migrate_upgrades_a_postgres_schema_and_starts(
    pg_database: str, tmp_path: Path
) -> None:
    process, port = serve(pg_database, tmp_path, "--migrate")
    try:
        status = None

        def ready_or_exited() -> bool:
            nonlocal status
            status = ready_status(port)
            return status == 200 or process.poll() is not None

        eventually_sync(ready_or_exited, within=60)
        assert status == 200, process.stderr.read() if process.poll() is not None else "no answer"
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert "orgcast serving on http://127.0.0.1:" in out
    assert "Traceback" not in err
    assert tables(pg_database) == TABLES
