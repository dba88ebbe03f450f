"""The Broker contract: settling runs, fencing by attempt, retrying, dead letters and replay."""

from __future__ import annotations

import asyncio
import time

from dromos import Broker, JobError, JobState
from dromos.brokers.base import Delivery, Lease, Outcome, ProgressUpdate
from tests.backends._support import eventually, request
from tests.backends.conftest import MakeBroker


def _error(attempt: int, message: str = "boom") -> JobError:
    return JobError(type="ValueError", message=message, traceback="tb", attempt=attempt)


async def _claim_one(broker: Broker, lease: float = 30.0) -> Delivery:
    [delivery] = await broker.claim(["default"], 1, lease)
    return delivery


async def _stale_and_current(broker: Broker) -> tuple[str, int]:
    """Enqueue a job, lose its first lease, re-claim it; return (id, current attempt)."""
    req = request()
    await broker.enqueue([req])
    await _claim_one(broker, lease=0.02)
    await asyncio.sleep(0.05)
    current = await _claim_one(broker)
    assert current.attempt == 2
    return req.message.id, current.attempt


async def test_succeeded_stores_the_result_and_full_progress(broker: Broker) -> None:
    await broker.enqueue([request()])
    d = await _claim_one(broker)
    outcome = Outcome(d.job_id, d.attempt, JobState.SUCCEEDED, result=b'{"url": "/a.png"}')
    assert await broker.settle([outcome]) == 1
    status = await broker.status(d.job_id)
    assert status is not None
    assert (status.state, status.result, status.progress) == (
        JobState.SUCCEEDED,
        {"url": "/a.png"},
        1.0,
    )
    assert status.error is None
    assert status.finished_at is not None


async def test_settle_from_a_stale_attempt_is_ignored(broker: Broker) -> None:
    job_id, _ = await _stale_and_current(broker)
    stale = Outcome(job_id, 1, JobState.SUCCEEDED, result=b'"stale"')
    assert await broker.settle([stale]) == 0
    status = await broker.status(job_id)
    assert status is not None
    assert (status.state, status.result, status.attempts) == (JobState.RUNNING, None, 2)


async def test_progress_from_a_stale_attempt_is_ignored(broker: Broker) -> None:
    job_id, attempt = await _stale_and_current(broker)
    await broker.progress([ProgressUpdate(job_id, attempt, 0.25, "current")])
    await broker.progress([ProgressUpdate(job_id, 1, 0.9, "stale")])
    status = await broker.status(job_id)
    assert status is not None
    assert (status.progress, status.message) == (0.25, "current")


async def test_extend_from_a_stale_attempt_does_not_extend_the_current_lease(
    broker: Broker,
) -> None:
    req = request()
    await broker.enqueue([req])
    await _claim_one(broker, lease=0.02)
    await asyncio.sleep(0.05)
    await _claim_one(broker, lease=0.2)  # attempt 2, short lease, then "dies" too
    reply = await broker.extend([Lease(req.message.id, 1)], 30.0)
    assert reply.lost == {req.message.id}
    await asyncio.sleep(0.3)
    assert (await _claim_one(broker)).attempt == 3


async def test_a_second_settle_of_one_run_is_ignored(broker: Broker) -> None:
    await broker.enqueue([request()])
    d = await _claim_one(broker)
    first = Outcome(d.job_id, d.attempt, JobState.SUCCEEDED, result=b"1")
    second = Outcome(d.job_id, d.attempt, JobState.FAILED, error=_error(d.attempt))
    assert await broker.settle([first]) == 1
    assert await broker.settle([second]) == 0
    status = await broker.status(d.job_id)
    assert status is not None
    assert (status.state, status.result) == (JobState.SUCCEEDED, 1)


async def test_progress_and_message_are_visible_while_running(broker: Broker) -> None:
    await broker.enqueue([request()])
    d = await _claim_one(broker)
    await broker.progress([ProgressUpdate(d.job_id, d.attempt, 0.5, "halfway")])
    status = await broker.status(d.job_id)
    assert status is not None
    assert (status.state, status.progress, status.message) == (JobState.RUNNING, 0.5, "halfway")


async def test_retrying_waits_for_its_eta_then_is_claimable(broker: Broker) -> None:
    await broker.enqueue([request()])
    d = await _claim_one(broker)
    eta = time.time() + 0.3
    outcome = Outcome(d.job_id, d.attempt, JobState.RETRYING, error=_error(1), eta=eta)
    assert await broker.settle([outcome]) == 1
    status = await broker.status(d.job_id)
    assert status is not None
    assert status.state is JobState.RETRYING
    assert status.eta is not None
    assert status.error == _error(1)
    assert await broker.claim(["default"], 1, 30.0) == []
    claimed: list[Delivery] = []

    async def claimable() -> bool:
        claimed.extend(await broker.claim(["default"], 1, 30.0))
        return bool(claimed)

    await eventually(claimable, timeout=5, what="the retrying job claimable")
    assert time.time() >= eta
    assert (claimed[0].attempt, claimed[0].failures) == (2, 1)


async def test_failed_is_a_dead_letter_keeping_every_error(broker: Broker) -> None:
    await broker.enqueue([request()])
    d = await _claim_one(broker)
    due = time.time() - 1.0  # already due: the next claim takes it on any broker's clock
    retry = Outcome(d.job_id, 1, JobState.RETRYING, error=_error(1, "first"), eta=due)
    await broker.settle([retry])
    d = await _claim_one(broker)
    await broker.settle([Outcome(d.job_id, 2, JobState.FAILED, error=_error(2, "second"))])
    status = await broker.status(d.job_id)
    assert status is not None
    assert status.state is JobState.FAILED
    assert [e.message for e in status.errors] == ["first", "second"]
    assert status.error == _error(2, "second")
    assert [j.id for j in await broker.jobs(state=JobState.FAILED)] == [d.job_id]


async def _dead_letter(broker: Broker) -> str:
    await broker.enqueue([request()])
    d = await _claim_one(broker)
    await broker.settle([Outcome(d.job_id, d.attempt, JobState.FAILED, error=_error(1))])
    return d.job_id


async def test_replay_requeues_a_dead_letter_with_a_fresh_budget(broker: Broker) -> None:
    job_id = await _dead_letter(broker)
    assert await broker.replay([job_id]) == [job_id]
    status = await broker.status(job_id)
    assert status is not None
    assert status.state is JobState.QUEUED
    assert status.errors == [_error(1)]  # the history is kept
    d = await _claim_one(broker)
    assert (d.job_id, d.attempt, d.failures) == (job_id, 2, 0)


async def test_replay_without_ids_replays_every_dead_letter(broker: Broker) -> None:
    ids = {await _dead_letter(broker) for _ in range(3)}
    assert set(await broker.replay()) == ids
    assert await broker.jobs(state=JobState.FAILED) == []


async def test_replay_ignores_jobs_that_are_not_dead_letters(broker: Broker) -> None:
    req = request()
    await broker.enqueue([req])
    assert await broker.replay([req.message.id, "no-such-job"]) == []


async def test_concurrent_replays_move_a_dead_letter_once(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    job_id = await _dead_letter(broker)
    results = await asyncio.gather(*(broker.replay([job_id]) for _ in range(5)))
    assert sorted(len(moved) for moved in results) == [0, 0, 0, 0, 1]
    assert len(await broker.claim(["default"], 10, 30.0)) == 1


async def test_cancelled_outcome_ends_a_running_job(broker: Broker) -> None:
    await broker.enqueue([request()])
    d = await _claim_one(broker)
    await broker.settle([Outcome(d.job_id, d.attempt, JobState.CANCELLED)])
    status = await broker.status(d.job_id)
    assert status is not None
    assert status.state is JobState.CANCELLED
