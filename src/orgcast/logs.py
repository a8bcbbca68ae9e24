"""Logging: text or JSON lines, context fields from contextvars, the HTTP access log, and a
helper that logs a repeated failure once per interval.

Context. ``bind(tenant=..., sid=..., user=..., event=..., request_id=...)`` sets fields for the
current task and what it awaits (a contextvar: each Socket.IO event and each HTTP request runs in
a task of its own, so fields never leak between them); it returns a token for ``unbind``. Every
record logged meanwhile carries the fields that are set: as JSON keys with ``log.format = json``,
as a ``[tenant=... sid=...]`` suffix in text. Absent fields are left out, never ``null``.

JSON lines (``python-json-logger``) have ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``msg``,
the context fields, whatever a call passes in ``extra=``, and ``exc_info`` with a traceback.

Access log. ``access_middleware`` logs one line per HTTP request on ``orgcast.access`` at INFO:
``method``, ``route`` (the route's template, ``/api/v1/tenants/{slug}``, never the raw path, so
neither ids nor secrets in paths reach the log), ``status`` and ``latency_ms`` (a websocket's line
is written when it closes, with status 101 and the connection's lifetime); it also binds
``request_id`` (a sane incoming ``X-Request-ID``, else a fresh one), echoed in the response.
aiohttp's own access logger is off. ``log.access = false`` silences the lines.

Repeated failures. ``Repeated`` is for a failure that may repeat many times a second (the
database or Redis down)::

    from orgcast.logs import Repeated
    db_down = Repeated(log, interval=60.0)        # one per failure kind, kept on the service
    db_down.warning("message batch not stored: database unavailable")   # on each failure
    db_down.recovered("message store available again")                  # on the next success

The first failure is logged at once; later ones within ``interval`` seconds are only counted;
the first one after the interval is logged with ``(repeated N times in the last S s)`` and
``extra={"repeated": N}``. ``recovered`` logs at INFO, with the count still pending, only if a
failure was logged since the last recovery, so calling it on every success costs one attribute
check. ``warning``/``error`` return True when they logged. Keys: one ``Repeated`` per kind of
failure; ``Repeated.keyed`` for a family of them (``by_key("redis:" + op)``).
"""

from __future__ import annotations

import functools
import logging
import re
import secrets
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any, TextIO

from aiohttp import web
from aiohttp.typedefs import Handler
from pythonjsonlogger.json import JsonFormatter

from .settings import LogSettings

__all__ = [
    "CONTEXT_FIELDS",
    "Repeated",
    "access_middleware",
    "bind",
    "configure",
    "context",
    "unbind",
]

CONTEXT_FIELDS = ("tenant", "sid", "user", "event", "request_id")

_context: ContextVar[dict[str, str] | None] = ContextVar("orgcast_log_context", default=None)

access_log = logging.getLogger("orgcast.access")


def bind(**fields: str | None) -> Token[dict[str, str] | None]:
    """Add fields to this task's log context (``None`` values are skipped); see ``unbind``."""
    current = _context.get()
    merged: dict[str, Any] = {**current, **fields} if current else fields
    if None in merged.values():
        merged = {key: value for key, value in merged.items() if value is not None}
    return _context.set(merged)


def unbind(token: Token[dict[str, str] | None]) -> None:
    _context.reset(token)


def context() -> dict[str, str]:
    """The fields bound in this task (a copy)."""
    return dict(_context.get() or {})


class ContextFilter(logging.Filter):
    """Copies the bound context fields onto each record (``record.tenant`` ...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _context.get()
        if fields:
            for key, value in fields.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: msg [tenant=... sid=...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if hasattr(record, k)]
        if not extras:
            return line
        head, sep, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{head} [{' '.join(extras)}]{sep}{rest}"


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger", "message": "msg"},
        timestamp="ts",
        json_ensure_ascii=False,
    )


def configure(settings: LogSettings, stream: TextIO | None = None) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) in the configured format; returns the
    handler. Replaces the root logger's handlers, so calling it again reconfigures."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter() if settings.format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # On: the access lines follow log.level like any INFO line; off: never written.
    access_log.setLevel(logging.NOTSET if settings.access else logging.WARNING)
    # aiohttp's access logger logs raw paths; orgcast.access replaces it.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler


# -- HTTP access log --------------------------------------------------------------------------

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
UNMATCHED = "(unmatched)"


def route_template(request: web.Request) -> str:
    """The matched route's template (``/api/v1/tenants/{slug}``), never the raw path."""
    route = request.match_info.route
    resource = route.resource
    if resource is None or getattr(request.match_info, "http_exception", None) is not None:
        return UNMATCHED
    return resource.canonical


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Binds ``request_id`` and logs the request once it is answered (outermost middleware). A
    response with ``when_closed`` (a websocket whose connection outlives its handler, see
    realtime/patches.py ``HandedOver``) has its line written when the connection ends."""
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if _REQUEST_ID.fullmatch(incoming) else secrets.token_hex(8)
    token = bind(request_id=request_id)
    start = time.perf_counter()
    status = 500
    deferred = False
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers["X-Request-ID"] = request_id
        when_closed = getattr(response, "when_closed", None)
        if when_closed is not None and access_log.isEnabledFor(logging.INFO):
            when_closed(functools.partial(
                _log_access, request.method, route_template(request), status, start, request_id
            ))  # fmt: skip
            deferred = True
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        if not deferred and access_log.isEnabledFor(logging.INFO):
            _log_access(request.method, route_template(request), status, start)
        unbind(token)


def _log_access(
    method: str, route: str, status: int, start: float, request_id: str | None = None
) -> None:
    """One access line; ``request_id`` is bound for it when it is written outside the request."""
    token = bind(request_id=request_id) if request_id else None
    try:
        latency_ms = round((time.perf_counter() - start) * 1000, 3)
        access_log.info(
            "%s %s %d %.1fms",
            method,
            route,
            status,
            latency_ms,
            extra={"method": method, "route": route, "status": status, "latency_ms": latency_ms},
        )
    finally:
        if token is not None:
            unbind(token)


# -- repeated failures ------------------------------------------------------------------------


class Repeated:
    """Logs a failure that repeats at most once per ``interval`` seconds, with a count."""

    __slots__ = ("_clock", "_last", "_logged", "_pending", "interval", "logger")

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._last: float | None = None  # when the last line was written
        self._pending = 0  # failures since then, not yet in any line
        self._logged = False  # a failure was logged since the last recovery

    def warning(self, msg: str, *args: Any, exc_info: Any = None) -> bool:
        return self.log(logging.WARNING, msg, *args, exc_info=exc_info)

    def error(self, msg: str, *args: Any, exc_info: Any = None) -> bool:
        return self.log(logging.ERROR, msg, *args, exc_info=exc_info)

    def log(self, level: int, msg: str, *args: Any, exc_info: Any = None) -> bool:
        """Count one failure; log it when the interval since the last line has passed."""
        now = self._clock()
        self._pending += 1
        if self._last is not None and now - self._last < self.interval:
            return False
        count, self._pending = self._pending, 0
        extra: dict[str, Any] = {}
        if self._last is not None:
            window = now - self._last
            msg = f"{msg} (repeated {count} times in the last {window:.0f} s)"
            extra["repeated"] = count
        self._last = now
        self._logged = True
        self.logger.log(level, msg, *args, exc_info=exc_info, extra=extra)
        return True

    def recovered(self, msg: str, *args: Any) -> bool:
        """Log ``msg`` at INFO if a failure was logged since the last recovery; reset."""
        if not self._logged:
            return False
        extra: dict[str, Any] = {}
        if self._pending:
            msg = f"{msg} (after {self._pending} more failures)"
            extra["repeated"] = self._pending
        self._last, self._pending, self._logged = None, 0, False
        self.logger.info(msg, *args, extra=extra)
        return True

    @classmethod
    def keyed(cls, logger: logging.Logger, interval: float = 60.0) -> Callable[[str], Repeated]:
        """A factory of one ``Repeated`` per key (``by_key("redis:publish").warning(...)``)."""
        seen: dict[str, Repeated] = {}

        def by_key(key: str) -> Repeated:
            found = seen.get(key)
            if found is None:
                found = seen[key] = cls(logger, interval)
            return found

        return by_key
