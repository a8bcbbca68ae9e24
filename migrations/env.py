"""Alembic environment (async).

The database comes from orgcast's own settings unless the caller passed a URL
(``config.attributes["url"]``) or a live connection (``config.attributes["connection"]``).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from orgcast.settings import Settings, SettingsError
from orgcast.store.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    # get_section, not get_main_option: run from pyproject.toml there is no alembic.ini section.
    ini = config.get_section(config.config_ini_section, {})
    url = config.attributes.get("url") or ini.get("sqlalchemy.url")
    if url:
        return str(url)
    try:
        return Settings.load().database_url
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_configure)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
