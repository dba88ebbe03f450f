"""``GET /v1/jobs/{id}/events``: Server-Sent Events until the job ends; on every broker."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

from tests.http.conftest import Stack

Event = dict[str, Any]


def _events(response: httpx.Response) -> Iterator[Event]:
    """The events of an SSE stream as they arrive (``data`` decoded), comments skipped."""
    event: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in event:
                yield {**event, "data": json.loads(event["data"])}
            event = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        event[name] = value[1:] if value.startswith(" ") else value


def test_the_stream_follows_a_job_to_its_end_with_progress_events(stack: Stack) -> None:
    job_id = stack.enqueue("steps", 3, 0.15).json()["id"]
    with stack.client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        events = list(_events(response))  # returns only because the server ends the stream
    names = [e["event"] for e in events]
    assert names[-1] == "succeeded"
    assert names[0] in ("queued", "running")
    assert "running" in names
    progress = [e for e in events if e["event"] == "progress"]
    assert progress, names
    # Snapshots, not a log: a poll may skip a step, but each progress event shows a real one.
    assert {e["data"]["message"] for e in progress} <= {f"step {i} of 3" for i in (1, 2, 3)}
    assert all(e["data"]["state"] == "running" for e in progress)
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
    assert all(e["data"]["id"] == job_id for e in events)
    assert events[-1]["data"]["result"] == 3
    fractions = [e["data"]["progress"] for e in events]
    assert fractions == sorted(fractions)


def test_the_stream_of_a_failing_job_ends_with_failed(stack: Stack) -> None:
    job_id = stack.enqueue("fail", "no ink").json()["id"]
    with stack.client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        events = list(_events(response))
    assert events[-1]["event"] == "failed"
    assert events[-1]["data"]["error"]["message"] == "no ink"


def test_the_stream_of_an_ended_job_is_one_event(stack: Stack) -> None:
    job_id = stack.enqueue("add", 1, headers={"Prefer": "wait=10"}).json()["id"]
    with stack.client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        events = list(_events(response))
    assert [e["event"] for e in events] == ["succeeded"]


def test_a_job_cancelled_while_watched_ends_the_stream(stack: Stack) -> None:
    job_id = stack.enqueue("add", 1, options={"delay": 60}).json()["id"]
    started = time.monotonic()
    with stack.client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        stream = _events(response)
        first = next(stream)
        assert first["event"] == "scheduled"
        assert stack.client.delete(f"/v1/jobs/{job_id}").status_code == 200
        rest = list(stream)
    assert [e["event"] for e in rest] == ["cancelled"]
    assert time.monotonic() - started < 5


def test_last_event_id_continues_the_numbering(stack: Stack) -> None:
    job_id = stack.enqueue("add", 1, headers={"Prefer": "wait=10"}).json()["id"]
    headers = {"Last-Event-ID": "41"}
    with stack.client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        events = list(_events(response))
    assert [e["id"] for e in events] == ["42"]
