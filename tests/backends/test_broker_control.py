"""The Broker contract: status, waiting, cancelling, listing, counting, purging, raw payloads."""

from __future__ import annotations

import asyncio
import time

from dromos import Broker, JobState, JobStatus
from dromos.brokers.base import Delivery, Outcome
from tests.backends._support import request
from tests.backends.conftest import MakeBroker


async def _claim_one(broker: Broker) -> Delivery:
    [delivery] = await broker.claim(["default"], 1, 30.0)
    return delivery


async def _succeed(broker: Broker, result: bytes = b"null") -> str:
    await broker.enqueue([request()])
    d = await _claim_one(broker)
    await broker.settle([Outcome(d.job_id, d.attempt, JobState.SUCCEEDED, result=result)])
    return d.job_id


async def test_status_of_an_unknown_id_is_none(broker: Broker) -> None:
    assert await broker.status("0190b5b2-0000-7000-8000-000000000000") is None


async def test_cancel_of_an_unknown_id_is_none(broker: Broker) -> None:
    assert await broker.cancel("no-such-job") is None


async def test_cancel_of_a_queued_job_is_immediate(broker: Broker) -> None:
    req = request()
    await broker.enqueue([req])
    assert await broker.cancel(req.message.id) is JobState.CANCELLED
    assert await broker.claim(["default"], 1, 30.0) == []


async def test_cancel_of_a_scheduled_job_is_immediate(broker: Broker) -> None:
    req = request(delay=0.05)
    await broker.enqueue([req])
    assert await broker.cancel(req.message.id) is JobState.CANCELLED
    await asyncio.sleep(0.1)
    assert await broker.claim(["default"], 1, 30.0) == []


async def test_cancel_of_a_retrying_job_is_immediate(broker: Broker) -> None:
    await broker.enqueue([request()])
    d = await _claim_one(broker)
    await broker.settle([Outcome(d.job_id, d.attempt, JobState.RETRYING, eta=time.time() + 0.05)])
    assert await broker.cancel(d.job_id) is JobState.CANCELLED
    await asyncio.sleep(0.1)
    assert await broker.claim(["default"], 1, 30.0) == []


async def test_cancel_of_a_running_job_only_requests_it(broker: Broker) -> None:
    await broker.enqueue([request()])
    d = await _claim_one(broker)
    assert await broker.cancel(d.job_id) is JobState.RUNNING
    status = await broker.status(d.job_id)
    assert status is not None
    assert (status.state, status.cancel_requested) == (JobState.RUNNING, True)


async def test_cancel_of_an_ended_job_leaves_it_as_it_is(broker: Broker) -> None:
    job_id = await _succeed(broker, b"7")
    assert await broker.cancel(job_id) is JobState.SUCCEEDED
    status = await broker.status(job_id)
    assert status is not None
    assert (status.state, status.result) == (JobState.SUCCEEDED, 7)


async def test_wait_returns_the_status_once_the_job_ends(broker: Broker) -> None:
    await broker.enqueue([request()])
    d = await _claim_one(broker)
    waiting = asyncio.create_task(broker.wait(d.job_id, 10.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await broker.settle([Outcome(d.job_id, d.attempt, JobState.SUCCEEDED, result=b'"ok"')])
    status = await asyncio.wait_for(waiting, 10.0)
    assert status is not None
    assert (status.state, status.result) == (JobState.SUCCEEDED, "ok")


async def test_wait_returns_none_on_timeout(broker: Broker) -> None:
    req = request()
    await broker.enqueue([req])
    assert await broker.wait(req.message.id, 0.05) is None


async def test_wait_returns_none_for_an_unknown_job(broker: Broker) -> None:
    assert await broker.wait("no-such-job", 0.05) is None


async def test_thousands_of_calls_at_once_each_get_their_answer(broker: Broker) -> None:
    # A gateway under load: more status reads and waits at once than a client has
    # connections. Each waits its turn; none fails for want of a connection (on Redis,
    # two thirds of them did: redis-py refuses a connection past its pool's size).
    done, queued = await _succeed(broker), request()
    await broker.enqueue([queued])
    calls = [broker.status(done) for _ in range(2_000)]
    calls += [broker.wait(queued.message.id, 0.2) for _ in range(1_000)]
    answers = await asyncio.gather(*calls, return_exceptions=True)
    failed = [a for a in answers if isinstance(a, BaseException)]
    assert failed == [], f"{len(failed)} of 3,000 failed, the first: {failed[0]!r}"
    assert {a.state for a in answers[:2_000]} == {JobState.SUCCEEDED}  # type: ignore[union-attr]
    assert answers[2_000:] == [None] * 1_000  # still queued when each wait timed out


async def test_an_undecodable_payload_is_stored_as_it_is(broker: Broker) -> None:
    req = request(payload=b"\x00garbage")
    assert await broker.enqueue([req]) == [req.message.id]
    d = await _claim_one(broker)
    assert (d.job_id, d.payload) == (req.message.id, b"\x00garbage")


async def test_one_idempotency_key_names_one_job(broker: Broker) -> None:
    first, second = request(key="order-7"), request(key="order-7")
    assert await broker.enqueue([first]) == [first.message.id]
    assert await broker.enqueue([second]) == [first.message.id]
    assert await broker.status(second.message.id) is None


async def test_one_idempotency_key_in_one_batch_names_one_job(broker: Broker) -> None:
    first, second = request(key="k"), request(key="k")
    assert await broker.enqueue([first, second]) == [first.message.id] * 2
    assert len(await broker.jobs()) == 1


async def test_an_idempotency_key_is_free_again_after_its_window(broker: Broker) -> None:
    first = request(key="k", window=0.05)
    await broker.enqueue([first])
    await asyncio.sleep(0.1)
    second = request(key="k")
    assert await broker.enqueue([second]) == [second.message.id]


async def test_racing_enqueues_with_one_key_make_one_job(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    reqs = [request(key="race") for _ in range(20)]
    ids = await asyncio.gather(*(broker.enqueue([r]) for r in reqs))
    assert len({i for [i] in ids}) == 1
    assert len(await broker.jobs()) == 1


async def test_queues_counts_jobs_per_queue_and_state(broker: Broker) -> None:
    await broker.enqueue([request(queue="a"), request(queue="a"), request(queue="b", delay=60)])
    await broker.claim(["a"], 1, 30.0)
    counts = {q.queue: q.counts for q in await broker.queues()}
    assert counts == {"a": {"queued": 1, "running": 1}, "b": {"scheduled": 1}}


async def test_jobs_lists_newest_first(broker: Broker) -> None:
    reqs = [request() for _ in range(3)]
    await broker.enqueue(reqs)
    assert [j.id for j in await broker.jobs()] == [r.message.id for r in reversed(reqs)]


async def test_jobs_filters_by_state_task_and_queue(broker: Broker) -> None:
    a, b, c = request("add", queue="q1"), request("mul", queue="q1"), request("add", queue="q2")
    await broker.enqueue([a, b, c])
    await broker.claim(["q2"], 1, 30.0)
    assert [j.id for j in await broker.jobs(task="add")] == [c.message.id, a.message.id]
    assert [j.id for j in await broker.jobs(queue="q1")] == [b.message.id, a.message.id]
    assert [j.id for j in await broker.jobs(state=JobState.RUNNING)] == [c.message.id]
    assert [j.id for j in await broker.jobs(task="add", queue="q1")] == [a.message.id]


async def test_jobs_pages_with_a_before_cursor(broker: Broker) -> None:
    reqs = [request() for _ in range(5)]
    await broker.enqueue(reqs)
    newest_first = [r.message.id for r in reversed(reqs)]
    pages: list[list[str]] = []
    cursor = None
    for _ in range(4):  # bounded: 5 jobs in pages of 2
        page = [j.id for j in await broker.jobs(limit=2, before=cursor)]
        if not page:
            break
        pages.append(page)
        cursor = page[-1]
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:]]


async def test_purge_removes_only_ended_jobs_past_their_retention(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker(result_ttl=0.05, dead_letter_ttl=3600.0)
    done = await _succeed(broker)
    dead_req, waiting = request(), request(delay=0.01)
    await broker.enqueue([dead_req])
    d = await _claim_one(broker)
    await broker.settle([Outcome(d.job_id, d.attempt, JobState.FAILED)])
    await broker.enqueue([waiting])
    await asyncio.sleep(0.1)
    assert await broker.purge() == 1
    assert await broker.status(done) is None
    assert await broker.status(dead_req.message.id) is not None
    assert await broker.status(waiting.message.id) is not None


async def test_purge_keeps_ended_jobs_within_their_retention(broker: Broker) -> None:
    job_id = await _succeed(broker)
    assert await broker.purge() == 0
    assert await broker.status(job_id) is not None


async def test_a_due_job_once_ready_shows_no_eta(broker: Broker) -> None:
    req = request(delay=0.05)
    await broker.enqueue([req])
    await asyncio.sleep(0.1)
    assert await broker.claim(["elsewhere"], 1, 30.0) == []  # a claim readies due jobs
    status = await broker.status(req.message.id)
    assert status is not None
    assert (status.state, status.eta) == (JobState.QUEUED, None)


async def test_a_due_job_reads_queued_before_any_claim(broker: Broker) -> None:
    req = request(delay=0.05)
    await broker.enqueue([req])
    status = await broker.status(req.message.id)
    assert status is not None
    assert status.state is JobState.SCHEDULED
    assert status.eta is not None
    await asyncio.sleep(0.1)  # due now; no worker has claimed anything since
    status = await broker.status(req.message.id)
    assert status is not None
    assert (status.state, status.eta) == (JobState.QUEUED, None)


async def test_a_due_job_is_listed_and_counted_under_the_state_its_status_shows(
    broker: Broker,
) -> None:
    # Found by the differential test: SQLite, PostgreSQL and memory listed a due retry under
    # its stored state (retrying), while its status, and Redis's listing, said queued.
    due, later = request(delay=0.05), request(delay=3600.0)
    await broker.enqueue([due, later])
    await broker.enqueue([retried := request()])
    d = await _claim_one(broker)
    await broker.settle([Outcome(d.job_id, d.attempt, JobState.RETRYING, delay=0.0)])
    await asyncio.sleep(0.1)  # both due now; no claim has readied them

    def ids(statuses: list[JobStatus]) -> set[str]:
        return {s.id for s in statuses}

    queued = await broker.jobs(state=JobState.QUEUED)
    assert ids(queued) == {due.message.id, retried.message.id}
    assert {s.state for s in queued} == {JobState.QUEUED}
    assert ids(await broker.jobs(state=JobState.SCHEDULED)) == {later.message.id}
    assert await broker.jobs(state=JobState.RETRYING) == []
    [stats] = await broker.queues()  # the counts say the same
    assert stats.counts == {"queued": 2, "scheduled": 1}
