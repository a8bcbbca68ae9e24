"""Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis), against
a live node with a private database: no operation answers 5xx, every error is the JSON error
shape, and the node logs no traceback. Seeded and bounded: a fixed budget of examples per
operation, derandomized, so CI runs the same cases every time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.nodes import NodeProcess
from tests.support import ADMIN_TOKEN

EXAMPLES_PER_OPERATION = 60


@pytest.fixture(scope="module")
def api_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    data_dir = tmp_path_factory.mktemp("fuzz-api")
    # A private database: the fuzzer creates and deletes tenants at random.
    node = NodeProcess(f"sqlite+aiosqlite:///{data_dir}/fuzz.sqlite3", data_dir)
    try:
        asyncio.run(node.ready())
        yield node
    finally:
        node.stop()


def check(case: Any, url: str) -> None:
    response = case.call(
        base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
    )
    assert response.status_code < 500, (case.method, case.formatted_path, response.text[:500])
    if response.status_code >= 400:
        # schemathesis keeps headers as lists under lower-case names
        content_type = "".join(response.headers.get("content-type", []))
        assert content_type.startswith("application/json"), (
            case.method,
            case.formatted_path,
            case.headers,
            response.status_code,
            response.text,
        )
        error = response.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str), error


def test_no_operation_answers_5xx_or_an_error_that_is_not_json(api_node: NodeProcess) -> None:
    document = requests.get(api_node.url + "/api/v1/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def fuzz(case: Any) -> None:
            check(case, api_node.url)

        fuzz()


def test_the_fuzzed_node_logged_no_traceback_and_is_healthy(api_node: NodeProcess) -> None:
    assert requests.get(api_node.url + "/healthz", timeout=10).status_code == 200
    log = api_node.log.read_text()
    assert "Traceback" not in log, log[-3000:]
