"""Batches (``task.map``, ``app.batch``): every job counted once at its end, and the
``on_complete`` callback queued exactly once, by the write that ends the last job."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

import dromos
from dromos import JobState
from dromos.brokers.base import SUMMARY_PLACEHOLDER, BatchRecord, Broker, EnqueueRequest
from dromos.message import Message, encode, new_job_id, utcnow
from tests.backends._support import eventually
from tests.backends.conftest import MakeBroker, Workers

T = TypeVar("T")
Summary = dict[str, Any]


async def submitted(submit: Awaitable[T]) -> T:
    """The first submission of a test: a broker without batches yet skips the test."""
    try:
        return await submit
    except NotImplementedError as exc:
        pytest.skip(f"this broker has no batches yet: {exc}")


def summary(batch: dromos.Batch[Any], ok: int, failed: int = 0, cancelled: int = 0) -> Summary:
    return {"batch_id": batch.id, "total": len(batch.jobs), "succeeded": ok, "failed": failed,
            "cancelled": cancelled}  # fmt: skip


async def test_a_batch_with_failures_and_cancellations_calls_back_once_with_its_counts(
    app: dromos.App, workers: Workers
) -> None:
    reports: list[tuple[Summary, str]] = []

    @app.task(retries=0)
    async def work(n: int) -> int:
        if n % 10 == 3:
            raise ValueError(f"bad {n}")
        return n * 2

    @app.task
    async def report(result: Summary, tag: str) -> None:
        reports.append((result, tag))

    batch = await submitted(work.amap(range(30), on_complete=report.call("done")))
    assert len(batch.jobs) == 30
    for job in (batch.jobs[5], batch.jobs[6]):  # cancelled while they wait
        assert await job.acancel() is JobState.CANCELLED
    workers.start(app)
    results = await batch.aresults(timeout=20, return_exceptions=True)
    for n, got in enumerate(results):
        if n in (5, 6):
            assert isinstance(got, dromos.JobCancelled)
        elif n % 10 == 3:
            assert isinstance(got, dromos.JobFailed)
            assert got.status.error is not None
            assert got.status.error.type == "ValueError"
        else:
            assert got == n * 2
    with pytest.raises(dromos.JobFailed):
        await batch.aresults(timeout=5)  # the first failure (job 3) raises
    status = await batch.astatus()
    assert status.callback_id is not None
    assert await app.job(status.callback_id).aresult(timeout=10) is None
    await asyncio.sleep(0.3)  # a second callback would have come by now
    assert reports == [(summary(batch, 25, failed=3, cancelled=2), "done")]
    assert (status.total, status.succeeded, status.failed, status.cancelled) == (30, 25, 3, 2)
    assert (status.ended, status.progress, status.done) == (30, 1.0, True)
    assert status.finished_at is not None


async def test_every_job_carries_the_batch_id_and_status_counts_while_it_runs(
    app: dromos.App, workers: Workers
) -> None:
    gate = asyncio.Event()
    headers: list[str] = []

    @app.task
    async def gated(n: int) -> int:
        headers.append(dromos.current_job().headers["batch_id"])
        if n >= 2:
            await gate.wait()
        return n

    batch = await submitted(gated.amap([0, 1, 2, 3]))
    assert (await batch.astatus()).ended == 0
    workers.start(app)

    async def two_ended() -> bool:
        return (await batch.astatus()).succeeded == 2

    await eventually(two_ended, what="two jobs to succeed")
    status = await batch.astatus()
    assert (status.ended, status.progress, status.done, status.finished_at) == (2, 0.5, False, None)
    assert status.callback_id is None
    gate.set()
    assert await batch.aresults(timeout=10) == [0, 1, 2, 3]
    assert (await batch.astatus()).done
    assert set(headers) == {batch.id}
    again = await app.aget_batch(batch.id)  # from an id alone
    assert [j.id for j in again.jobs] == [j.id for j in batch.jobs]
    assert await again.aresults(timeout=5) == [0, 1, 2, 3]


async def test_two_workers_ending_the_last_jobs_together_queue_one_callback(
    app: dromos.App, workers: Workers
) -> None:
    reports: list[Summary] = []
    running: dict[str, int] = {}
    together: dict[str, asyncio.Event] = {}

    @app.task
    async def meet(batch_id: str, n: int) -> int:
        # Both jobs of a batch wait for each other: they end at the same moment, each on
        # its own worker (one job at a time each).
        running[batch_id] = running.get(batch_id, 0) + 1
        event = together.setdefault(batch_id, asyncio.Event())
        if running[batch_id] == 2:
            event.set()
        await event.wait()
        return n

    @app.task
    async def report(result: Summary) -> None:
        reports.append(result)

    workers.start(app, concurrency=1, prefetch=0)
    workers.start(app, concurrency=1, prefetch=0)
    batches = []
    for _ in range(5):
        batch_id = f"b{len(batches)}"
        calls = [meet.call(batch_id, 0), meet.call(batch_id, 1)]
        batches.append(await submitted(app.abatch(calls, on_complete=report)))
    for batch in batches:
        assert await batch.aresults(timeout=20) == [0, 1]
    for batch in batches:
        status = await batch.astatus()
        assert status.callback_id is not None
        await app.job(status.callback_id).aresult(timeout=10)
    await asyncio.sleep(0.3)
    assert sorted(r["batch_id"] for r in reports) == sorted(b.id for b in batches)
    assert all(r == summary(b, 2) for b in batches for r in reports if r["batch_id"] == b.id)


async def test_a_dead_letter_replayed_after_the_batch_ended_does_not_call_back_again(
    app: dromos.App, workers: Workers
) -> None:
    reports: list[Summary] = []
    healed: list[bool] = []

    @app.task(retries=0)
    async def fragile(n: int) -> int:
        if n == 1 and not healed:
            raise ConnectionError("down")
        return n

    @app.task
    async def report(result: Summary) -> None:
        reports.append(result)

    workers.start(app)
    batch = await submitted(fragile.amap([0, 1], on_complete=report))
    got = await batch.aresults(timeout=10, return_exceptions=True)
    assert got[0] == 0
    assert isinstance(got[1], dromos.JobFailed)
    first = await batch.astatus()
    assert first.callback_id is not None
    await app.job(first.callback_id).aresult(timeout=10)
    healed.append(True)
    assert await (await app.abroker()).replay([batch.jobs[1].id]) == [batch.jobs[1].id]
    assert await batch.jobs[1].aresult(timeout=10) == 1
    await asyncio.sleep(0.3)
    assert reports == [summary(batch, 1, failed=1)]
    assert await batch.astatus() == first  # its first end stays counted, once


async def test_a_batch_over_two_tasks_and_their_options(
    app: dromos.App, workers: Workers, request: pytest.FixtureRequest
) -> None:
    reports: list[Summary] = []

    @app.task
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task(queue="other")
    def mul(a: int, b: int) -> int:
        return a * b

    @app.task
    async def report(result: Summary) -> None:
        reports.append(result)

    calls = [add.call(1, 2), mul.options(priority=5).call(3, 4), add.call(5, b=6)]
    if request.node.callspec.params["backend"] == "redis-cluster":
        # A batch's count lives in one slot: a Cluster refuses one over two queues.
        with pytest.raises(dromos.ConfigurationError, match="one queue"):
            await app.abatch(calls, on_complete=report)
        calls[1] = mul.options(priority=5, queue="default").call(3, 4)
    batch = await submitted(app.abatch(calls, on_complete=report))
    workers.start(app, queues=["default", "other"])
    assert await batch.aresults(timeout=10) == [3, 12, 11]
    status = await batch.astatus()
    assert status.callback_id is not None
    await app.job(status.callback_id).aresult(timeout=10)
    assert reports == [summary(batch, 3)]


async def test_bad_arguments_in_one_call_refuse_the_whole_batch(app: dromos.App) -> None:
    @app.task
    async def work(n: int) -> int:
        return n

    @app.task
    async def report(result: Summary, tag: str) -> None: ...

    with pytest.raises(dromos.ValidationError):
        await work.amap([1, "not a number", 3])
    with pytest.raises(dromos.ValidationError):
        await work.amap([1, 2], on_complete=report)  # its tag is missing
    with pytest.raises(dromos.ConfigurationError):
        await work.amap([1, 2], idempotency_key="once")
    with pytest.raises(dromos.ConfigurationError):
        await app.abatch([work.call(1), work.options(idempotency_key="k").call(2)])
    broker = await app.abroker()
    assert await broker.jobs() == []
    assert await broker.queues() == []


async def test_a_poison_job_dead_lettered_by_a_claim_ends_the_batch(
    make_broker: MakeBroker,
) -> None:
    broker: Broker = await make_broker(max_recoveries=0)
    batch_id = new_job_id()
    member = Message(id=new_job_id(), task="t", created_at=utcnow(),
                     headers={"batch_id": batch_id})  # fmt: skip
    job = EnqueueRequest(member, encode(member))
    callback = Message(id=new_job_id(), task="cb", args=["__dromos_batch_summary__", 7],
                       created_at=utcnow())  # fmt: skip
    assert SUMMARY_PLACEHOLDER in encode(callback)
    record = BatchRecord(batch_id, 1, EnqueueRequest(callback, encode(callback)))
    await submitted(broker.enqueue_batch(record, [job]))
    assert [d.job_id for d in await broker.claim(["default"], 10, 0.05)] == [job.message.id]
    await asyncio.sleep(0.15)
    delivered = await broker.claim(["default"], 10, 30.0)  # dead-letters it, then the callback
    assert [d.job_id for d in delivered] == [callback.id]
    expected = (f'{{"batch_id":"{batch_id}","total":1,"succeeded":0,"failed":1,'
                f'"cancelled":0}}').encode()  # fmt: skip
    assert delivered[0].payload == encode(callback).replace(SUMMARY_PLACEHOLDER, expected)
    status = await broker.batch_status(batch_id)
    assert status is not None
    assert (status.failed, status.done, status.callback_id) == (1, True, callback.id)
    dead = await broker.status(job.message.id)
    assert dead is not None
    assert dead.state is JobState.FAILED


async def test_the_callback_keeps_its_own_options(app: dromos.App, workers: Workers) -> None:
    """The callback is stored with the batch and queued at its end: as its call asked."""

    @app.task
    async def work(n: int) -> int:
        return n

    @app.task
    async def report(result: Summary, tag: str) -> str:
        return f"{tag} {result['succeeded']}"

    batch = await submitted(
        work.amap(range(3), on_complete=report.options(priority=7).call("done"))
    )
    workers.start(app)
    await batch.aresults(timeout=20)
    status = await batch.astatus()
    assert status.callback_id is not None
    callback = app.job(status.callback_id)
    assert await callback.aresult(timeout=10) == "done 3"
    ended = await callback.astatus()
    assert ended is not None
    assert (ended.task, ended.queue, ended.priority) == ("report", "default", 7)
