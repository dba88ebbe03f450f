"""Status, cancel, retry, the job list, the queues and the probes; on every broker."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import dromos
from tests.http.conftest import MakeStack, Stack

PROBLEM = "application/problem+json"


def test_get_job_answers_the_status_with_every_field(stack: Stack) -> None:
    job_id = stack.enqueue("add", 1, 2, headers={"Prefer": "wait=10"}).json()["id"]
    body = stack.status(job_id)
    assert body["id"] == job_id
    assert body["state"] == "succeeded"
    assert body["result"] == 3
    assert body["progress"] == 1.0
    assert body["attempts"] == 1
    assert set(body) == set(dromos.JobStatus.__struct_fields__)


def test_an_unknown_job_is_404_on_every_job_route(stack: Stack) -> None:
    missing = "01900000-0000-7000-8000-000000000000"
    for method, path in [
        ("GET", f"/v1/jobs/{missing}"),
        ("GET", f"/v1/jobs/{missing}/events"),
        ("DELETE", f"/v1/jobs/{missing}"),
        ("POST", f"/v1/jobs/{missing}/retry"),
    ]:
        response = stack.client.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == PROBLEM
        problem = response.json()
        assert problem["type"] == "urn:dromos:problem:unknown-job"
        assert problem["status"] == 404
        assert missing in problem["detail"]


def test_delete_cancels_a_waiting_job(stack: Stack) -> None:
    job_id = stack.enqueue("add", 1, options={"delay": 60}).json()["id"]
    response = stack.client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    assert stack.status(job_id)["state"] == "cancelled"


def test_delete_asks_a_running_job_to_stop(stack: Stack) -> None:
    job_id = stack.enqueue("slow", 30).json()["id"]
    stack.wait_for(job_id, lambda s: s["state"] == "running")
    response = stack.client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["state"] in ("running", "cancelled")
    assert body["state"] == "cancelled" or body["cancel_requested"] is True
    stack.wait_for(job_id, lambda s: s["state"] == "cancelled")


def test_delete_leaves_an_ended_job_as_it_is(stack: Stack) -> None:
    job_id = stack.enqueue("add", 1, headers={"Prefer": "wait=10"}).json()["id"]
    response = stack.client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 200
    assert response.json()["state"] == "succeeded"


def test_retry_replays_a_dead_letter(stack: Stack) -> None:
    job_id = stack.enqueue("fail", "once", headers={"Prefer": "wait=10"}).json()["id"]
    response = stack.client.post(f"/v1/jobs/{job_id}/retry")
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    assert response.json()["state"] in ("queued", "running", "failed")
    final = stack.wait_for(job_id, lambda s: s["state"] == "failed" and s["attempts"] == 2)
    assert [e["message"] for e in final["errors"]] == ["once", "once"]


def test_retry_of_a_job_that_is_not_dead_lettered_is_409(stack: Stack) -> None:
    job_id = stack.enqueue("add", 1, headers={"Prefer": "wait=10"}).json()["id"]
    response = stack.client.post(f"/v1/jobs/{job_id}/retry")
    assert response.status_code == 409
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == "urn:dromos:problem:not-dead-lettered"
    assert "succeeded" in response.json()["detail"]


def test_the_job_list_pages_newest_first_with_a_cursor_and_a_link(
    make_stack: MakeStack, backend_url: str
) -> None:
    stack = make_stack(backend_url, worker=False)
    ids = [stack.enqueue("add", i).json()["id"] for i in range(5)]
    seen: list[str] = []
    path = "/v1/jobs?limit=2"
    pages = 0
    while path:
        response = stack.client.get(path)
        assert response.status_code == 200, response.text
        body = response.json()
        seen += [j["id"] for j in body["jobs"]]
        pages += 1
        link = response.headers.get("link")
        if body["next_cursor"] is None:
            assert link is None
            break
        assert link is not None
        assert link.endswith('>; rel="next"')
        path = link[1 : link.index(">")]
        assert parse_qs(urlsplit(path).query)["cursor"] == [body["next_cursor"]]
    assert seen == ids[::-1]
    assert pages == 3


def test_the_job_list_filters_by_state_task_and_queue(stack: Stack) -> None:
    done = stack.enqueue("add", 1, headers={"Prefer": "wait=10"}).json()["id"]
    scheduled = stack.enqueue("add", 2, options={"delay": 60}).json()["id"]
    failed = stack.enqueue("fail", "x", headers={"Prefer": "wait=10"}).json()["id"]

    def ids(query: str) -> list[str]:
        response = stack.client.get(f"/v1/jobs?{query}")
        assert response.status_code == 200, response.text
        return [j["id"] for j in response.json()["jobs"]]

    assert ids("state=succeeded") == [done]
    assert ids("state=scheduled") == [scheduled]
    assert ids("task=fail") == [failed]
    assert ids("task=add&state=failed") == []
    assert ids("queue=default") == [failed, scheduled, done]
    assert ids("queue=elsewhere") == []


def test_any_cursor_is_a_place_in_the_order(stack: Stack) -> None:
    job_id = stack.enqueue("add", 1, options={"delay": 60}).json()["id"]
    for cursor, expected in [("zzzz", [job_id]), ("0000", []), ("~weird [cursor*", [job_id])]:
        response = stack.client.get("/v1/jobs", params={"cursor": cursor})
        assert response.status_code == 200, response.text
        assert [j["id"] for j in response.json()["jobs"]] == expected, cursor


def test_bad_list_parameters_are_422_problems(sqlite_stack: Stack) -> None:
    for query in ("state=finished", "limit=0", "limit=501", "limit=many"):
        response = sqlite_stack.client.get(f"/v1/jobs?{query}")
        assert response.status_code == 422, query
        problem = response.json()
        assert problem["errors"][0]["loc"][0] == "query"


def test_queues_count_every_state_per_queue(stack: Stack) -> None:
    assert stack.client.get("/v1/queues").json() == {"queues": []}
    stack.enqueue("add", 1, headers={"Prefer": "wait=10"})
    stack.enqueue("add", 2, options={"delay": 60})
    response = stack.client.get("/v1/queues")
    assert response.status_code == 200
    assert response.json() == {
        "queues": [
            {
                "queue": "default",
                "counts": {
                    "scheduled": 1,
                    "queued": 0,
                    "running": 0,
                    "retrying": 0,
                    "succeeded": 1,
                    "failed": 0,
                    "cancelled": 0,
                },
            }
        ]
    }


def test_healthz_answers_without_the_broker_and_readyz_times_out(make_stack: MakeStack) -> None:
    # A Redis URL where nothing listens: only /healthz can answer 200.
    stack = make_stack("redis://127.0.0.1:1/0", worker=False, ready_timeout=0.5)
    response = stack.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    response = stack.client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["retry-after"] == "5"
    assert response.json()["detail"] == "the broker did not answer within 0.5s"


def test_a_broker_that_cannot_be_reached_is_503_without_its_details(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-directory" / "jobs.db"
    stack = make_stack(f"sqlite:///{missing}", worker=False)
    assert stack.client.get("/healthz").status_code == 200
    for method, path in [("GET", "/readyz"), ("GET", "/v1/jobs/x"), ("GET", "/v1/queues"),
                         ("POST", "/v1/tasks/add/jobs")]:  # fmt: skip
        response = stack.client.request(method, path, json={"args": [1]})
        assert response.status_code == 503, (path, response.text)
        assert response.headers["content-type"] == PROBLEM
        assert response.headers["retry-after"] == "5"
        assert "no-such-directory" not in response.text


def test_readyz_answers_200_when_the_broker_answers(stack: Stack) -> None:
    response = stack.client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_an_unknown_route_and_a_wrong_method_are_problems(sqlite_stack: Stack) -> None:
    response = sqlite_stack.client.get("/v2/nothing")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    response = sqlite_stack.client.put("/v1/jobs")
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM
    assert "GET" in response.headers["allow"]
