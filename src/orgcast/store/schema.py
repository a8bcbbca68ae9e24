"""Alembic driven from code: upgrade, downgrade, and "is the schema at head?"."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import SchemaBehind
from .engine import ensure_sqlite_directory

MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


async def upgrade(url: str, revision: str = "head") -> None:
    ensure_sqlite_directory(url)
    # env.py runs its own event loop, so it gets a thread of its own.
    await asyncio.to_thread(command.upgrade, alembic_config(url), revision)


async def downgrade(url: str, revision: str = "-1") -> None:
    await asyncio.to_thread(command.downgrade, alembic_config(url), revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at; None for an empty database. (Read directly rather than
    through a MigrationContext, which logs at INFO on every readiness probe.)"""
    async with engine.connect() as connection:
        if not await connection.run_sync(lambda sync: inspect(sync).has_table("alembic_version")):
            return None
        revision = await connection.scalar(text("SELECT version_num FROM alembic_version"))
        return None if revision is None else str(revision)


async def prepare(url: str, engine: AsyncEngine, *, migrate: bool) -> None:
    """Bring the schema to head when that is allowed (``migrate``, or the embedded SQLite file,
    which is always migrated); otherwise raise ``SchemaBehind`` unless it is already there."""
    current, head = await current_revision(engine), head_revision()
    if current == head:
        return
    if migrate or make_url(url).get_backend_name() == "sqlite":
        await upgrade(url)
        return
    raise SchemaBehind(f"the database schema is at {current or 'nothing'}, not at {head}")
