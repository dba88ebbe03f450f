"""The Broker contract for completion webhooks: the outbox entry is written by the step that
ends a job, leased to one deliverer at a time, and every attempt is kept on the job."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from dromos import Broker, JobError, JobState
from dromos.brokers.base import Outcome
from dromos.job import WebhookAttempt
from tests.backends._support import request

URL = "https://hooks.example/done"


async def _run_to(broker: Broker, state: JobState, callback: str | None = URL) -> str:
    """Enqueue a job with a callback, claim it and end it in ``state``; return its id."""
    req = request(callback=callback)
    await broker.enqueue([req])
    [d] = await broker.claim(["default"], 1, 30.0)
    error = None if state is JobState.SUCCEEDED else JobError(type="E", message="m", attempt=1)
    result = b"7" if state is JobState.SUCCEEDED else None
    await broker.settle([Outcome(d.job_id, d.attempt, state, result=result, error=error)])
    return req.message.id


def _attempt(status: int | None, *, delivered: bool = False) -> WebhookAttempt:
    return WebhookAttempt(
        at=datetime.now(UTC), status=status, error=None if delivered else "refused",
        delivered=delivered, last=delivered,
    )  # fmt: skip


async def test_ending_a_job_with_a_callback_makes_its_delivery_due(broker: Broker) -> None:
    ended = []
    for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        ended.append(await _run_to(broker, state))
    await _run_to(broker, JobState.SUCCEEDED, callback=None)  # no callback: no delivery
    due = await broker.webhooks_due(10, 30.0)
    assert sorted(d.job_id for d in due) == sorted(ended)
    assert {d.url for d in due} == {URL}
    assert all(d.attempts == 0 and abs(d.since - time.time()) < 60 for d in due)


async def test_a_job_still_waiting_or_retrying_has_no_delivery_due(broker: Broker) -> None:
    await broker.enqueue([request(callback=URL), request(callback=URL, delay=60)])
    [d] = await broker.claim(["default"], 1, 30.0)
    error = JobError(type="E", message="m", attempt=1)
    retry = Outcome(d.job_id, d.attempt, JobState.RETRYING, error=error, eta=time.time() + 60)
    await broker.settle([retry])
    assert await broker.webhooks_due(10, 30.0) == []


async def test_cancelling_a_waiting_job_makes_its_delivery_due(broker: Broker) -> None:
    req = request(callback=URL)
    await broker.enqueue([req])
    assert await broker.cancel(req.message.id) is JobState.CANCELLED
    [due] = await broker.webhooks_due(10, 30.0)
    assert due.job_id == req.message.id


async def test_a_leased_delivery_is_not_handed_out_again_until_its_lease_ends(
    broker: Broker,
) -> None:
    job_id = await _run_to(broker, JobState.SUCCEEDED)
    [first] = await broker.webhooks_due(10, 0.3)
    assert first.job_id == job_id
    assert await broker.webhooks_due(10, 0.3) == []  # leased: a second deliverer gets nothing
    await asyncio.sleep(0.4)
    [again] = await broker.webhooks_due(10, 30.0)  # the first deliverer died: due again
    assert again.job_id == job_id


async def test_concurrent_deliverers_never_share_a_delivery(broker: Broker) -> None:
    ids = {await _run_to(broker, JobState.SUCCEEDED) for _ in range(20)}
    batches = await asyncio.gather(*(broker.webhooks_due(3, 30.0) for _ in range(10)))
    got = [d.job_id for batch in batches for d in batch]
    assert len(got) == len(set(got))
    assert set(got) <= ids


async def test_attempts_are_kept_on_the_job_and_a_retry_comes_due_at_its_time(
    broker: Broker,
) -> None:
    job_id = await _run_to(broker, JobState.SUCCEEDED)
    await broker.webhooks_due(10, 30.0)
    await broker.webhook_attempted(job_id, _attempt(503), time.time() + 0.3)
    assert await broker.webhooks_due(10, 30.0) == []
    await asyncio.sleep(0.4)
    [due] = await broker.webhooks_due(10, 30.0)
    assert (due.job_id, due.attempts) == (job_id, 1)
    await broker.webhook_attempted(job_id, _attempt(200, delivered=True), None)
    await asyncio.sleep(0.05)
    assert await broker.webhooks_due(10, 30.0) == []  # delivered: never due again
    status = await broker.status(job_id)
    assert status is not None
    assert [(a.status, a.delivered, a.last) for a in status.webhooks] == [
        (503, False, False),
        (200, True, True),
    ]
    assert status.result == 7  # the job itself is as it was


async def test_a_job_dead_lettered_by_a_claim_makes_its_delivery_due(broker: Broker) -> None:
    req = request(callback=URL)
    await broker.enqueue([req])
    for _ in range(broker.options.max_recoveries + 1):
        await broker.claim(["default"], 1, 0.02)
        await asyncio.sleep(0.05)
    await broker.claim(["default"], 1, 30.0)  # recovers: lost too often, dead-lettered
    status = await broker.status(req.message.id)
    assert status is not None
    assert status.state is JobState.FAILED
    [due] = await broker.webhooks_due(10, 30.0)
    assert due.job_id == req.message.id
