"""What a new job's Redis hash holds: only what its key does not imply (redis.lua's enqueue).

Its id and queue are in its key, and its counts (attempt, failures, recoveries) and progress
are 0 until first written, so the enqueue leaves them out: each field is server time and
memory per queued job. These tests pin that the hash stays that small and that every reader
(the status, a claim, a retry, a listing, a done message) still sees the whole job.

On the shared server and on the session's Redis Cluster, under a prefix of each test's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio

from dromos.brokers.base import Broker, Outcome
from dromos.brokers.redis import RedisBroker
from dromos.job import JobError, JobState, JobStatus
from tests.backends._support import request
from tests.backends.conftest import BACKENDS, MakeBroker, Target

NEW_JOB_FIELDS = {"task", "state", "priority", "seq", "payload", "created_at"}


@pytest.fixture(params=["redis", "redis-cluster"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    with BACKENDS[request.param](tmp_path, "job_hash") as target:
        yield target


async def _fields(broker: Broker, queue: str, job_id: str) -> set[str]:
    assert isinstance(broker, RedisBroker)
    client: redis.asyncio.Redis = (await broker._state()).client
    raw = await client.hgetall(f"{broker._tag(queue)}:job:{job_id}")
    return {name.decode() for name in raw}


async def _status(broker: Broker, job_id: str) -> JobStatus:
    status = await broker.status(job_id)
    assert status is not None
    return status


async def test_a_new_job_stores_only_what_its_key_does_not_imply(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    [job_id] = await broker.enqueue([request("t", queue="mail", priority=3)])
    assert await _fields(broker, "mail", job_id) == NEW_JOB_FIELDS
    status = await _status(broker, job_id)
    assert (status.id, status.queue, status.task) == (job_id, "mail", "t")
    assert (status.state, status.attempts, status.progress) == (JobState.QUEUED, 0, 0.0)
    assert status.priority == 3
    # A second producer, which never saw the job, reads the same.
    assert await _status(await make_broker(), job_id) == status
    [listed] = await broker.jobs(queue="mail")
    assert listed == status


async def test_the_counts_left_out_start_from_zero(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    [job_id] = await broker.enqueue([request()])
    [first] = await broker.claim(["default"], 10, 30.0)
    assert (first.job_id, first.attempt, first.failures) == (job_id, 1, 0)
    retry = Outcome(
        job_id,
        first.attempt,
        JobState.RETRYING,
        error=JobError(type="E", message="again"),
        delay=0.0,
    )
    await broker.settle([retry])
    [second] = await broker.claim(["default"], 10, 30.0)
    assert (second.attempt, second.failures) == (2, 1)
    await broker.settle([Outcome(job_id, 2, JobState.SUCCEEDED, b"1")])
    status = await _status(broker, job_id)
    assert (status.id, status.queue, status.state) == (job_id, "default", JobState.SUCCEEDED)
    assert (status.attempts, status.progress, status.result) == (2, 1.0, 1)
