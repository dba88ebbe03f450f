"""Redis hands a new job straight to an idle worker (redis.lua's ``hand_over``): leased at
enqueue, announced on the work channel, taken by the worker's next claim without a round
trip. These tests pin what that must not change: leases, priorities, stopping, lapsed
entries, and workers serving several queues.

On the shared server and on the session's Redis Cluster, under a prefix of each test's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from dromos.brokers.base import Broker, Delivery, Lease, Outcome
from dromos.brokers.redis import RedisBroker
from dromos.job import JobState
from tests.backends._support import request
from tests.backends.conftest import BACKENDS, MakeBroker, Target


@pytest.fixture(params=["redis", "redis-cluster"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    with BACKENDS[request.param](tmp_path, "hand_over") as target:
        yield target


async def _idle(
    broker: Broker, worker: str, room: int, queues: list[str] | None = None, lease: float = 30.0
) -> None:
    """What a worker does before it waits: listen on the work channel, then claim short."""
    queues = queues or ["default"]
    await broker.wait_for_work(queues, 0.01)  # subscribes
    assert await broker.claim(queues, room, lease, worker) == []


async def _state(broker: Broker, job_id: str) -> JobState | None:
    status = await broker.status(job_id)
    return None if status is None else status.state


async def _handed(broker: Broker, worker: str, queue: str = "default") -> list[Delivery]:
    """The jobs handed to ``worker``, taken as its next claim takes them: the wait returns
    once their message arrived (published before the enqueue's wake-up, if any)."""
    await broker.wait_for_work([queue], 5.0)
    return await broker.claim([queue], 10, 30.0, worker)


async def test_a_job_enqueued_while_a_worker_waits_is_leased_to_it_at_once(
    make_broker: MakeBroker,
) -> None:
    worker_side, producer = await make_broker(), await make_broker()
    await _idle(worker_side, "w1", room=4)
    [job_id] = await producer.enqueue([request()])
    status = await producer.status(job_id)
    assert status is not None
    assert status.state is JobState.RUNNING  # leased in the enqueue itself
    assert status.attempts == 1
    assert [d.job_id for d in await _handed(worker_side, "w1")] == [job_id]
    [stats] = await producer.queues()
    assert stats.counts.get("queued", 0) == 0


async def test_a_handed_job_settles_like_a_claimed_one(make_broker: MakeBroker) -> None:
    worker_side, producer = await make_broker(), await make_broker()
    await _idle(worker_side, "w1", room=1)
    sent = request()
    [job_id] = await producer.enqueue([sent])
    [delivery] = await _handed(worker_side, "w1")
    assert (delivery.job_id, delivery.attempt, delivery.failures) == (job_id, 1, 0)
    assert delivery.payload == sent.payload
    outcome = Outcome(job_id, delivery.attempt, JobState.SUCCEEDED, b"7")
    assert await worker_side.settle([outcome]) == 1
    status = await producer.status(job_id)
    assert status is not None
    assert status.state is JobState.SUCCEEDED
    assert status.result == 7


async def test_a_job_goes_to_one_worker_when_workers_of_two_processes_share_a_name(
    make_broker: MakeBroker,
) -> None:
    # Worker(app, name="worker") in every replica of a service: two entries, one job, one run.
    first, second, producer = await make_broker(), await make_broker(), await make_broker()
    await _idle(first, "worker", room=1)
    await _idle(second, "worker", room=1)
    [job_id] = await producer.enqueue([request()])
    await asyncio.sleep(0.2)  # the hand-over message reached both
    got = [d.job_id for b in (first, second) for d in await b.claim(["default"], 1, 30.0, "worker")]
    assert got == [job_id]


async def test_a_worker_gets_no_more_than_the_room_it_claimed_with_and_the_best_first(
    make_broker: MakeBroker,
) -> None:
    worker_side, producer = await make_broker(), await make_broker()
    await _idle(worker_side, "w1", room=2)
    requests = [request(priority=0), request(priority=5), request(priority=0)]
    ids = await producer.enqueue(requests)
    handed = [d.job_id for d in await _handed(worker_side, "w1")]
    assert sorted(handed) == sorted([ids[1], ids[0]])  # the priority-5 job and the older one
    [stats] = await producer.queues()
    assert stats.counts.get("queued", 0) == 1
    # Its room used up, the worker is no longer idle: the next job stays ready for a claim.
    [later] = await producer.enqueue([request()])
    assert await _state(producer, later) is JobState.QUEUED


async def test_a_large_enqueue_is_handed_in_full_to_a_worker_with_room_for_it(
    make_broker: MakeBroker,
) -> None:
    # More values than one Lua call can unpack: the running set is written in chunks.
    worker_side, producer = await make_broker(), await make_broker()
    await _idle(worker_side, "w1", room=10_000)
    ids = await producer.enqueue([request() for _ in range(10_000)])
    await worker_side.wait_for_work(["default"], 5.0)
    taken = await worker_side.claim(["default"], 10_000, 30.0, "w1")
    assert sorted(d.job_id for d in taken) == sorted(ids)


async def test_nothing_is_handed_over_while_older_jobs_are_ready(make_broker: MakeBroker) -> None:
    worker_side, producer = await make_broker(), await make_broker()
    await _idle(worker_side, "w1", room=1)
    [first] = await producer.enqueue([request()])
    [delivery] = await _handed(worker_side, "w1")
    await _idle(worker_side, "w2", room=4)
    # The older job becomes ready again without a hand-over (its worker gave it back) ...
    await worker_side.release([Lease(first, delivery.attempt)])
    # ... so a new one waits behind it, though w2 is idle, for w2's claim to take both.
    [second] = await producer.enqueue([request()])
    assert await _state(producer, second) is JobState.QUEUED
    taken = await worker_side.claim(["default"], 4, 30.0, "w2")
    assert [d.job_id for d in taken] == [first, second]


async def test_jobs_handed_but_not_taken_yet_are_kept_leased_by_heartbeats(
    make_broker: MakeBroker,
) -> None:
    # A busy worker takes what was handed to it when a slot frees: meanwhile its heartbeats
    # keep those jobs leased, as they keep its running ones.
    worker_side, producer, other = await make_broker(), await make_broker(), await make_broker()
    await _idle(worker_side, "w1", room=2, lease=1.0)
    ids = await producer.enqueue([request(), request()])
    await worker_side.wait_for_work(["default"], 5.0)  # they arrived
    await worker_side.extend([], 30.0)  # a heartbeat with no job taken
    await asyncio.sleep(1.5)  # past the lease they were handed with
    assert await other.claim(["default"], 10, 30.0, "w2") == []  # nothing to recover
    taken = await worker_side.claim(["default"], 10, 30.0, "w1")
    assert sorted(d.job_id for d in taken) == sorted(ids)


async def test_a_job_handed_over_whose_lease_ran_out_is_dropped_not_run_twice(
    make_broker: MakeBroker,
) -> None:
    worker_side, producer, other = await make_broker(), await make_broker(), await make_broker()
    await _idle(worker_side, "w1", room=1, lease=0.5)
    [job_id] = await producer.enqueue([request()])
    await worker_side.wait_for_work(["default"], 5.0)
    await asyncio.sleep(1.0)  # no heartbeat came: the lease ran out ...
    [recovered] = await other.claim(["default"], 10, 30.0, "w2")  # ... and w2 has it now
    assert (recovered.job_id, recovered.attempt) == (job_id, 2)
    reply = await worker_side.extend([], 30.0)
    assert job_id in reply.lost
    assert await worker_side.claim(["default"], 10, 30.0, "w1") == []


async def test_a_stopping_worker_hands_back_what_was_handed_to_it(
    make_broker: MakeBroker,
) -> None:
    worker_side, producer, other = await make_broker(), await make_broker(), await make_broker()
    await _idle(worker_side, "w1", room=4)
    ids = await producer.enqueue([request(), request()])
    await worker_side.stop_claiming(["default"], "w1")
    for job_id in ids:
        assert await _state(producer, job_id) is JobState.QUEUED
    assert sorted(d.job_id for d in await other.claim(["default"], 10, 30.0, "w2")) == sorted(ids)
    # and nothing more is handed to the stopped worker
    [later] = await producer.enqueue([request()])
    assert await _state(producer, later) is JobState.QUEUED


async def test_the_entry_of_a_worker_killed_while_idle_lapses(make_broker: MakeBroker) -> None:
    producer = await make_broker()
    assert isinstance(producer, RedisBroker)
    client = (await producer._state()).client
    idle = f"{producer._tag('default')}:idle"
    await client.hset(idle, "dead", "4 30000 1")  # its entry lapsed at 1 ms past the epoch
    [job_id] = await producer.enqueue([request()])
    assert not await client.hexists(idle, "dead")
    assert await _state(producer, job_id) is JobState.QUEUED


async def test_a_worker_of_several_queues_is_never_idle_for_one(make_broker: MakeBroker) -> None:
    worker_side, producer = await make_broker(), await make_broker()
    await _idle(worker_side, "w1", room=4, queues=["a", "b"])
    [job_id] = await producer.enqueue([request(queue="a")])
    assert await _state(producer, job_id) is JobState.QUEUED
