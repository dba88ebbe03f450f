"""Rate limits on every broker: the broker's reservations, and workers that keep to them (#8).

``Broker.throttle`` hands out starts from one sliding-window log per key; the values it
returns are the semantics (when each start may be), not a measure of speed. The worker tests
record when each job started and count the starts of every window.
"""

from __future__ import annotations

import asyncio
import collections
import time

import pytest

import dromos
from dromos import JobState
from dromos.brokers.base import Broker, Lease
from tests.backends._support import request
from tests.backends.conftest import Workers


async def test_starts_beyond_the_limit_are_reserved_one_period_later(broker: Broker) -> None:
    waits = [await broker.throttle("t:a", 5, 2.0) for _ in range(11)]
    assert waits[:5] == [0.0] * 5  # within the limit: now
    for wait in waits[5:10]:  # the sixth to tenth: when the first five leave the window
        assert 1.5 < wait <= 2.01, waits
    assert 3.5 < waits[10] <= 4.01, waits  # the eleventh: after the sixth's window


async def test_each_key_has_its_own_window(broker: Broker) -> None:
    assert [await broker.throttle("t:a", 2, 60.0) for _ in range(2)] == [0.0, 0.0]
    assert await broker.throttle("t:a", 2, 60.0) > 59.0
    assert await broker.throttle("t:b", 2, 60.0) == 0.0


async def test_a_window_that_passed_frees_its_starts(broker: Broker) -> None:
    assert await broker.throttle("t:short", 1, 0.2) == 0.0
    await asyncio.sleep(0.25)
    assert await broker.throttle("t:short", 1, 0.2) == 0.0
    await broker.purge()  # the purge forgets windows that ended; nothing else changes
    assert await broker.throttle("t:short", 1, 0.2) > 0.0


async def test_a_start_beyond_the_hold_is_reported_not_reserved(broker: Broker) -> None:
    assert await broker.throttle("t:h", 1, 10.0, hold=1.0) == 0.0
    far = await broker.throttle("t:h", 1, 10.0, hold=1.0)
    assert 9.0 < far <= 10.01
    # Not reserved: the same question gets the same answer, not one a period later.
    assert await broker.throttle("t:h", 1, 10.0, hold=1.0) <= far
    assert 9.0 < await broker.throttle("t:h", 1, 10.0) <= 10.01  # reserved, unbounded
    assert 19.0 < await broker.throttle("t:h", 1, 10.0) <= 20.01


@pytest.mark.parametrize("by", ["eta", "delay"])
async def test_a_released_job_can_wait_for_a_time_without_counting_a_failure(
    broker: Broker, by: str
) -> None:
    await broker.enqueue([request()])
    [held] = await broker.claim(["default"], 1, 30.0, "w")
    lease = Lease(held.job_id, held.attempt)
    if by == "eta":
        await broker.release([lease], eta=time.time() + 0.5)
    else:  # seconds on the broker's clock: what a worker defers a job by
        await broker.release([lease], delay=0.5)
    status = await broker.status(held.job_id)
    assert status is not None
    assert status.state is JobState.SCHEDULED
    assert await broker.claim(["default"], 1, 30.0, "w") == []  # not before its time
    await asyncio.sleep(0.6)
    [again] = await broker.claim(["default"], 1, 30.0, "w")
    assert (again.job_id, again.failures) == (held.job_id, 0)


def _most_in_any_window(starts: list[float], period: float) -> int:
    starts = sorted(starts)
    most, first = 0, 0
    for last, at in enumerate(starts):
        while at - starts[first] >= period:
            first += 1
        most = max(most, last - first + 1)
    return most


async def test_two_workers_keep_a_task_to_its_limit(app: dromos.App, workers: Workers) -> None:
    started: list[float] = []

    @app.task(rate_limit="10/0.5s", retries=0)
    async def limited(n: int) -> int:
        started.append(time.time())
        return n

    jobs = await limited.aenqueue_many([(n,) for n in range(30)])
    workers.start(app, concurrency=8)
    workers.start(app, concurrency=8)
    assert [await job.aresult(timeout=30) for job in jobs] == list(range(30))
    # A small allowance for the time between the broker's reservation and the task's first
    # line (the reservations themselves never exceed the limit: see the tests above).
    assert _most_in_any_window(started, 0.5 - 0.02) <= 10
    assert max(started) - min(started) >= 0.9  # 30 starts at 10 per 0.5 s take two windows


async def test_a_key_limits_each_value_on_its_own(app: dromos.App, workers: Workers) -> None:
    started: dict[str, list[float]] = collections.defaultdict(list)

    @app.task(rate_limit="3/0.5s", rate_limit_key="customer", retries=0)
    async def charge(customer: str, cents: int) -> int:
        started[customer].append(time.time())
        return cents

    calls = [charge.call(c, n) for n in range(6) for c in ("acme", "globex")]
    jobs = await app.aenqueue_many(calls)
    workers.start(app, concurrency=12)
    await asyncio.gather(*(job.aresult(timeout=30) for job in jobs))
    for customer in ("acme", "globex"):
        assert len(started[customer]) == 6
        assert _most_in_any_window(started[customer], 0.5 - 0.02) <= 3
    # Each customer's window is its own: more than one customer's limit started within one
    # window (6 when every start kept to its reservation; on a loaded machine a start that
    # missed its reservation's slack reserves again, in the next window, by design).
    everyone = sorted(started["acme"] + started["globex"])
    assert _most_in_any_window(everyone, 0.5 - 0.02) > 3


async def test_a_job_whose_turn_is_far_off_is_handed_back_and_others_run(
    app: dromos.App, workers: Workers
) -> None:
    started: dict[str, float] = {}

    @app.task(rate_limit="1/1.5s", rate_limit_key="customer", retries=0)
    async def sync_account(customer: str, n: int) -> str:
        started[f"{customer}{n}"] = time.time()
        return customer

    first, second = await sync_account.aenqueue("a", 1), await sync_account.aenqueue("a", 2)
    other = await sync_account.aenqueue("b", 1)
    worker = workers.start(app, concurrency=1, prefetch=0)  # holds one job at a time
    worker.rate_hold = 0.2
    assert await other.aresult(timeout=10) == "b"
    assert (await second.astatus()).state is JobState.SCHEDULED  # handed back, not held
    assert await first.aresult(timeout=10) == await second.aresult(timeout=10) == "a"
    assert started["b1"] < started["a2"]  # "b" did not wait behind "a"'s limit
    assert started["a2"] - started["a1"] >= 1.5 - 0.05
    assert worker.counts["deferred"] >= 1


def test_a_bad_rate_limit_is_refused_where_the_task_is_defined(app: dromos.App) -> None:
    with pytest.raises(dromos.ConfigurationError, match="COUNT/PERIOD"):

        @app.task(rate_limit="fast")
        async def nope() -> None: ...

    with pytest.raises(dromos.ConfigurationError, match="names no parameter"):

        @app.task(rate_limit="1/s", rate_limit_key="tenant")
        async def nope2(customer: str) -> None: ...


async def test_a_key_function_that_raises_fails_the_job_and_the_worker_goes_on(
    app: dromos.App, workers: Workers
) -> None:
    @app.task(rate_limit="100/s", rate_limit_key=lambda order: order["customer"], retries=0)
    async def ship(order: dict[str, str]) -> str:
        return order["customer"]

    bad = await ship.aenqueue({"id": "7"})
    good = await ship.aenqueue({"customer": "acme"})
    workers.start(app)
    assert await good.aresult(timeout=10) == "acme"
    with pytest.raises(dromos.JobFailed) as failed:
        await bad.aresult(timeout=10)
    assert failed.value.status.error is not None
    assert failed.value.status.error.type == "KeyError"
