"""The OpenAPI document: one typed request schema per task, every answer and error described."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

import dromos
from dromos.http import gateway
from tests.http.conftest import Stack
from tests.http.tasks_app import create_app

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def doc() -> Doc:
    # The document needs no server: it is built from the routes and the tasks.
    app = create_app("memory://")
    return gateway(app, api_keys="read-key-0123456789abcdef:read").openapi()


def _schema(doc: Doc, ref: dict[str, str]) -> Doc:
    name = ref["$ref"].removeprefix("#/components/schemas/")
    schema: Doc = doc["components"]["schemas"][name]
    return schema


def _request_schema(doc: Doc, task: str) -> Doc:
    body = doc["paths"][f"/v1/tasks/{task}/jobs"]["post"]["requestBody"]
    return _schema(doc, body["content"]["application/json"]["schema"])


def test_every_task_has_a_route_with_its_own_typed_request(doc: Doc) -> None:
    for task in ("add", "slow", "steps", "fail", "order"):
        operation = doc["paths"][f"/v1/tasks/{task}/jobs"]["post"]
        assert operation["operationId"] == f"enqueue_{task}"
        assert _request_schema(doc, task)["title"] == f"{task.capitalize()}JobRequest"
    assert doc["paths"]["/v1/tasks/add/jobs"]["post"]["description"] == "Add two numbers."


def test_kwargs_are_typed_and_required_as_the_signature_says(doc: Doc) -> None:
    request = _request_schema(doc, "add")
    assert request["additionalProperties"] is False
    kwargs = _schema(doc, request["properties"]["kwargs"])
    assert kwargs["properties"]["x"]["type"] == "integer"
    assert kwargs["properties"]["y"] == {"type": "integer", "default": 0, "title": "y"}
    assert kwargs["required"] == ["x"]
    assert kwargs["additionalProperties"] is False
    args = request["properties"]["args"]
    assert args["prefixItems"] == [{"type": "integer"}, {"type": "integer"}]
    assert args["maxItems"] == 2
    assert "minItems" not in args  # any leading part may come by position
    options = _schema(doc, request["properties"]["options"])
    assert set(options["properties"]) == {
        "delay", "priority", "idempotency_key", "callback_url", "depends_on",
    }  # fmt: skip


def test_models_var_args_and_keyword_only_parameters(doc: Doc) -> None:
    request = _request_schema(doc, "order")
    args = request["properties"]["args"]
    assert args["prefixItems"] == [{"$ref": "#/components/schemas/Item"}]
    assert args["items"] == {"type": "string"}  # *notes: str
    assert "maxItems" not in args
    kwargs = _schema(doc, request["properties"]["kwargs"])
    assert set(kwargs["properties"]) == {"item", "express"}  # express is keyword-only
    item = doc["components"]["schemas"]["Item"]
    assert item["properties"]["sku"]["type"] == "string"
    assert item["required"] == ["sku"]


def test_the_status_schema_has_every_field_of_job_status_described_and_required(
    doc: Doc,
) -> None:
    status = doc["components"]["schemas"]["JobStatus"]
    fields = list(dromos.JobStatus.__struct_fields__)
    assert list(status["properties"]) == fields
    assert status["required"] == fields
    assert all(p.get("description") for p in status["properties"].values())
    assert status["properties"]["created_at"]["anyOf"][0]["format"] == "date-time"
    states = doc["components"]["schemas"]["JobState"]["enum"]
    assert states == [s.value for s in dromos.JobState]


def test_every_error_answer_is_a_problem_document(doc: Doc) -> None:
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    seen = set()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for code, response in operation["responses"].items():
                if int(code) >= 400:
                    assert response["content"] == problem, (method, path, code)
                    seen.add(int(code))
            guarded = "health" not in operation["tags"]
            assert ("401" in operation["responses"]) == guarded, (method, path)
            if "requestBody" in operation:
                assert {"400", "413", "415", "422"} <= set(operation["responses"])
    assert {400, 401, 403, 404, 409, 413, 415, 422, 503} <= seen
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert schemas["Problem"]["required"] == ["type", "title", "status", "detail"]


def test_accepted_answers_document_location_and_retry_after(doc: Doc) -> None:
    accepted = doc["paths"]["/v1/tasks/add/jobs"]["post"]["responses"]["202"]
    assert set(accepted["headers"]) == {"Location", "Retry-After"}
    assert accepted["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobStatus"
    }


def test_operation_ids_are_unique(doc: Doc) -> None:
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    assert {"get_job", "job_events", "cancel_job", "retry_job", "list_jobs", "list_queues",
            "enqueue", "healthz", "readyz"} <= set(ids)  # fmt: skip


class Problem(BaseModel):
    """A user's model that happens to share its name with the gateway's error body."""

    what: str


def test_a_request_model_named_like_an_answer_is_renamed() -> None:
    app = dromos.App("clash", broker="memory://")

    @app.task
    async def report(problem: Problem) -> None: ...

    doc = gateway(app).openapi()
    schemas = doc["components"]["schemas"]
    assert schemas["Problem"]["required"] == ["type", "title", "status", "detail"]
    kwargs = _schema(doc, _request_schema(doc, "report")["properties"]["kwargs"])
    assert kwargs["properties"]["problem"]["$ref"] == "#/components/schemas/Problem2"
    assert schemas["Problem2"]["properties"] == {"what": {"title": "What", "type": "string"}}


def test_docs_are_served_and_can_be_turned_off(sqlite_stack: Stack) -> None:
    page = sqlite_stack.client.get("/docs")
    assert page.status_code == 200
    assert "swagger" in page.text.lower()
    hidden = gateway(create_app("memory://"), docs=False)
    assert hidden.openapi_url is None
    assert hidden.docs_url is None


def test_the_public_names_of_dromos_http_have_not_drifted() -> None:
    import dromos.http

    assert dromos.http.__all__ == [
        "Gateway",
        "GatewaySettings",
        "KeyRing",
        "Principal",
        "ProblemError",
        "Rate",
        "Scope",
        "gateway",
        "parse_api_keys",
        "parse_rate",
    ]
    assert dromos.http.__all__ == sorted(dromos.http.__all__)


def test_every_reference_resolves(doc: Doc) -> None:
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    schemas = doc["components"]["schemas"]
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
