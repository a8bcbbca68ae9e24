"""Validation of client event payloads. Every failure is a ``BadRequest`` naming the field."""

from __future__ import annotations

from typing import Any

from ..errors import BadRequest
from ..names import ROOM_RULE, is_room

MAX_SEQ = 2**63 - 1


def payload(args: tuple[Any, ...]) -> dict[str, Any]:
    if len(args) != 1 or not isinstance(args[0], dict):
        raise BadRequest("the payload must be one JSON object")
    return args[0]


def room(data: dict[str, Any]) -> str:
    value = data.get("room")
    if not isinstance(value, str) or not is_room(value):
        raise BadRequest(ROOM_RULE)
    return value


def optional_seq(data: dict[str, Any], field: str) -> int | None:
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
        raise BadRequest(f"{field} must be a non-negative integer")
    return value


def limit(data: dict[str, Any], default: int, maximum: int) -> int:
    value = data.get("limit")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise BadRequest(f"limit must be an integer from 1 to {maximum}")
    return value


def client_id(data: dict[str, Any]) -> str | None:
    value = data.get("client_id")
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        raise BadRequest("client_id must be a string of 1-128 characters")
    return value
