"""``/v1/batches``: submit a batch, follow it to its end, its callback; bad input; both brokers."""

from __future__ import annotations

import time
from typing import Any

from tests.http.conftest import Stack
from tests.http.test_events import _events


def _wait_done(stack: Stack, location: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = stack.client.get(location).json()
        if body["done"]:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def test_a_batch_runs_and_its_callback_gets_the_summary(stack: Stack) -> None:
    jobs = [{"task": "add", "args": [i, 1]} for i in range(5)]
    jobs.append({"task": "fail", "args": ["no ink"], "options": {"priority": 3}})
    answer = stack.client.post(
        "/v1/batches",
        json={"jobs": jobs, "on_complete": {"task": "batch_done", "kwargs": {"label": "b: "}}},
    )
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert answer.headers["location"] == f"/v1/batches/{body['id']}"
    assert (body["total"], len(body["jobs"])) == (6, 6)
    done = _wait_done(stack, answer.headers["location"])
    assert (done["succeeded"], done["failed"], done["ended"], done["progress"]) == (5, 1, 6, 1.0)
    results = [stack.status(j)["result"] for j in done["jobs"][:5]]
    assert results == [1, 2, 3, 4, 5]  # in the order submitted
    callback = stack.wait_for(done["callback_id"], lambda s: s["state"] == "succeeded")
    assert callback["result"] == "b: 5/6 ok, 1 failed"


def test_the_event_stream_ends_with_done(stack: Stack) -> None:
    jobs = [{"task": "steps", "args": [2, 0.05]} for _ in range(3)]
    location = stack.client.post("/v1/batches", json={"jobs": jobs}).headers["location"]
    with stack.client.stream("GET", f"{location}/events") as response:
        assert response.status_code == 200
        events = list(_events(response))  # returns because the server ends the stream
    assert events[-1]["event"] == "done"
    assert events[-1]["data"]["ended"] == 3
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))


def test_bad_jobs_are_refused_by_their_place_and_nothing_is_queued(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    post = stack.client.post
    bad_args = [{"task": "add", "args": [1]}, {"task": "add", "args": ["x", 2]}]
    answer = post("/v1/batches", json={"jobs": bad_args})
    assert answer.status_code == 422, answer.text
    assert {e["field"] for e in answer.json()["errors"]} == {"jobs.1.args.x"}
    answer = post("/v1/batches", json={"jobs": [{"task": "add", "args": [1]}, {"task": "nope"}]})
    assert answer.status_code == 422
    assert [e["field"] for e in answer.json()["errors"]] == ["jobs.1.task"]
    answer = post("/v1/batches", json={"jobs": [{"task": "add", "args": [1]}],
                                       "on_complete": {"task": "add"}})  # fmt: skip
    assert answer.status_code == 422  # add cannot take the summary
    assert answer.json()["errors"][0]["field"].startswith("on_complete")
    assert post("/v1/batches", json={"jobs": []}).status_code == 422
    assert post("/v1/batches", content=b"{nope", headers={"content-type": "application/json"}
                ).status_code == 400  # fmt: skip
    assert stack.counts() == {}  # nothing was queued by any of them
    assert stack.client.get("/v1/batches/nope").status_code == 404
    assert stack.client.get("/v1/batches/nope/events").status_code == 404
