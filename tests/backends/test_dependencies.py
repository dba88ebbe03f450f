"""Job dependencies (``depends_on=``): a dependent waits ``scheduled`` until every dependency
succeeded, and is queued by the write that ends the last one; a dependency that fails or is
cancelled ends it the same way, down a chain. On every broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import dromos
from dromos import JobState
from dromos.brokers.base import Broker, EnqueueRequest, Outcome
from dromos.errors import DependencyNotFound
from dromos.job import JobError
from dromos.message import Message, encode, new_job_id, utcnow
from tests.backends._support import eventually
from tests.backends.conftest import MakeBroker, Workers


def job(
    *deps: str, queue: str = "default", headers: dict[str, str] | None = None
) -> EnqueueRequest:
    """A job as a producer writes it: its dependencies in the ``depends_on`` header."""
    all_headers = dict(headers or {})
    if deps:
        all_headers["depends_on"] = ",".join(deps)
    message = Message(id=new_job_id(), task="t", queue=queue, created_at=utcnow(),
                      headers=all_headers)  # fmt: skip
    return EnqueueRequest(message, encode(message))


async def state_of(broker: Broker, job_id: str) -> JobState:
    status = await broker.status(job_id)
    assert status is not None
    return status.state


async def run(broker: Broker, req: EnqueueRequest, state: JobState = JobState.SUCCEEDED) -> None:
    """Claim the job ``req`` (queued on its own) and end its run in ``state``."""
    got = await broker.claim([req.message.queue], 1, 30.0)
    assert [d.job_id for d in got] == [req.message.id]
    error = None if state is JobState.SUCCEEDED else JobError(type="E", message="boom")
    result = b"1" if state is JobState.SUCCEEDED else None
    outcome = Outcome(req.message.id, got[0].attempt, state, result=result, error=error)
    assert await broker.settle([outcome]) == 1


def is_cluster(request: pytest.FixtureRequest) -> bool:
    return bool(request.node.callspec.params["backend"] == "redis-cluster")


async def test_a_job_with_two_dependencies_waits_for_both(
    app: dromos.App, workers: Workers
) -> None:
    gates = {"a": asyncio.Event(), "b": asyncio.Event()}

    @app.task
    async def step(name: str) -> str:
        if name in gates:
            await gates[name].wait()
        return name

    a = await step.aenqueue("a")
    b = await step.aenqueue("b")
    c = await step.options(depends_on=[a, b.id]).aenqueue("c")
    status = await c.astatus()
    assert (status.state, status.message, status.eta) == (
        JobState.SCHEDULED, "waiting for 2 job(s)", None,
    )  # fmt: skip
    workers.start(app)
    await eventually(lambda: _running(a), what="a to run")
    await eventually(lambda: _running(b), what="b to run")
    gates["a"].set()
    assert await a.aresult(timeout=10) == "a"
    status = await c.astatus()
    assert (status.state, status.message) == (JobState.SCHEDULED, "waiting for 1 job(s)")
    gates["b"].set()
    assert await c.aresult(timeout=10) == "c"
    ended = [(await j.astatus()).finished_at for j in (a, b)]
    started = (await c.astatus()).started_at
    assert started is not None
    assert all(t is not None and started >= t for t in ended)  # it ran after both ended


async def _running(job: dromos.Job[Any]) -> bool:
    return (await job.astatus()).state is JobState.RUNNING


async def test_a_failed_dependency_dead_letters_its_dependents_down_a_chain(
    app: dromos.App, workers: Workers
) -> None:
    ran: list[str] = []
    gate = asyncio.Event()

    @app.task(retries=0)
    async def step(name: str) -> str:
        await gate.wait()
        ran.append(name)
        if name == "a":
            raise ValueError("a breaks")
        return name

    a = await step.aenqueue("a")
    b = await step.options(depends_on=[a]).aenqueue("b")
    c = await step.options(depends_on=[b]).aenqueue("c")
    workers.start(app)
    gate.set()
    with pytest.raises(dromos.JobFailed):
        await a.aresult(timeout=10)
    for dependent, dependency in ((b, a), (c, b)):
        with pytest.raises(dromos.JobFailed) as failed:
            await dependent.aresult(timeout=10)
        status = failed.value.status
        assert status.state is JobState.FAILED
        assert status.error is not None
        assert status.error.type == "DependencyFailed"
        assert status.error.message == f"dependency {dependency.id} ended failed"
        assert status.attempts == 0
        assert status.message is None
    dead = {s.id for s in await (await app.abroker()).jobs(state=JobState.FAILED)}
    assert dead == {a.id, b.id, c.id}  # all in the dead-letter list
    assert ran == ["a"]


async def test_a_cancelled_dependency_cancels_its_dependents(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    a = job()
    b = job(a.message.id)
    c = job(b.message.id)
    for req in (a, b, c):  # a dependency is enqueued before its dependents
        await broker.enqueue([req])
    assert await broker.cancel(a.message.id) is JobState.CANCELLED
    for dependent, dependency in ((b, a), (c, b)):
        status = await broker.status(dependent.message.id)
        assert status is not None
        assert status.state is JobState.CANCELLED
        assert status.error is not None
        assert status.error.type == "DependencyCancelled"
        assert status.error.message == f"dependency {dependency.message.id} ended cancelled"
    assert await broker.claim(["default"], 10, 30.0) == []


async def test_a_dependent_reached_twice_in_one_end_ends_once(make_broker: MakeBroker) -> None:
    # Found by the differential test: c waits for a and for b, which waits for a; cancelling
    # a ends b, and both ends reach c in the same write. SQLite ended c twice (two entries).
    broker = await make_broker()
    a = job()
    b = job(a.message.id)
    c = job(a.message.id, b.message.id)
    for req in (a, b, c):
        await broker.enqueue([req])
    assert await broker.cancel(a.message.id) is JobState.CANCELLED
    status = await broker.status(c.message.id)
    assert status is not None
    assert status.state is JobState.CANCELLED
    assert [e.type for e in status.errors] == ["DependencyCancelled"]


async def test_dependencies_already_ended_at_enqueue(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    done, failed, cancelled, pending = job(), job(), job(), job()
    await broker.enqueue([done])
    await run(broker, done)
    await broker.enqueue([failed])
    await run(broker, failed, JobState.FAILED)
    await broker.enqueue([cancelled, pending])
    await broker.cancel(cancelled.message.id)
    ready = job(done.message.id)
    waits = job(done.message.id, pending.message.id)
    dead = job(done.message.id, failed.message.id)
    gone = job(cancelled.message.id)
    await broker.enqueue([ready, waits, dead, gone])
    assert await state_of(broker, ready.message.id) is JobState.QUEUED
    status = await broker.status(waits.message.id)
    assert status is not None
    assert (status.state, status.message) == (JobState.SCHEDULED, "waiting for 1 job(s)")
    status = await broker.status(dead.message.id)
    assert status is not None
    assert status.state is JobState.FAILED
    assert status.error is not None
    assert status.error.type == "DependencyFailed"
    assert failed.message.id in status.error.message
    assert await state_of(broker, gone.message.id) is JobState.CANCELLED
    claimed = await broker.claim(["default"], 10, 30.0)
    assert [d.job_id for d in claimed] == [pending.message.id, ready.message.id]


async def test_an_unknown_dependency_refuses_the_enqueue_and_stores_nothing(
    app: dromos.App,
) -> None:
    @app.task
    async def step(n: int) -> int:
        return n

    known = await step.aenqueue(0)
    unknown = "0193a4f0-0000-7000-8000-000000000000"
    calls = [step.call(1), step.options(depends_on=[known, unknown]).call(2)]
    with pytest.raises(DependencyNotFound) as refused:
        await app.aenqueue_many(calls)
    assert refused.value.job_id == unknown
    assert isinstance(refused.value, dromos.JobNotFound)
    assert unknown in str(refused.value)
    with pytest.raises(DependencyNotFound):
        step.options(depends_on=[unknown]).enqueue(3)  # the blocking path too
    with pytest.raises(DependencyNotFound):
        await app.abatch([step.call(4), step.options(depends_on=[unknown]).call(5)])
    broker = await app.abroker()
    assert [s.id for s in await broker.jobs()] == [known.id]


async def test_two_dependencies_ended_together_queue_the_dependent_once(
    make_broker: MakeBroker, request: pytest.FixtureRequest
) -> None:
    first = await make_broker()
    # Two clients, as two workers would be (one store for memory: one instance).
    second = first if request.node.callspec.params["backend"] == "memory" else await make_broker()
    pairs = 200
    deps = [job() for _ in range(2 * pairs)]
    await first.enqueue(deps)
    dependents = [job(deps[2 * i].message.id, deps[2 * i + 1].message.id) for i in range(pairs)]
    await first.enqueue(dependents)
    claimed = {d.job_id: d.attempt for d in await first.claim(["default"], 2 * pairs, 60.0)}
    assert len(claimed) == 2 * pairs

    async def end(broker: Broker, req: EnqueueRequest) -> None:
        outcome = Outcome(req.message.id, claimed[req.message.id], JobState.SUCCEEDED, b"0")
        assert await broker.settle([outcome]) == 1

    for start in range(0, pairs, 25):  # each pair's two ends at once, from two clients
        await asyncio.gather(*(
            end(client, deps[2 * i + k])
            for i in range(start, min(pairs, start + 25))
            for k, client in enumerate((first, second))
        ))  # fmt: skip
    runs: list[str] = []
    while got := await first.claim(["default"], 100, 60.0):
        runs += [d.job_id for d in got]
    runs += [d.job_id for d in await second.claim(["default"], 100, 60.0)]
    assert sorted(runs) == sorted(r.message.id for r in dependents)  # each once


async def test_cancelling_a_waiting_dependent(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    a = job()
    b = job(a.message.id)
    c = job(b.message.id)
    for req in (a, b, c):  # a dependency is enqueued before its dependents
        await broker.enqueue([req])
    assert await broker.cancel(b.message.id) is JobState.CANCELLED
    status = await broker.status(b.message.id)
    assert status is not None
    assert (status.state, status.message) == (JobState.CANCELLED, None)
    assert await state_of(broker, c.message.id) is JobState.CANCELLED  # down its chain
    await run(broker, a)  # its dependency succeeds later: nothing more happens
    assert await state_of(broker, b.message.id) is JobState.CANCELLED
    assert await broker.claim(["default"], 10, 30.0) == []


async def test_a_retrying_dependency_has_not_ended(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    a = job()
    b = job(a.message.id)
    await broker.enqueue([a])
    await broker.enqueue([b])
    got = await broker.claim(["default"], 1, 30.0)
    error = JobError(type="E", message="again")
    retry = Outcome(a.message.id, got[0].attempt, JobState.RETRYING, error=error, eta=0.0)
    assert await broker.settle([retry]) == 1
    assert await state_of(broker, b.message.id) is JobState.SCHEDULED
    await run(broker, a)  # its next attempt succeeds
    assert [d.job_id for d in await broker.claim(["default"], 10, 30.0)] == [b.message.id]


async def test_a_dependent_dead_lettered_by_its_dependency_replays_without_it(
    app: dromos.App, workers: Workers
) -> None:
    @app.task(retries=0)
    async def step(n: int) -> int:
        if n == 0:
            raise ValueError("no")
        return n

    a = await step.aenqueue(0)
    b = await step.options(depends_on=[a]).aenqueue(1)
    workers.start(app)
    with pytest.raises(dromos.JobFailed):
        await b.aresult(timeout=10)
    broker = await app.abroker()
    assert await broker.replay([b.id]) == [b.id]
    assert await b.aresult(timeout=10) == 1  # runs: its dependencies are not looked at again
    assert (await a.astatus()).state is JobState.FAILED


async def test_a_dependent_ended_by_its_dependency_counts_in_its_batch_and_its_webhook(
    app: dromos.App, workers: Workers
) -> None:
    reports: list[dict[str, Any]] = []

    @app.task(retries=0)
    async def step(n: int) -> int:
        if n == 0:
            raise ValueError("no")
        return n

    @app.task
    async def report(summary: dict[str, Any]) -> None:
        reports.append(summary)

    a = await step.aenqueue(0)
    ok = await step.aenqueue(5)
    batch = await app.abatch(
        [step.options(depends_on=[a]).call(1), step.options(depends_on=[ok]).call(2)],
        on_complete=report,
    )
    workers.start(app)
    got = await batch.aresults(timeout=10, return_exceptions=True)
    assert isinstance(got[0], dromos.JobFailed)
    assert got[1] == 2
    status = await batch.astatus()
    assert (status.succeeded, status.failed) == (1, 1)
    assert status.callback_id is not None
    await app.job(status.callback_id).aresult(timeout=10)
    assert [(r["succeeded"], r["failed"]) for r in reports] == [(1, 1)]
    # The webhook's outbox entry is written with the end, as for any other end.
    await workers.stop_all()
    broker = await app.abroker()
    dependency = job()
    await broker.enqueue([dependency])
    hooked = job(dependency.message.id, headers={"callback_url": "http://127.0.0.1:9/hook"})
    await broker.enqueue([hooked])
    await broker.cancel(dependency.message.id)
    due = await broker.webhooks_due(10, 30.0)
    assert hooked.message.id in [d.job_id for d in due]


async def test_a_dependency_in_another_queue(
    make_broker: MakeBroker, request: pytest.FixtureRequest
) -> None:
    broker = await make_broker()
    a = job(queue="other")
    await broker.enqueue([a])
    b = job(a.message.id)
    if is_cluster(request):
        # A dependent is counted down in its dependency's slot: one queue on a Cluster.
        with pytest.raises(dromos.ConfigurationError, match="one queue"):
            await broker.enqueue([b])
        assert [s.id for s in await broker.jobs()] == [a.message.id]
        return
    await broker.enqueue([b])
    assert await state_of(broker, b.message.id) is JobState.SCHEDULED
    await run(broker, a)
    assert [d.job_id for d in await broker.claim(["default"], 10, 30.0)] == [b.message.id]
    c = job(a.message.id, queue="third")
    d = job(c.message.id)
    failing = job(queue="other")
    await broker.enqueue([failing])
    e = job(failing.message.id, queue="third")
    f = job(e.message.id)
    await broker.enqueue([c, e])
    await broker.enqueue([d, f])
    await run(broker, failing, JobState.FAILED)  # ends e in "third", then f in "default"
    assert await state_of(broker, e.message.id) is JobState.FAILED
    assert await state_of(broker, f.message.id) is JobState.FAILED
    assert await state_of(broker, d.message.id) is JobState.SCHEDULED
    await run(broker, c)
    assert [x.job_id for x in await broker.claim(["default"], 10, 30.0)] == [d.message.id]


async def test_options_refuse_what_cannot_be_combined(app: dromos.App) -> None:
    @app.task
    async def step(n: int) -> int:
        return n

    @app.task
    async def report(summary: dict[str, Any]) -> None: ...

    a = await step.aenqueue(0)
    with pytest.raises(dromos.ConfigurationError, match="delay"):
        step.options(depends_on=[a], delay=5)
    with pytest.raises(dromos.ConfigurationError, match="depends_on"):
        step.options(depends_on=[3])  # type: ignore[list-item]
    with pytest.raises(dromos.ConfigurationError, match="depends_on"):
        await step.amap([1], on_complete=report.options(depends_on=[a]).step())
    # On the wire: the ids joined by commas, each once.
    request = step.request(step.options(depends_on=[a, a.id, "x"]).call(1), 0.0)
    assert request.message.headers["depends_on"] == f"{a.id},x"
