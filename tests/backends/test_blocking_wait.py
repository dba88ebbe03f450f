"""The blocking ``job.result()``: served in the caller's thread where the broker can (Redis:
the caller blocks on a list that the script ending the job pushes to), on the portal's loop
otherwise, with the same outcomes either way."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable

import pytest

import dromos
from tests.backends.conftest import Workers


async def test_a_blocking_result_waits_for_a_job_that_runs_later(
    app: dromos.App, workers: Workers
) -> None:
    @app.task
    async def add(a: int, b: int) -> int:
        return a + b

    job = await add.aenqueue(2, 3)
    waiting = asyncio.ensure_future(asyncio.to_thread(job.result, 30))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # nothing ran it yet
    workers.start(app)
    assert await waiting == 5


async def test_a_blocking_result_of_an_ended_job_comes_back_as_it_ended(
    app: dromos.App, workers: Workers
) -> None:
    @app.task
    async def echo(text: str) -> str:
        return text

    @app.task(retries=0)
    async def broken() -> None:
        raise ValueError("no")

    workers.start(app)
    done, failed = await echo.aenqueue("hi"), await broken.aenqueue()
    await done.aresult(timeout=30)
    with pytest.raises(dromos.JobFailed):
        await failed.aresult(timeout=30)
    assert await asyncio.to_thread(done.result, 10) == "hi"
    with pytest.raises(dromos.JobFailed, match="ValueError"):
        await asyncio.to_thread(failed.result, 10)


async def test_a_blocking_result_times_out_and_a_later_wait_gets_the_result(
    app: dromos.App, workers: Workers
) -> None:
    @app.task
    async def echo(text: str) -> str:
        return text

    job = await echo.aenqueue("late")
    with pytest.raises(dromos.ResultTimeout):
        await asyncio.to_thread(job.result, 0.3)
    workers.start(app)
    assert await asyncio.to_thread(job.result, 30) == "late"


async def test_threads_waiting_for_one_job_all_get_its_result(
    app: dromos.App, workers: Workers
) -> None:
    @app.task
    async def echo(text: str) -> str:
        return text

    job = await echo.aenqueue("shared")
    waiting = [asyncio.ensure_future(asyncio.to_thread(job.result, 30)) for _ in range(5)]
    await asyncio.sleep(0.3)
    workers.start(app)
    assert await asyncio.gather(*waiting) == ["shared"] * 5


async def test_a_blocking_result_of_a_job_cancelled_while_waited_for_raises_cancelled(
    app: dromos.App,
) -> None:
    @app.task
    async def echo(text: str) -> str:
        return text

    job = await echo.aenqueue("never")
    waiting = asyncio.ensure_future(asyncio.to_thread(job.result, 30))
    await asyncio.sleep(0.3)
    await job.acancel()
    with pytest.raises(dromos.JobCancelled):
        await waiting


async def test_a_replayed_dead_letter_is_waited_for_anew(app: dromos.App, workers: Workers) -> None:
    runs: list[int] = []

    @app.task(retries=0)
    async def flaky(i: int) -> int:
        runs.append(i)
        if len(runs) == 1:
            raise ValueError("first run fails")
        return i

    job = await flaky.aenqueue(7)
    worker = workers.start(app)
    with pytest.raises(dromos.JobFailed):
        await asyncio.to_thread(job.result, 30)
    await workers.stop(worker)
    broker = await app.abroker()
    assert await broker.replay([job.id]) == [job.id]
    waiting = asyncio.ensure_future(asyncio.to_thread(job.result, 30))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # the earlier end does not answer the new wait
    workers.start(app)
    assert await waiting == 7


async def test_a_blocking_result_longer_than_a_push_carries_comes_whole(
    app: dromos.App, workers: Workers
) -> None:
    @app.task
    async def big(n: int) -> str:
        return "x" * n

    workers.start(app)
    job = await big.aenqueue(100_000)
    assert await asyncio.to_thread(job.result, 30) == "x" * 100_000


def test_a_blocking_result_of_no_such_job_raises_not_found(
    make_app: Callable[..., dromos.App],
) -> None:
    app = make_app()

    @app.task
    def noop() -> None: ...

    noop.enqueue()  # connects the broker: the blocking paths are open
    with pytest.raises(dromos.JobNotFound):
        app.job("0" * 26).result(timeout=5)


async def test_blocking_waits_from_many_threads_each_get_their_own_result(
    app: dromos.App, workers: Workers
) -> None:
    # A threaded web server whose request threads each enqueue and wait: every wait holds
    # a connection of the blocking client (Redis) or waits on the portal.
    @app.task
    async def square(i: int) -> int:
        return i * i

    await square.aenqueue(0)  # connects the broker: the blocking paths are open
    workers.start(app, concurrency=16)
    start = threading.Barrier(40)

    def one(i: int) -> int:
        start.wait(timeout=30)
        return square.enqueue(i).result(timeout=60)

    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        got = await asyncio.get_running_loop().run_in_executor(
            None, lambda: list(pool.map(one, range(40)))
        )
    assert got == [i * i for i in range(40)]
