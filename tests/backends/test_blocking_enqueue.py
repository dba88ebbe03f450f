"""Enqueue from plain code: the broker's optional blocking hook and the app's blocking path."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable

import pytest

import dromos
from dromos import Broker, JobState
from tests.backends._support import request


async def test_enqueue_blocking_stores_the_jobs_or_returns_none_storing_nothing(
    broker: Broker,
) -> None:
    reqs = [request(), request(delay=3600), request()]
    ids = await asyncio.to_thread(broker.enqueue_blocking, reqs)
    stored = {s.id: s.state for s in await broker.jobs()}
    if ids is None:
        assert stored == {}
    else:
        assert ids == [r.message.id for r in reqs]
        assert [stored[i] for i in ids] == [JobState.QUEUED, JobState.SCHEDULED, JobState.QUEUED]


async def test_enqueue_blocking_keeps_idempotency_keys(broker: Broker) -> None:
    first = request(key="order-1")
    await broker.enqueue([first])
    again = [request(), request(key="order-1"), request()]
    ids = await asyncio.to_thread(broker.enqueue_blocking, again)
    if ids is not None:
        assert ids == [again[0].message.id, first.message.id, again[2].message.id]
        assert len(await broker.jobs()) == 3


async def test_enqueue_blocking_wakes_a_waiting_worker(broker: Broker) -> None:
    waiting = asyncio.create_task(broker.wait_for_work(["default"], 30.0))
    await asyncio.sleep(0.05)  # the waiter is parked
    ids = await asyncio.to_thread(broker.enqueue_blocking, [request()])
    if ids is None:  # this backend has no blocking hook: the async enqueue is the path
        await broker.enqueue([request()])
    await asyncio.wait_for(waiting, 10)
    assert len(await broker.claim(["default"], 10, 30.0)) == 1


def _connected_adder(
    make_app: Callable[..., dromos.App],
) -> tuple[dromos.App, dromos.Task[..., int], dromos.Job[int]]:
    """An app with a plain ``add`` task, connected by a first job (returned): the calls after
    it take the blocking path."""
    app = make_app()

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    return app, add, add.enqueue(0, 0)


def test_blocking_enqueue_many_stores_a_large_batch_in_order(
    make_app: Callable[..., dromos.App],
) -> None:
    app, add, _ = _connected_adder(make_app)
    jobs = add.enqueue_many([(i, 1) for i in range(250)])  # more rows than one statement
    stored = app.portal.call(app.broker.jobs, limit=1000)
    assert [s.id for s in reversed(stored)][1:] == [j.id for j in jobs]
    assert {s.state for s in stored} == {JobState.QUEUED}


def test_blocking_enqueues_from_hundreds_of_threads_at_once_are_all_queued(
    make_app: Callable[..., dromos.App],
) -> None:
    # A threaded web server with more threads than a client has connections: every thread's
    # enqueue waits its turn; none fails (on Redis redis-py's plain pool refused the 101st).
    app, add, _ = _connected_adder(make_app)
    start = threading.Barrier(300)

    def enqueue_some(n: int) -> list[str]:
        start.wait(timeout=30)
        return [add.enqueue(n, i).id for i in range(3)]

    with concurrent.futures.ThreadPoolExecutor(300) as pool:
        ids = [i for some in pool.map(enqueue_some, range(300)) for i in some]
    stored = app.portal.call(app.broker.jobs, limit=2000)
    assert len(ids) == len(set(ids)) == 900
    assert set(ids) <= {s.id for s in stored}


def test_blocking_enqueue_many_returns_the_existing_job_for_a_known_key(
    make_app: Callable[..., dromos.App],
) -> None:
    app = make_app()

    @app.task
    def charge(order: int) -> None: ...

    first = charge.options(idempotency_key="order-5").enqueue(5)
    jobs = app.enqueue_many(
        [charge.call(1), charge.options(idempotency_key="order-5").call(5), charge.call(2)]
    )
    assert jobs[1].id == first.id
    assert len(app.portal.call(app.broker.jobs)) == 3


def test_blocking_enqueue_many_queues_nothing_when_one_call_is_invalid(
    make_app: Callable[..., dromos.App],
) -> None:
    app, add, first = _connected_adder(make_app)
    with pytest.raises(dromos.ValidationError):
        add.enqueue_many([(1, 2), (3, 4), ("three", 4)])
    assert [s.id for s in app.portal.call(app.broker.jobs)] == [first.id]


async def test_enqueue_in_a_connection_needs_a_broker_that_can(app: dromos.App) -> None:
    @app.task
    async def noop() -> None: ...

    broker = await app.abroker()
    if type(broker).enqueue_in is not Broker.enqueue_in:
        return  # this broker can (its own tests cover the transaction)
    with pytest.raises(dromos.ConfigurationError, match="PostgreSQL"):
        await noop.options(connection=object()).aenqueue()
    with pytest.raises(dromos.ConfigurationError, match="PostgreSQL"):  # from plain code too
        await asyncio.to_thread(noop.options(connection=object()).enqueue)
    assert await broker.jobs() == []


async def test_one_enqueue_many_takes_one_connection(app: dromos.App) -> None:
    @app.task
    async def noop() -> None: ...

    calls = [noop.options(connection=object()).task.call(), noop.call()]
    one, two = object(), object()
    from dromos.task import Call, Options

    calls = [
        Call(noop, (), {}, Options(connection=one)),
        Call(noop, (), {}, Options(connection=two)),
    ]
    with pytest.raises(dromos.ConfigurationError, match="same"):
        await app.aenqueue_many(calls)
