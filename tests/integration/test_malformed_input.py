"""Malformed jobs on the queue are dead-lettered with their reason; the worker goes on (#6)."""

from __future__ import annotations

from typing import Any

import pytest

from dromos import JobState
from dromos.brokers.base import EnqueueRequest
from dromos.message import Message, encode, new_job_id, utcnow
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

PICKUP = 1.0  # seconds within which an idle worker must run a new good job (RELIABILITY #6)


def _message(task: str = "noop", **fields: Any) -> Message:
    return Message(id=new_job_id(), task=task, created_at=utcnow(), **fields)


def _raw(payload: bytes) -> EnqueueRequest:
    """Bytes as a foreign producer might write them, indexed under a valid-looking message."""
    return EnqueueRequest(_message(args=[1]), payload)


def _sent(message: Message) -> EnqueueRequest:
    return EnqueueRequest(message, encode(message))


# reason -> (request, error type, a phrase of the error message)
CASES = {
    "random bytes": (_raw(b"\x00garbage\xff\xfe"), "DecodeError", "undecodable envelope"),
    "JSON missing fields": (_raw(b'{"v": 1, "task": "noop"}'), "DecodeError", "missing"),
    "JSON of the wrong shape": (_raw(b"[1, 2, 3]"), "DecodeError", "undecodable envelope"),
    "envelope v99": (_sent(_message(v=99, args=[1])), "DecodeError", "version 99"),
    "unknown task": (_sent(_message("no_such_task")), "UnknownTask", "no_such_task"),
    "invalid arguments": (
        _sent(_message(args=["not a number"])),
        "InvalidArguments",
        "for task 'noop'",
    ),
    "missing argument": (_sent(_message()), "InvalidArguments", "for task 'noop'"),
}


def test_malformed_jobs_are_dead_lettered_with_their_reason_and_the_worker_goes_on(
    cluster: Cluster,
) -> None:
    worker = cluster.start("-c", "4")
    cluster.wait_for_boots(1)
    broker = cluster.app.broker
    ids = cluster.call(broker.enqueue, [request for request, _, _ in CASES.values()])

    for job_id, (case, (_, kind, phrase)) in zip(ids, CASES.items(), strict=True):
        status = cluster.call(broker.wait, job_id, 10.0)
        assert status is not None, f"{case}: not ended"
        assert status.state is JobState.FAILED, case
        assert status.error is not None
        assert (status.error.type, status.attempts) == (kind, 1), case
        assert phrase in status.error.message, (case, status.error.message)
    dead = {s.id for s in cluster.call(broker.jobs, state=JobState.FAILED)}
    assert dead == set(ids)
    assert cluster.ledger.runs("ok") == []  # none of them reached a task
    assert worker.poll() is None

    job = cluster.task("noop").enqueue(7)
    assert job.result(timeout=PICKUP) == 7
    assert worker.poll() is None
