"""``options.depends_on`` over HTTP: accepted (the job waits for its dependencies), and 422
naming the option for an id the broker does not know (nothing queued); both brokers."""

from __future__ import annotations

from datetime import datetime

from tests.http.conftest import Stack


def test_depends_on_waits_for_the_jobs_it_names_and_refuses_unknown_ones(stack: Stack) -> None:
    first = stack.enqueue("add", 1, 2)
    assert first.status_code == 202, first.text
    dependency = first.json()["id"]
    answer = stack.enqueue("add", 40, 2, options={"depends_on": [dependency]})
    assert answer.status_code in (200, 202), answer.text
    dependent = answer.json()["id"]
    stack.wait_for(dependency, lambda s: s["state"] == "succeeded")
    final = stack.wait_for(dependent, lambda s: s["state"] == "succeeded")
    assert final["result"] == 42
    ended = datetime.fromisoformat(stack.status(dependency)["finished_at"])
    assert datetime.fromisoformat(final["started_at"]) >= ended

    before = stack.counts()
    unknown = "0193a4f0-0000-7000-8000-000000000000"
    refused = stack.enqueue("add", 1, options={"depends_on": [dependency, unknown]})
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert problem["type"] == "urn:dromos:problem:unknown-dependency"
    assert unknown in problem["detail"]
    assert [e["field"] for e in problem["errors"]] == ["options.depends_on.1"]
    assert stack.counts() == before  # nothing queued

    batch = stack.client.post(
        "/v1/batches",
        json={"jobs": [{"task": "add", "args": [1]},
                       {"task": "add", "args": [2], "options": {"depends_on": [unknown]}}]},
    )  # fmt: skip
    assert batch.status_code == 422, batch.text
    assert [e["field"] for e in batch.json()["errors"]] == ["jobs.1.options.depends_on.0"]
    with_delay = stack.enqueue("add", 1, options={"depends_on": [dependency], "delay": 5})
    assert with_delay.status_code == 422, with_delay.text
    assert stack.counts() == before
