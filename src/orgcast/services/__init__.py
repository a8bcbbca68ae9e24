"""Use cases: tenants, messages, presence, limits, the real-time hub. Each owns its transaction.

Database failures are translated here, once: a service method that touches the database is
wrapped in ``db_boundary``, so a database that is down or unreachable leaves the service as
``Unavailable`` and no transport needs to know what a driver raises.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from ..errors import DatabaseUnavailable
from ..store.engine import DB_ERRORS

__all__ = ["DB_ERRORS", "db_boundary"]

DB_UNAVAILABLE = "the database is unavailable; retry"
P = ParamSpec("P")
R = TypeVar("R")


def db_boundary(
    message: str | None = None,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Turn the database errors of the wrapped coroutine into ``DatabaseUnavailable(message)``
    (an ``Unavailable``: wire code ``unavailable``)."""

    def wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except DB_ERRORS:
                raise DatabaseUnavailable(message or DB_UNAVAILABLE) from None

        return guarded

    return wrap
