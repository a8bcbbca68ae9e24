"""Reading request input: JSON bodies, query strings and path parameters, each into a model or a
coded error (``invalid_json`` 400, ``validation_failed`` 422, ``bad_request`` 400)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..errors import BadRequest, Invalid, InvalidJson
from ..names import ROOM_RULE, is_room

M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: Any) -> M:
    """``model`` from ``data``, or ``Invalid`` (422) with one detail per offending field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Invalid.from_validation(exc) from None


async def read_object(request: web.Request, *, empty_ok: bool = False) -> dict[str, Any]:
    """The body as a JSON object (``{}`` when empty and ``empty_ok``), or ``invalid_json``."""
    # Bytes, not request.json(): a bogus charset in Content-Type must not become a 500.
    raw = await request.read()
    if not raw.strip():
        if empty_ok:
            return {}
        raise InvalidJson("a JSON object body is required")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidJson("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidJson("the body must be a JSON object")
    return data


async def read_body(request: web.Request, model: type[M]) -> M:
    return validate(model, await read_object(request))


def read_query(request: web.Request, model: type[M]) -> M:
    return validate(model, dict(request.query))


def path_room(request: web.Request) -> str:
    room = request.match_info["room"]
    if not is_room(room):
        raise BadRequest(ROOM_RULE)
    return room
