"""Every HTTP error leaves as ``{"error": {"code", "message", "details"?}}`` with its status.

That includes what aiohttp itself refuses: an unknown route (404), a wrong method (405, with
``Allow``), a body above ``server.max_packet_bytes`` (413). No response ever carries a stack trace:
an unexpected exception is logged and answered with a bare ``internal``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import DatabaseUnavailable, OrgcastError
from ..state import METRICS

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "auth_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
}


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    *,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    error.update(extra or {})
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return web.json_response({"error": error}, status=status, headers=headers)


def from_error(exc: OrgcastError) -> web.Response:
    body = exc.to_dict()
    code, message, details = body.pop("code"), body.pop("message"), body.pop("details", None)
    headers = {}
    retry_ms = body.get("retry_after_ms")
    if isinstance(retry_ms, int):
        headers["Retry-After"] = str(max(1, math.ceil(retry_ms / 1000)))
    # Whatever else the error carries (retry_after_ms) stays inside the error object.
    return error_response(exc.status, code, message, details, extra=body, headers=headers)


def _from_http(request: web.Request, exc: web.HTTPException) -> web.Response:
    code = _HTTP_CODES.get(exc.status, "http_error")
    headers: dict[str, str] = {}
    if exc.status == 404:
        message = f"no such route: {request.path}"
    elif exc.status == 405:
        allow = exc.headers.get("Allow", "")
        headers["Allow"] = allow
        message = f"{request.method} is not allowed on {request.path}; allowed: {allow}"
    elif exc.status == 413:
        message = (
            f"the request body exceeds the limit of {request.client_max_size} bytes "
            "(server.max_packet_bytes)"
        )
    else:
        message = exc.reason
    return error_response(exc.status, code, message, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except OrgcastError as exc:
        if isinstance(exc, DatabaseUnavailable):
            request.app[METRICS].database_error()
        return from_error(exc)
    except web.HTTPException as exc:
        # Redirects pass; the Engine.IO endpoint keeps its own protocol's error format.
        if exc.status < 400 or request.path.startswith("/socket.io"):
            raise
        return _from_http(request, exc)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error")
