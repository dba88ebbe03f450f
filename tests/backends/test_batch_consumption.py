"""Batch consumption on every broker: ``@app.task(batch_size=N, batch_wait=S)`` (#8).

The function takes a list of items and returns one result per item; each job carries one item
and keeps its own status, result and retries.
"""

from __future__ import annotations

import asyncio

import pytest

import dromos
from tests.backends.conftest import Workers


async def test_jobs_are_called_together_and_each_gets_its_own_result(
    app: dromos.App, workers: Workers
) -> None:
    calls: list[list[int]] = []

    @app.task(batch_size=10, batch_wait=0.3)
    async def double(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [n * 2 for n in items]

    jobs = [await double.aenqueue(n) for n in range(25)]
    workers.start(app, concurrency=2)
    assert [await job.aresult(timeout=20) for job in jobs] == [n * 2 for n in range(25)]
    assert sorted(n for call in calls for n in call) == list(range(25))  # each job once
    assert max(len(call) for call in calls) == 10  # full batches, never more
    assert len(calls) <= 6  # together, not one call per job
    status = await jobs[3].astatus()
    assert (status.state.value, status.result, status.attempts) == ("succeeded", 6, 1)


async def test_a_lone_job_runs_after_batch_wait(app: dromos.App, workers: Workers) -> None:
    @app.task(batch_size=100, batch_wait=0.2)
    def total(items: list[dict[str, int]]) -> list[int]:  # a plain function, in a thread
        return [sum(item.values()) for item in items]

    workers.start(app)
    job = await total.aenqueue({"a": 1, "b": 2})
    assert await job.aresult(timeout=10) == 3


async def test_an_exception_in_the_results_fails_that_job_alone(
    app: dromos.App, workers: Workers
) -> None:
    @app.task(batch_size=8, batch_wait=0.3, retries=0)
    async def check(items: list[int]) -> list[int | Exception]:
        return [ValueError(f"{n} is odd") if n % 2 else n for n in items]

    jobs = await check.aenqueue_many([(n,) for n in range(6)])
    workers.start(app)
    for n, job in enumerate(jobs):
        if n % 2:
            with pytest.raises(dromos.JobFailed) as failed:
                await job.aresult(timeout=10)
            assert failed.value.status.error is not None
            assert failed.value.status.error.message == f"{n} is odd"
        else:
            assert await job.aresult(timeout=10) == n


async def test_a_batch_that_raises_retries_each_job_on_its_own_budget(
    app: dromos.App, workers: Workers
) -> None:
    seen: list[list[str]] = []

    @app.task(batch_size=4, batch_wait=0.2, retries=1, backoff=0.05)
    async def flaky(items: list[str]) -> None:
        seen.append(sorted(items))
        if len(seen) == 1:
            raise ConnectionError("the bulk API is down")

    jobs = await flaky.aenqueue_many([(s,) for s in "abcd"])
    workers.start(app)
    assert [await job.aresult(timeout=10) for job in jobs] == [None] * 4
    assert {(await job.astatus()).attempts for job in jobs} == {2}
    assert sorted(s for call in seen for s in call) == sorted("abcd" * 2)


async def test_a_result_list_of_the_wrong_length_fails_the_batch_clearly(
    app: dromos.App, workers: Workers
) -> None:
    @app.task(batch_size=5, batch_wait=0.2, retries=0)
    async def short(items: list[int]) -> list[int]:
        return items[:1]

    jobs = await short.aenqueue_many([(1,), (2,)])
    workers.start(app)
    for job in jobs:
        with pytest.raises(dromos.JobFailed) as failed:
            await job.aresult(timeout=10)
        error = failed.value.status.error
        assert error is not None
        assert error.type == "TypeError"
        assert "one result per item" in error.message


async def test_progress_of_the_batch_is_each_jobs_progress(
    app: dromos.App, workers: Workers
) -> None:
    release = asyncio.Event()

    @app.task(batch_size=3, batch_wait=0.2)
    async def slow(items: list[int]) -> None:
        await dromos.current_job().progress(0.5, "half way")
        await release.wait()

    jobs = await slow.aenqueue_many([(n,) for n in range(3)])
    workers.start(app)
    for _ in range(100):
        statuses = [await job.astatus() for job in jobs]
        if all(s.progress == 0.5 for s in statuses):
            break
        await asyncio.sleep(0.05)
    assert [(s.state.value, s.progress, s.message) for s in statuses] == [
        ("running", 0.5, "half way")
    ] * 3
    release.set()
    assert [await job.aresult(timeout=10) for job in jobs] == [None] * 3


async def test_items_are_checked_at_enqueue(app: dromos.App) -> None:
    @app.task(batch_size=10)
    async def store(rows: list[int]) -> None: ...

    with pytest.raises(dromos.ValidationError):
        await store.aenqueue("not a number")  # type: ignore[arg-type]
    assert await store([1, 2]) is None  # called directly: the function, on the list


def test_a_batch_function_takes_exactly_one_list(app: dromos.App) -> None:
    with pytest.raises(dromos.ConfigurationError, match="exactly one parameter"):

        @app.task(batch_size=10)
        async def two(rows: list[int], table: str) -> None: ...
