"""Bad input gets a clear problem and queues nothing: 400, 404, 413, 415, 422; every broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.http.conftest import MakeStack, Stack

PROBLEM = "application/problem+json"


def _refused(stack: Stack, status: int, response_status: int, body: dict[str, object]) -> None:
    assert response_status == status, body
    assert body["status"] == status
    assert str(body["type"]).startswith("urn:dromos:problem:")
    assert body["title"]
    assert body["detail"]


def test_a_body_that_is_not_json_is_400(stack: Stack) -> None:
    response = stack.client.post(
        "/v1/tasks/add/jobs", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    _refused(stack, 400, response.status_code, response.json())
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == "urn:dromos:problem:invalid-json"
    assert stack.counts() == {}


@pytest.mark.parametrize(
    "content", [b"[1, 2", b'{"args": [1e999]}', b"\xff\xfe", b'"\\ud800"', b'{"a": NaN}']
)
def test_bodies_that_are_not_strict_json_are_400(sqlite_stack: Stack, content: bytes) -> None:
    response = sqlite_stack.client.post(
        "/v1/tasks/add/jobs", content=content, headers={"Content-Type": "application/json"}
    )
    _refused(sqlite_stack, 400, response.status_code, response.json())
    assert sqlite_stack.counts() == {}


def test_arguments_that_do_not_fit_are_422_with_each_field_and_reason(stack: Stack) -> None:
    response = stack.client.post(
        "/v1/tasks/add/jobs", json={"args": ["one"], "kwargs": {"y": "two"}}
    )
    _refused(stack, 422, response.status_code, response.json())
    problem = response.json()
    assert problem["type"] == "urn:dromos:problem:invalid-arguments"
    fields = {e["field"]: e["reason"] for e in problem["errors"]}
    assert set(fields) == {"x", "y"}
    assert "integer" in fields["x"]
    assert stack.counts() == {}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"args": [1], "kwargs": {"z": 1}}, "(arguments)"),  # no such parameter
        ({"args": [1, 2, 3]}, "(arguments)"),  # too many
        ({"kwargs": {"item": {"quantity": 2}}}, "item.sku"),  # a nested field is missing
        ({"args": {"x": 1}}, "args"),  # not an array
        ({"args": [1], "kwarg": {}}, "kwarg"),  # a typo in the envelope
        ({"args": [1], "options": {"delay": -1}}, "options.delay"),
        ({"args": [1], "options": {"priority": 5000}}, "options.priority"),
        ({"args": [1], "options": {"priority": True}}, "options.priority"),
        ({"args": [1], "options": {"queue": "vip"}}, "options.queue"),  # not an HTTP option
    ],
)
def test_bodies_that_do_not_fit_are_422(sqlite_stack: Stack, body: dict[str, object],
                                        field: str) -> None:  # fmt: skip
    task = "order" if "item" in str(body) else "add"
    response = sqlite_stack.client.post(f"/v1/tasks/{task}/jobs", json=body)
    _refused(sqlite_stack, 422, response.status_code, response.json())
    assert field in [e["field"] for e in response.json()["errors"]]
    assert sqlite_stack.counts() == {}


def test_a_json_array_body_is_422(sqlite_stack: Stack) -> None:
    response = sqlite_stack.client.post("/v1/tasks/add/jobs", json=[1, 2])
    _refused(sqlite_stack, 422, response.status_code, response.json())
    assert sqlite_stack.counts() == {}


def test_an_unknown_task_is_404_naming_the_known_ones(stack: Stack) -> None:
    response = stack.client.post("/v1/tasks/resize/jobs", json={"args": [1]})
    _refused(stack, 404, response.status_code, response.json())
    problem = response.json()
    assert problem["type"] == "urn:dromos:problem:unknown-task"
    assert "add" in problem["detail"]
    assert stack.counts() == {}


def test_a_body_that_is_not_json_by_its_type_is_415(sqlite_stack: Stack) -> None:
    response = sqlite_stack.client.post(
        "/v1/tasks/add/jobs", content=b"x=1", headers={"Content-Type": "text/plain"}
    )
    _refused(sqlite_stack, 415, response.status_code, response.json())
    assert sqlite_stack.counts() == {}


def test_a_declared_length_over_the_limit_is_413_before_reading(
    make_stack: MakeStack, backend_url: str
) -> None:
    stack = make_stack(backend_url, max_body_size=1024)
    body = b'{"args": [1], "kwargs": {"y": 1}, "pad": "' + b"x" * 2000 + b'"}'
    response = stack.client.post(
        "/v1/tasks/add/jobs", content=body, headers={"Content-Type": "application/json"}
    )
    _refused(stack, 413, response.status_code, response.json())
    assert response.headers["content-type"] == PROBLEM
    assert "1024" in response.json()["detail"]
    assert stack.counts() == {}


def test_a_streamed_body_over_the_limit_is_413(make_stack: MakeStack, backend_url: str) -> None:
    stack = make_stack(backend_url, max_body_size=1024)

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        yield b'{"args": [1], "pad": "'
        for _ in range(8):
            yield b"x" * 256
        yield b'"}'

    response = stack.client.post(
        "/v1/tasks/add/jobs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    _refused(stack, 413, response.status_code, response.json())
    assert stack.counts() == {}


def test_a_body_under_the_limit_passes(make_stack: MakeStack, sqlite_url: str) -> None:
    stack = make_stack(sqlite_url, max_body_size=1024, worker=False)

    def chunks() -> Iterator[bytes]:
        yield b'{"args": '
        yield b"[1]}"

    response = stack.client.post(
        "/v1/tasks/add/jobs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 202, response.text
    assert stack.counts()["default"]["queued"] == 1
