"""Engine and session factory for PostgreSQL (asyncpg) and the embedded SQLite file (aiosqlite)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from ..settings import Settings

Sessions = async_sessionmaker[AsyncSession]

# What a database that is down or unreachable raises; the edges turn these into `unavailable`.
# The asyncpg errors come from work done on the driver's connection itself (the message writer's),
# which the session layer would have wrapped in ``DBAPIError``.
DB_ERRORS: tuple[type[Exception], ...] = (
    DBAPIError,
    InterfaceError,
    PoolTimeout,
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # e.g. a statement on a connection the server ended
)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the single writer; foreign keys make tenant deletes cascade.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def ensure_sqlite_directory(database_url: str) -> None:
    """SQLite creates the file but not its directory; make the directory (mode 0700 when it is
    created here) and the file (mode 0600): it holds the tenants' signing secrets. SQLite gives
    its -wal and -shm files the database file's mode."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database)
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.parent.chmod(0o700)  # mkdir's mode is narrowed by the umask, never widened
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)


def create_engine(settings: Settings) -> AsyncEngine:
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        ensure_sqlite_directory(settings.database_url)
        engine = create_async_engine(url, echo=settings.database.echo)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url,
        echo=settings.database.echo,
        pool_size=settings.database.pool_size,
        # No pre-ping: it costs a round trip per checkout on the message path. A connection
        # that broke (database restarted) fails one unit of work, which answers `unavailable`,
        # and the pool then replaces every connection of that generation.
        connect_args={
            "timeout": settings.database.connect_timeout,
            "command_timeout": settings.database.command_timeout,
        },
    )


def create_sessions(engine: AsyncEngine) -> Sessions:
    return async_sessionmaker(engine, expire_on_commit=False)


def create_autocommit_sessions(engine: AsyncEngine) -> Sessions:
    """Autocommit sessions, for work that is one statement (reads, a one-statement batch
    write): no BEGIN/COMMIT or ROLLBACK round trips around it."""
    return async_sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
    )


async def hold_driver_connection(sessions: Sessions) -> tuple[AsyncConnection, Any]:
    """A connection of the sessions' pool, taken out until ``drop_driver_connection``, and the
    driver's own connection under it (asyncpg's, on PostgreSQL): for one task that runs the
    same statement all the time and needs none of the session machinery.

    The connection is pinged through the engine first (one round trip, once per hold): a pool
    whose connections the server ended (a restart) is then renewed by the engine as on any
    statement, instead of handing out its dead connections one failed batch at a time."""
    engine = sessions.kw["bind"]
    for attempt in (1, 2):
        connection = await engine.connect()
        try:
            await connection.exec_driver_sql("SELECT 1")
            raw = await connection.get_raw_connection()
            return connection, raw.driver_connection
        except DBAPIError as exc:
            await connection.close()
            if attempt == 2 or not exc.connection_invalidated:
                raise
        except BaseException:
            await connection.close()
            raise
    raise AssertionError("unreachable")


async def drop_driver_connection(connection: AsyncConnection) -> None:
    """Give up a held connection: it is closed, not returned to the pool, since a statement may
    have failed or been cancelled on it."""
    try:
        await connection.invalidate()
    finally:
        await connection.close()
