"""The Broker contract, called directly: enqueue, claim, order, schedule, leases, release."""

from __future__ import annotations

import asyncio
import time

from dromos import Broker, JobState
from dromos.brokers.base import Lease, Outcome
from tests.backends._support import eta_of, eventually, request
from tests.backends.conftest import MakeBroker


async def test_claim_returns_the_enqueued_envelope_as_attempt_one(broker: Broker) -> None:
    req = request(args=[1, 2])
    assert await broker.enqueue([req]) == [req.message.id]
    [delivery] = await broker.claim(["default"], 10, 30.0)
    assert (delivery.job_id, delivery.attempt, delivery.failures) == (req.message.id, 1, 0)
    assert delivery.payload == req.payload


async def test_enqueue_returns_ids_in_request_order(broker: Broker) -> None:
    reqs = [request() for _ in range(5)]
    assert await broker.enqueue(reqs) == [r.message.id for r in reqs]


async def test_enqueued_job_is_queued_with_its_task_and_queue(broker: Broker) -> None:
    req = request("resize", queue="images", priority=3)
    await broker.enqueue([req])
    status = await broker.status(req.message.id)
    assert status is not None
    assert (status.state, status.task, status.queue, status.priority, status.attempts) == (
        JobState.QUEUED,
        "resize",
        "images",
        3,
        0,
    )


async def test_claim_only_takes_from_the_named_queues(broker: Broker) -> None:
    other = request(queue="other")
    await broker.enqueue([other])
    assert await broker.claim(["default"], 10, 30.0) == []
    assert [d.job_id for d in await broker.claim(["default", "other"], 10, 30.0)] == [
        other.message.id
    ]


async def test_higher_priority_is_claimed_first(broker: Broker) -> None:
    low, high, mid = request(priority=0), request(priority=9), request(priority=5)
    await broker.enqueue([low, high, mid])
    claimed = await broker.claim(["default"], 10, 30.0)
    assert [d.job_id for d in claimed] == [r.message.id for r in (high, mid, low)]


async def test_priority_orders_across_queues(broker: Broker) -> None:
    a, b = request(queue="a", priority=1), request(queue="b", priority=7)
    await broker.enqueue([a, b])
    [first] = await broker.claim(["a", "b"], 1, 30.0)
    assert first.job_id == b.message.id


async def test_equal_priorities_are_claimed_in_enqueue_order(broker: Broker) -> None:
    reqs = [request(priority=2) for _ in range(6)]
    await broker.enqueue(reqs[:3])
    await broker.enqueue(reqs[3:])
    order = []
    for _ in reqs:
        [delivery] = await broker.claim(["default"], 1, 30.0)
        order.append(delivery.job_id)
    assert order == [r.message.id for r in reqs]


async def test_claim_respects_its_limit(broker: Broker) -> None:
    await broker.enqueue([request() for _ in range(5)])
    assert len(await broker.claim(["default"], 3, 30.0)) == 3
    assert len(await broker.claim(["default"], 3, 30.0)) == 2


async def test_a_claimed_job_is_not_claimed_again(broker: Broker) -> None:
    await broker.enqueue([request()])
    assert len(await broker.claim(["default"], 10, 30.0)) == 1
    assert await broker.claim(["default"], 10, 30.0) == []


async def test_concurrent_claims_never_hand_out_a_job_twice(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    reqs = [request() for _ in range(40)]
    await broker.enqueue(reqs)
    batches = await asyncio.gather(*(broker.claim(["default"], 3, 30.0) for _ in range(20)))
    claimed = [d.job_id for batch in batches for d in batch]
    assert sorted(claimed) == sorted(r.message.id for r in reqs)


async def test_claimed_job_is_running_with_attempt_counted(broker: Broker) -> None:
    req = request()
    await broker.enqueue([req])
    await broker.claim(["default"], 1, 30.0)
    status = await broker.status(req.message.id)
    assert status is not None
    assert (status.state, status.attempts) == (JobState.RUNNING, 1)
    assert status.started_at is not None


async def test_a_job_with_a_future_eta_is_scheduled(broker: Broker) -> None:
    req = request(delay=30)
    await broker.enqueue([req])
    status = await broker.status(req.message.id)
    assert status is not None
    assert status.state is JobState.SCHEDULED
    assert status.eta is not None
    assert abs(status.eta.timestamp() - eta_of(req)) < 0.01


async def test_a_scheduled_job_is_not_claimed_before_its_eta(broker: Broker) -> None:
    req = request(delay=0.4)
    await broker.enqueue([req])
    claimed_at = None

    async def claimed() -> bool:
        nonlocal claimed_at
        if await broker.claim(["default"], 1, 30.0):
            claimed_at = time.time()
            return True
        return False

    await eventually(claimed, timeout=5, what="the scheduled job claimable")
    assert claimed_at is not None
    assert claimed_at >= eta_of(req)


async def test_an_expired_lease_is_recovered_with_attempt_plus_one(broker: Broker) -> None:
    req = request()
    await broker.enqueue([req])
    await broker.claim(["default"], 1, 0.05)
    await asyncio.sleep(0.1)  # the worker "died": nobody extends the lease
    [again] = await broker.claim(["default"], 1, 30.0)
    assert (again.job_id, again.attempt, again.failures) == (req.message.id, 2, 0)
    status = await broker.status(req.message.id)
    assert status is not None
    assert [e.type for e in status.errors] == ["WorkerLost"]
    assert status.errors[0].attempt == 1


async def test_a_live_lease_is_not_recovered(broker: Broker) -> None:
    await broker.enqueue([request()])
    await broker.claim(["default"], 1, 30.0)
    assert await broker.claim(["default"], 1, 30.0) == []


async def test_a_job_lost_more_than_max_recoveries_times_is_failed_as_poison(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker(max_recoveries=2)
    req = request()
    await broker.enqueue([req])
    for attempt in (1, 2, 3):
        [delivery] = await broker.claim(["default"], 1, 0.02)
        assert delivery.attempt == attempt
        await asyncio.sleep(0.05)
    assert await broker.claim(["default"], 1, 30.0) == []
    status = await broker.status(req.message.id)
    assert status is not None
    assert status.state is JobState.FAILED
    assert [e.type for e in status.errors] == ["WorkerLost"] * 3 + ["Poison"]
    assert status.error is not None
    assert status.error.type == "Poison"


async def test_extend_keeps_a_lease_alive(broker: Broker) -> None:
    req = request()
    await broker.enqueue([req])
    [delivery] = await broker.claim(["default"], 1, 0.2)
    reply = await broker.extend([Lease(delivery.job_id, delivery.attempt)], 30.0)
    assert reply.lost == frozenset()
    await asyncio.sleep(0.3)
    assert await broker.claim(["default"], 1, 30.0) == []


async def test_extend_reports_leases_that_were_lost(broker: Broker) -> None:
    req = request()
    await broker.enqueue([req])
    await broker.claim(["default"], 1, 0.02)
    await asyncio.sleep(0.05)
    await broker.claim(["default"], 1, 30.0)  # attempt 2 now holds it
    reply = await broker.extend([Lease(req.message.id, 1), Lease("no-such-job", 1)], 30.0)
    assert reply.lost == {req.message.id, "no-such-job"}


async def test_extend_reports_a_job_that_ended_as_lost(broker: Broker) -> None:
    req = request()
    await broker.enqueue([req])
    [d] = await broker.claim(["default"], 1, 30.0)
    await broker.settle([Outcome(d.job_id, d.attempt, JobState.SUCCEEDED, result=b"1")])
    reply = await broker.extend([Lease(d.job_id, d.attempt)], 30.0)
    assert reply.lost == {d.job_id}


async def test_extend_reports_cancellation_requested_while_running(broker: Broker) -> None:
    keep, stop = request(), request()
    await broker.enqueue([keep, stop])
    claimed = await broker.claim(["default"], 2, 30.0)
    assert await broker.cancel(stop.message.id) is JobState.RUNNING
    reply = await broker.extend([Lease(d.job_id, d.attempt) for d in claimed], 30.0)
    assert reply.cancel == {stop.message.id}
    assert reply.lost == frozenset()


async def test_release_hands_a_job_back_without_counting_a_failure(broker: Broker) -> None:
    req = request()
    await broker.enqueue([req])
    [d] = await broker.claim(["default"], 1, 30.0)
    await broker.release([Lease(d.job_id, d.attempt)])
    status = await broker.status(req.message.id)
    assert status is not None
    assert status.state is JobState.QUEUED
    assert status.errors == []
    [again] = await broker.claim(["default"], 1, 30.0)
    assert (again.job_id, again.attempt, again.failures) == (req.message.id, 2, 0)


async def test_a_released_job_keeps_its_place_in_the_queue(broker: Broker) -> None:
    first, second = request(), request()
    await broker.enqueue([first, second])
    [d] = await broker.claim(["default"], 1, 30.0)
    await broker.release([Lease(d.job_id, d.attempt)])
    [again] = await broker.claim(["default"], 1, 30.0)
    assert again.job_id == first.message.id


async def test_release_from_a_stale_attempt_is_ignored(broker: Broker) -> None:
    req = request()
    await broker.enqueue([req])
    await broker.claim(["default"], 1, 0.02)
    await asyncio.sleep(0.05)
    await broker.claim(["default"], 1, 30.0)
    await broker.release([Lease(req.message.id, 1)])
    status = await broker.status(req.message.id)
    assert status is not None
    assert (status.state, status.attempts) == (JobState.RUNNING, 2)


async def test_wait_for_work_returns_at_once_when_work_is_ready(broker: Broker) -> None:
    await broker.enqueue([request()])
    # Bounded well below the timeout asked for: returning only at the timeout is the bug.
    await asyncio.wait_for(broker.wait_for_work(["default"], 60.0), 5.0)


async def test_wait_for_work_is_woken_by_an_enqueue(broker: Broker) -> None:
    waiting = asyncio.create_task(broker.wait_for_work(["default"], 60.0))
    await asyncio.sleep(0.05)
    await broker.enqueue([request()])
    await asyncio.wait_for(waiting, 5.0)


async def test_wait_for_work_wakes_for_a_scheduled_eta(broker: Broker) -> None:
    req = request(delay=0.2)
    await broker.enqueue([req])
    await asyncio.wait_for(broker.wait_for_work(["default"], 60.0), 5.0)


async def test_wait_for_work_after_an_empty_claim_is_woken_by_an_enqueue(broker: Broker) -> None:
    # An idle worker's cycle: wait (subscribes where there are pushes), claim nothing, wait
    # again. A broker that trusts what its claim saw must still wake for work enqueued since.
    await broker.wait_for_work(["default"], 0.05)
    assert await broker.claim(["default"], 10, 30.0) == []
    await broker.enqueue([request()])
    await asyncio.wait_for(broker.wait_for_work(["default"], 60.0), 5.0)
    assert len(await broker.claim(["default"], 10, 30.0)) == 1


async def test_wait_for_work_after_a_claim_wakes_when_a_delayed_job_comes_due(
    broker: Broker,
) -> None:
    await broker.wait_for_work(["default"], 0.05)
    await broker.enqueue([request(delay=0.3)])
    assert await broker.claim(["default"], 10, 30.0) == []  # not yet due
    await asyncio.wait_for(broker.wait_for_work(["default"], 60.0), 5.0)

    async def claimed() -> bool:
        return bool(await broker.claim(["default"], 10, 30.0))

    await eventually(claimed, 5.0, "the delayed job claimed")


async def test_wait_for_work_does_not_spin_on_work_in_other_queues(broker: Broker) -> None:
    await broker.enqueue([request(queue="elsewhere")])
    returns = 0
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # bounded: at most ~0.5 s plus one wait
        await broker.wait_for_work(["default"], max(0.0, deadline - time.monotonic()))
        returns += 1
    assert returns <= 10  # a spurious return now and then is allowed; a busy loop is not


async def test_one_enqueue_keeps_its_order_with_keys_and_callbacks_among_its_jobs(
    broker: Broker,
) -> None:
    # Found by the differential test: SQLite inserted the jobs with an idempotency key (or a
    # callback) after the others of the same call, so they were claimed last.
    reqs = [
        request(key="k1"), request(), request(callback="http://127.0.0.1:9/hook"), request(),
        request(key="k2"),
    ]  # fmt: skip
    await broker.enqueue(reqs)
    claimed = await broker.claim(["default"], 10, 30.0)
    assert [d.job_id for d in claimed] == [r.message.id for r in reqs]
