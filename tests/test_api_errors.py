"""Every HTTP error is JSON ``{"error": {"code", "message", "details"?}}`` with its status (DESIGN
§6), including what aiohttp refuses by itself: unknown routes, wrong methods, oversized bodies."""

from __future__ import annotations

import io
from typing import Any

from tests.support import ADMIN_TOKEN, Server, unique_slug

TENANTS = "/api/v1/tenants"


async def raw(
    server: Server,
    method: str,
    path: str,
    *,
    data: bytes | io.BytesIO | None = None,
    **headers: str,
) -> tuple[int, dict[str, str], Any]:
    """A request with a raw body; returns status, headers and the parsed JSON body."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **headers}
    async with server.http.request(
        method, server.url + path, data=data, headers=headers
    ) as response:
        assert response.content_type == "application/json", await response.text()
        return response.status, dict(response.headers), await response.json()


def assert_error(body: Any, code: str) -> None:
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in body["error"]["message"]


async def test_malformed_json_body_is_400_invalid_json(server: Server) -> None:
    status, _, body = await raw(
        server, "POST", TENANTS, data=b'{"slug": "acme",', **{"Content-Type": "application/json"}
    )
    assert status == 400
    assert body == {"error": {"code": "invalid_json", "message": "the body is not valid JSON"}}


async def test_json_body_that_is_not_an_object_is_400_invalid_json(server: Server) -> None:
    status, _, body = await raw(server, "POST", TENANTS, data=b'["acme"]')
    assert (status, body) == (
        400,
        {"error": {"code": "invalid_json", "message": "the body must be a JSON object"}},
    )


async def test_missing_body_is_400_invalid_json(server: Server) -> None:
    status, _, body = await raw(server, "POST", TENANTS)
    assert (status, body) == (
        400,
        {"error": {"code": "invalid_json", "message": "a JSON object body is required"}},
    )


async def test_body_that_is_not_utf8_or_has_a_bogus_charset_is_400_not_500(
    server: Server,
) -> None:
    status, _, body = await raw(server, "POST", TENANTS, data=b'{"slug": "\xff\xfe"}')
    assert status == 400
    assert_error(body, "invalid_json")
    status, _, body = await raw(
        server,
        "POST",
        TENANTS,
        data=b'{"slug": "x"}',
        **{"Content-Type": "application/json; charset=no-such-charset"},
    )
    assert status == 422  # the charset is ignored; the body is read as JSON and validated
    assert_error(body, "validation_failed")


async def test_wrong_types_and_unknown_fields_are_422_with_one_detail_per_field(
    server: Server,
) -> None:
    status, body = await server.request(
        "POST", TENANTS, json={"slug": unique_slug(), "name": 5, "colour": "red"}
    )
    assert status == 422
    assert_error(body, "validation_failed")
    assert body["error"]["details"] == [
        {"field": "name", "message": "Input should be a valid string"},
        {"field": "colour", "message": "Extra inputs are not permitted"},
    ]


async def test_unknown_route_is_404_json(server: Server) -> None:
    for path in ("/api/v1/nothing-here", "/no/such/page"):
        status, _, body = await raw(server, "GET", path)
        assert (status, body) == (
            404,
            {"error": {"code": "not_found", "message": f"no such route: {path}"}},
        )


async def test_wrong_method_is_405_json_with_allow_header(server: Server) -> None:
    status, headers, body = await raw(server, "PUT", TENANTS)
    assert status == 405
    assert headers["Allow"] == "GET,POST"
    assert body == {
        "error": {
            "code": "method_not_allowed",
            "message": f"PUT is not allowed on {TENANTS}; allowed: GET,POST",
        }
    }


async def test_body_above_max_packet_bytes_is_413_json(server: Server) -> None:
    limit = server.settings.server.max_packet_bytes
    tenant = await server.create_tenant()
    payload = b'{"body": "' + b"x" * limit + b'"}'
    status, _, body = await raw(
        server,
        "POST",
        f"{TENANTS}/{tenant.slug}/rooms/general/messages",
        data=io.BytesIO(payload),  # a stream: aiohttp warns about large raw bytes
        **{"Content-Type": "application/json"},
    )
    assert (status, body) == (
        413,
        {
            "error": {
                "code": "too_large",
                "message": f"the request body exceeds the limit of {limit} bytes "
                "(server.max_packet_bytes)",
            }
        },
    )
    # Nothing was stored.
    status, history = await server.request("GET", f"{TENANTS}/{tenant.slug}/rooms/general/messages")
    assert (status, history) == (200, {"room": "general", "messages": [], "has_more": False})


async def test_unauthorized_answers_carry_www_authenticate_bearer(server: Server) -> None:
    status, headers, body = await raw(server, "GET", TENANTS, Authorization="")
    assert status == 401
    assert headers["WWW-Authenticate"] == "Bearer"
    assert_error(body, "auth_required")
