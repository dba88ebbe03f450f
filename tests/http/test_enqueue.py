"""``POST /v1/tasks/{task}/jobs``: 202 and poll, or ``Prefer: wait`` and 200; on every broker."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.http.conftest import MakeStack, Stack

JSON = "application/json"


def test_a_job_is_accepted_with_its_location_and_a_retry_after(stack: Stack) -> None:
    response = stack.client.post("/v1/tasks/add/jobs", json={"args": [2], "kwargs": {"y": 3}})
    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"] == f"/v1/jobs/{body['id']}"
    assert response.headers["retry-after"] == "1"
    assert response.headers["content-type"] == JSON
    assert body["task"] == "add"
    assert body["state"] in ("queued", "running", "succeeded")
    assert "preference-applied" not in response.headers
    final = stack.wait_for(body["id"], lambda s: s["state"] == "succeeded")
    assert final["result"] == 5


def test_prefer_wait_answers_200_with_the_result_when_the_job_ends_in_time(stack: Stack) -> None:
    response = stack.enqueue("add", 20, 22, headers={"Prefer": "wait=10"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "succeeded"
    assert body["result"] == 42
    assert body["finished_at"] is not None
    assert response.headers["preference-applied"] == "wait=10"
    assert response.headers["content-location"] == f"/v1/jobs/{body['id']}"
    assert "retry-after" not in response.headers


def test_prefer_wait_answers_202_when_the_job_is_still_running(stack: Stack) -> None:
    started = time.monotonic()
    response = stack.enqueue("slow", 5, headers={"Prefer": "wait=1"})
    waited = time.monotonic() - started
    assert response.status_code == 202, response.text
    assert 0.9 <= waited < 4.0
    assert response.json()["state"] in ("queued", "running")
    assert response.headers["preference-applied"] == "wait=1"
    assert response.headers["location"].startswith("/v1/jobs/")


def test_prefer_wait_is_capped_by_max_wait(make_stack: MakeStack, sqlite_url: str) -> None:
    stack = make_stack(sqlite_url, max_wait=1)
    started = time.monotonic()
    response = stack.enqueue("slow", 5, headers={"Prefer": "wait=30"})
    assert response.status_code == 202
    assert time.monotonic() - started < 4.0
    assert response.headers["preference-applied"] == "wait=1"


def test_a_failed_job_within_the_wait_is_200_with_state_failed_and_its_error(
    stack: Stack,
) -> None:
    response = stack.enqueue("fail", "out of paper", headers={"Prefer": "wait=10"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "failed"
    assert body["result"] is None
    assert body["error"]["type"] == "ValueError"
    assert body["error"]["message"] == "out of paper"


def test_respond_async_answers_202_at_once(stack: Stack) -> None:
    response = stack.enqueue("add", 1, headers={"Prefer": "respond-async"})
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "respond-async"


def test_respond_async_with_wait_waits_then_answers_async(stack: Stack) -> None:
    response = stack.enqueue("add", 1, 1, headers={"Prefer": "respond-async, wait=10"})
    assert response.status_code == 200
    assert response.json()["result"] == 2
    assert response.headers["preference-applied"] == "respond-async, wait=10"


def test_a_delayed_job_is_scheduled_and_retry_after_points_at_its_time(stack: Stack) -> None:
    response = stack.enqueue("add", 1, options={"delay": 30, "priority": 7})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["state"] == "scheduled"
    assert body["priority"] == 7
    assert 28 <= int(response.headers["retry-after"]) <= 31


def test_the_idempotency_key_header_returns_the_same_job(stack: Stack) -> None:
    key = f"order-{uuid.uuid4()}"
    first = stack.enqueue("add", 1, headers={"Idempotency-Key": key})
    second = stack.enqueue("add", 1, headers={"Idempotency-Key": key})
    other = stack.enqueue("add", 1, headers={"Idempotency-Key": key + "-other"})
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert other.json()["id"] != first.json()["id"]
    assert sum(stack.counts()["default"].values()) == 2


def test_the_header_and_the_option_name_the_same_key(stack: Stack) -> None:
    key = f"charge-{uuid.uuid4()}"
    by_option = stack.enqueue("add", 1, options={"idempotency_key": key})
    by_header = stack.enqueue("add", 1, headers={"Idempotency-Key": key})
    assert by_option.json()["id"] == by_header.json()["id"]


def test_a_header_and_an_option_that_differ_are_refused(stack: Stack) -> None:
    response = stack.enqueue(
        "add", 1, headers={"Idempotency-Key": "a-key"}, options={"idempotency_key": "b-key"}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "options.idempotency_key"
    assert stack.counts() == {}


def test_an_http_callback_url_is_accepted(stack: Stack) -> None:
    response = stack.enqueue("add", 1, options={"callback_url": "https://billing.example/hooks"})
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    "url", ["ftp://files.example/x", "javascript:alert(1)", "https://", "billing/hooks"]
)
def test_a_callback_url_that_is_not_http_is_422(sqlite_stack: Stack, url: str) -> None:
    response = sqlite_stack.enqueue("add", 1, options={"callback_url": url})
    assert response.status_code == 422
    problem = response.json()
    assert problem["errors"][0]["field"] == "options.callback_url"
    assert sqlite_stack.counts() == {}


def test_the_general_route_enqueues_any_task_by_name(stack: Stack) -> None:
    item = {"sku": "tea", "quantity": 3}
    response = stack.client.post(
        "/v1/tasks/order/jobs",
        json={"args": [item, "gift"], "kwargs": {"express": True}},
        headers={"Prefer": "wait=10"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["result"] == "3 x tea express"


def test_a_task_registered_after_the_gateway_is_served_by_the_general_route(
    sqlite_stack: Stack,
) -> None:
    @sqlite_stack.app.task(name="late.task")
    async def late(x: int) -> int:
        return x

    response = sqlite_stack.enqueue("late.task", 1)
    assert response.status_code == 202, response.text
    assert response.json()["task"] == "late.task"


def test_an_empty_body_means_no_arguments(sqlite_stack: Stack) -> None:
    response = sqlite_stack.client.post("/v1/tasks/add/jobs", content=b"")
    assert response.status_code == 422  # add needs x: the task's own check says so
    error = response.json()["errors"][0]
    assert error["field"] == "(arguments)"
    assert "'x'" in error["reason"]


def test_a_callback_host_outside_the_allowlist_is_422_under_options(
    make_stack: MakeStack, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DROMOS_WEBHOOK_HOSTS", "billing.example")
    stack = make_stack(sqlite_url, worker=False)
    allowed = stack.enqueue("add", 1, options={"callback_url": "https://billing.example/h"})
    assert allowed.status_code == 202, allowed.text
    refused = stack.enqueue("add", 1, options={"callback_url": "https://elsewhere.example/h"})
    assert refused.status_code == 422
    error = refused.json()["errors"][0]
    assert error["field"] == "options.callback_url"
    assert "allowlist" in error["reason"]
    assert stack.counts()["default"]["queued"] == 1
