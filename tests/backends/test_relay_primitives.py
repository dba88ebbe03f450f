"""Relay mode: the contract between a store and the RabbitMQ broker (docs/design/rabbitmq.md §3).

RabbitMQ will carry "job X is ready now"; the store keeps the job. These tests pin the store's
side: what is handed to the relay to publish, when, and what a claim by id answers. They run
on the memory store, the reference; SQLite, PostgreSQL and Redis join through ``STORES`` as
they implement the primitives (steps 2 and 3 of the design's order of work).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from dromos import JobState
from dromos.brokers.base import (
    DEPENDS_ON_HEADER,
    BatchRecord,
    Broker,
    Delivery,
    EnqueueRequest,
    Gone,
    Lease,
    Missing,
    Outcome,
)
from dromos.errors import ConfigurationError
from dromos.message import Message, encode, new_job_id, utcnow
from tests.backends._support import request
from tests.backends.conftest import BACKENDS, MakeBroker, Target

#: the stores with a relay mode so far
STORES = ["memory", "sqlite", "postgres", "redis", "redis-cluster"]


@pytest.fixture(params=STORES)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    with BACKENDS[request.param](tmp_path, "relay") as target:
        yield target


@pytest.fixture
async def store(make_broker: MakeBroker) -> Broker:
    return await make_broker(relay=True, max_recoveries=1)


def _depending(on: str) -> EnqueueRequest:
    base = request()
    message = base.message
    message.headers[DEPENDS_ON_HEADER] = on
    return EnqueueRequest(message, encode(message), base.idempotency_window)


async def _relayed(store: Broker, hold: float = 30.0) -> list[str]:
    return [j.job_id for j in (await store.relay_due(100, hold)).jobs]


async def test_the_enqueuer_holds_what_it_must_publish(store: Broker) -> None:
    ready, later = request(), request(delay=60)
    recorded = await store.enqueue_unsent([ready, later], hold=30.0)
    assert [(r.job_id, r.publish) for r in recorded] == [
        (ready.message.id, True),
        (later.message.id, False),
    ]
    assert recorded[0].next_due is None
    assert recorded[1].next_due is not None
    # (A Redis Cluster's nodes each read their own clock: a millisecond or so apart.)
    assert 55 < recorded[1].next_due - (await store.relay_due(100, 30.0)).now <= 60.05
    assert await _relayed(store) == []  # held by the enqueuer, or not due


async def test_a_job_published_is_never_relayed_and_one_not_published_is_after_its_hold(
    store: Broker,
) -> None:
    sent, lost = request(), request()
    await store.enqueue_unsent([sent, lost], hold=0.2)
    await store.mark_sent([sent.message.id])
    await asyncio.sleep(0.25)
    assert await _relayed(store, hold=30.0) == [lost.message.id]  # the enqueuer died
    assert await _relayed(store, hold=30.0) == []  # now held by this relay pass


async def test_a_known_idempotency_key_records_nothing_to_publish(store: Broker) -> None:
    first = request(key="order-7")
    again = request(key="order-7")
    [a] = await store.enqueue_unsent([first], hold=30.0)
    [b] = await store.enqueue_unsent([again], hold=30.0)
    assert (a.job_id, a.publish) == (first.message.id, True)
    assert (b.job_id, b.publish) == (first.message.id, False)


async def test_the_relay_takes_ready_jobs_by_priority_then_age_up_to_its_limit(
    store: Broker,
) -> None:
    low, high, mid1, mid2 = request(priority=-1), request(priority=5), request(), request()
    await store.enqueue_unsent([low, high, mid1, mid2], hold=0.0)
    batch = await store.relay_due(3, 30.0)
    ids = [high.message.id, mid1.message.id, mid2.message.id]
    assert [j.job_id for j in batch.jobs] == ids
    assert batch.jobs[0].priority == 5
    assert batch.jobs[0].payload == high.payload
    assert batch.next_due == batch.now  # more is ready: come back at once
    assert await _relayed(store) == [low.message.id]


async def test_delayed_jobs_and_retries_are_relayed_when_due(store: Broker) -> None:
    later = request(delay=0.3)
    now_job = request()
    await store.enqueue_unsent([later, now_job], hold=30.0)
    [claimed] = await store.claim_ids([now_job.message.id], 30.0)
    assert isinstance(claimed, Delivery)
    retry_at = (await store.relay_due(100, 30.0)).now + 0.3
    outcome = Outcome(claimed.job_id, claimed.attempt, JobState.RETRYING, eta=retry_at)
    await store.settle([outcome])
    batch = await store.relay_due(100, 30.0)
    assert batch.jobs == []
    assert batch.next_due is not None
    assert batch.next_due - batch.now <= 0.31
    await asyncio.sleep(0.35)
    assert sorted(await _relayed(store)) == sorted([later.message.id, now_job.message.id])


async def test_claim_by_id_leases_what_is_ready_and_says_why_not_otherwise(
    store: Broker,
) -> None:
    ready, later, done = request(), request(delay=60), request()
    await store.enqueue_unsent([ready, later, done], hold=30.0)
    [d] = await store.claim_ids([done.message.id], 30.0)
    assert isinstance(d, Delivery)
    await store.settle([Outcome(d.job_id, d.attempt, JobState.SUCCEEDED, result=b"1")])
    answers = await store.claim_ids(
        [ready.message.id, ready.message.id, later.message.id, done.message.id, "nope"], 30.0
    )
    first = answers[0]
    assert isinstance(first, Delivery)
    assert (first.job_id, first.attempt, first.payload) == (ready.message.id, 1, ready.payload)
    assert answers[1:] == [
        Gone(ready.message.id, JobState.RUNNING),  # the same message twice: one run
        Gone(later.message.id, JobState.SCHEDULED),  # not due: a stale message
        Gone(done.message.id, JobState.SUCCEEDED),
        Missing("nope"),
    ]
    status = await store.status(ready.message.id)
    assert status is not None
    assert (status.state, status.attempts) == (JobState.RUNNING, 1)


async def test_a_lost_lease_is_recovered_and_relayed_again_then_poisoned(
    store: Broker,
) -> None:
    job = request()
    await store.enqueue_unsent([job], hold=30.0)
    [first] = await store.claim_ids([job.message.id], 0.1)
    await asyncio.sleep(0.15)
    assert await _relayed(store) == [job.message.id]  # WorkerLost: ready again, unsent
    [second] = await store.claim_ids([job.message.id], 0.1)
    assert isinstance(first, Delivery)
    assert isinstance(second, Delivery)
    assert second.attempt == first.attempt + 1  # the fencing token moved on
    assert await store.extend([Lease(job.message.id, first.attempt)], 30.0) is not None
    await asyncio.sleep(0.15)
    assert await _relayed(store) == []  # lost twice with max_recoveries=1: Poison
    status = await store.status(job.message.id)
    assert status is not None
    assert status.state is JobState.FAILED
    assert [e.type for e in status.errors] == ["WorkerLost", "WorkerLost", "Poison"]


async def test_released_and_replayed_jobs_are_relayed_again(store: Broker) -> None:
    job = request()
    await store.enqueue_unsent([job], hold=30.0)
    await store.mark_sent([job.message.id])
    [d] = await store.claim_ids([job.message.id], 30.0)
    assert isinstance(d, Delivery)
    await store.release([Lease(d.job_id, d.attempt)])
    assert await _relayed(store) == [job.message.id]
    await store.mark_sent([job.message.id])
    [d] = await store.claim_ids([job.message.id], 30.0)
    assert isinstance(d, Delivery)
    await store.settle([Outcome(d.job_id, d.attempt, JobState.FAILED)])
    assert await _relayed(store) == []
    assert await store.replay([job.message.id]) == [job.message.id]
    assert await _relayed(store) == [job.message.id]


async def test_a_dependent_readied_by_the_store_is_relayed(store: Broker) -> None:
    first = request()
    await store.enqueue_unsent([first], hold=30.0)
    [waiting] = await store.enqueue_unsent([_depending(first.message.id)], hold=30.0)
    assert not waiting.publish  # scheduled for its dependency: nothing to publish yet
    await store.mark_sent([first.message.id])
    [d] = await store.claim_ids([first.message.id], 30.0)
    assert isinstance(d, Delivery)
    assert await _relayed(store) == []
    await store.settle([Outcome(d.job_id, d.attempt, JobState.SUCCEEDED, result=b"1")])
    assert await _relayed(store) == [waiting.job_id]


async def test_a_withdrawn_enqueue_never_runs_and_frees_its_key(store: Broker) -> None:
    failed, published = request(key="k"), request()
    await store.enqueue_unsent([failed, published], hold=30.0)
    await store.mark_sent([published.message.id])
    await store.withdraw([failed.message.id, published.message.id], "RabbitMQ unreachable")
    status = await store.status(failed.message.id)
    assert status is not None
    assert status.state is JobState.CANCELLED
    assert [(e.type, e.message) for e in status.errors] == [
        ("EnqueueFailed", "RabbitMQ unreachable")
    ]
    kept = await store.status(published.message.id)
    assert kept is not None
    assert kept.state is JobState.QUEUED  # its message is out: it runs
    [again] = await store.enqueue_unsent([request(key="k")], hold=30.0)
    assert again.publish  # the key names a new job
    assert [type(a) for a in await store.claim_ids([failed.message.id], 30.0)] == [Gone]


# Several queues: one pass takes the best across them (Redis keeps each queue in a slot of its
# own, on a Cluster perhaps on another node, and merges them itself).
async def test_several_queues_are_relayed_by_priority_then_age_within_the_limit(
    store: Broker,
) -> None:
    x1, y1, y2, z1 = (
        request(queue="rx"),
        request(queue="ry", priority=5),
        request(queue="ry"),
        request(queue="rz"),
    )
    for req in (x1, y1, y2, z1):
        await store.enqueue_unsent([req], hold=0.0)
    batch = await store.relay_due(3, 30.0)
    assert [(j.job_id, j.queue) for j in batch.jobs] == [
        (y1.message.id, "ry"),
        (x1.message.id, "rx"),
        (y2.message.id, "ry"),
    ]
    assert batch.next_due == batch.now  # one more is ready: come back at once
    assert await _relayed(store) == [z1.message.id]  # not held by the pass that left it
    assert await _relayed(store) == []


async def test_cancelled_jobs_are_not_relayed_and_a_batch_callback_is(store: Broker) -> None:
    batch_id = new_job_id()
    member = Message(id=new_job_id(), task="t", queue="rb", created_at=utcnow(),
                     headers={"batch_id": batch_id})  # fmt: skip
    callback = Message(id=new_job_id(), task="cb", queue="rb",
                       args=["__dromos_batch_summary__"], created_at=utcnow())  # fmt: skip
    record = BatchRecord(batch_id, 1, EnqueueRequest(callback, encode(callback)))
    await store.enqueue_batch(record, [EnqueueRequest(member, encode(member))])
    dropped = request(queue="rb")
    await store.enqueue_unsent([dropped], hold=0.0)
    assert await store.cancel(dropped.message.id) is JobState.CANCELLED
    assert await _relayed(store) == [member.id]  # enqueued by the store alone: unsent
    [d] = await store.claim_ids([member.id], 30.0)
    assert isinstance(d, Delivery)
    await store.settle([Outcome(d.job_id, d.attempt, JobState.SUCCEEDED, result=b"1")])
    [job] = (await store.relay_due(100, 30.0)).jobs
    assert job.job_id == callback.id
    assert b'"total":1' in job.payload  # the summary filled in


# Redis: its index of unsent jobs exists in relay mode only.
async def test_redis_keeps_no_unsent_index_out_of_relay_mode(
    backend: Target, make_broker: MakeBroker
) -> None:
    if not backend.broker.startswith("redis:"):
        pytest.skip("Redis only")
    from dromos.brokers.redis import RedisBroker

    plain = await make_broker()
    assert isinstance(plain, RedisBroker)
    await plain.enqueue([request(), request()])
    [d] = await plain.claim(["default"], 1, 30.0)
    await plain.release([Lease(d.job_id, d.attempt)])  # readied again
    client = (await plain._state()).client
    assert not await client.exists(f"{plain._tag('default')}:unsent")
    with pytest.raises(ConfigurationError):
        await plain.relay_due(10, 30.0)
    relay = await make_broker(relay=True)
    assert isinstance(relay, RedisBroker)
    assert await _relayed(relay) == []  # its index starts with relay mode
    await relay.enqueue([request()])
    assert len(await _relayed(relay)) == 1
    # A retried enqueue (its reply lost) holds its job for the caller again, until published.
    again = request()
    for _ in range(2):
        assert [r.publish for r in await relay.enqueue_unsent([again], hold=30.0)] == [True]
    await relay.mark_sent([again.message.id])
    assert [r.publish for r in await relay.enqueue_unsent([again], hold=30.0)] == [False]
    # A late mark_sent (the publish of an earlier readiness) leaves a job readied anew unsent.
    [d] = await relay.claim_ids([again.message.id], 30.0)
    assert isinstance(d, Delivery)
    await relay.release([Lease(d.job_id, d.attempt)])
    await relay.mark_sent([again.message.id])
    assert await _relayed(relay) == [again.message.id]


async def test_a_late_mark_does_not_hide_a_job_readied_again(store: Broker) -> None:
    job = request()
    await store.enqueue_unsent([job], hold=30.0)
    [d] = await store.claim_ids([job.message.id], 30.0)  # its message was consumed at once
    assert isinstance(d, Delivery)
    await store.release([Lease(d.job_id, d.attempt)])  # ready again, unsent
    await store.mark_sent([job.message.id])  # the enqueuer's mark, arriving late
    assert await _relayed(store) == [job.message.id]
