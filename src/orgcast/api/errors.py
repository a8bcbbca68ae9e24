"""Every HTTP error leaves as ``{"error": {"code", "message", "details"?}}`` with its status."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from ..errors import OrgcastError, Unavailable
from ..services import DB_ERRORS

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


def error_response(status: int, code: str, message: str, details: Any = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": error}, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except OrgcastError as exc:
        body = exc.to_dict()
        return error_response(
            exc.status, body.pop("code"), body.pop("message"), body.pop("details", None)
        )
    except web.HTTPException as exc:
        if exc.status < 400 or request.path.startswith("/socket.io"):
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        return error_response(exc.status, code, exc.reason)
    except DB_ERRORS:
        error = Unavailable("the database is unavailable; retry")
        return error_response(error.status, error.code, error.message)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error")
