"""The gateway against its own OpenAPI document: schemathesis generates requests from it,
valid ones and invalid ones, for every operation, and checks every answer: no 5xx, and each
status, content type, header and body as the document says.

(The operations are looped over inside one test, each with hypothesis's ``@given``:
schemathesis's pytest plugin does not run under this pytest's version.)
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.http.conftest import API_KEYS, BOTH_KEY, MakeStack

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
#: Examples per operation: enough to meet each status, few enough to run in seconds.
EXAMPLES = {schemathesis.GenerationMode.POSITIVE: 10, schemathesis.GenerationMode.NEGATIVE: 5}


@pytest.fixture
def api_schema(make_stack: MakeStack, sqlite_url: str) -> schemathesis.BaseSchema:
    # Keys and a rate limit on, so that their answers are in the document too; no wait (a
    # generated "Prefer: wait=N" must not hold the run), and no worker: jobs stay queued.
    stack = make_stack(sqlite_url, worker=False, max_wait=0, api_keys=API_KEYS,
                       rate_limit="100000/s")  # fmt: skip
    return schemathesis.openapi.from_url(f"{stack.server.url}/openapi.json")


def test_every_answer_conforms_to_the_document(api_schema: schemathesis.BaseSchema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]  # type: ignore[union-attr]
    # The event stream never ends by itself (tests/http/test_bus.py reads it): not generated.
    operations = [
        op for op in operations if op.definition.raw.get("operationId") != "stream_events"
    ]
    assert len(operations) >= 10
    failures: dict[str, BaseException] = {}
    for mode, examples in EXAMPLES.items():
        for operation in operations:
            takes_input = operation.body or any(True for _ in operation.iter_parameters())
            if mode is schemathesis.GenerationMode.NEGATIVE and not takes_input:
                continue  # nothing to make invalid (the probes)
            try:
                _check(operation, mode, examples)
            except Exception as exc:
                failures[f"{mode.value} {operation.label}"] = exc
    assert not failures, "\n\n".join(f"{label}: {exc}" for label, exc in failures.items())


def _check(operation: schemathesis.APIOperation[Any, Any, Any, Any],
           mode: schemathesis.GenerationMode, examples: int) -> None:  # fmt: skip
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def check(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {BOTH_KEY}"}, checks=CHECKS)

    check()
