"""Cancellation through the public API: waiting jobs at once, running ones at the heartbeat."""

import asyncio
import threading
import time

import pytest

import dromos
from dromos import JobState
from tests.backends._support import eventually
from tests.backends.conftest import Workers


async def test_a_queued_job_is_cancelled_at_once_and_never_runs(
    app: dromos.App, workers: Workers
) -> None:
    ran: list[int] = []

    @app.task
    async def work() -> None:
        ran.append(1)

    job = await work.aenqueue()
    assert await job.acancel() is JobState.CANCELLED
    marker = await work.aenqueue()  # runs after the cancelled one would have
    workers.start(app, concurrency=1)
    await marker.aresult(timeout=10)
    assert ran == [1]
    with pytest.raises(dromos.JobCancelled):
        await job.aresult(timeout=1)


async def test_a_delayed_job_can_be_cancelled_before_its_time(
    app: dromos.App, workers: Workers
) -> None:
    ran: list[int] = []

    @app.task
    async def work() -> None:
        ran.append(1)

    job = await work.options(delay=0.2).aenqueue()
    assert await job.acancel() is JobState.CANCELLED
    workers.start(app)
    await asyncio.sleep(0.4)
    assert ran == []
    assert (await job.astatus()).state is JobState.CANCELLED


async def test_a_running_async_job_is_cancelled(app: dromos.App, workers: Workers) -> None:
    started = asyncio.Event()
    interrupted = asyncio.Event()

    @app.task
    async def endless() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            interrupted.set()
            raise

    workers.start(app)
    job = await endless.aenqueue()
    await asyncio.wait_for(started.wait(), 10)
    assert await job.acancel() is JobState.RUNNING
    with pytest.raises(dromos.JobCancelled) as cancelled:
        await job.aresult(timeout=10)
    assert cancelled.value.status.state is JobState.CANCELLED
    assert interrupted.is_set()


async def test_a_running_plain_job_sees_its_cancelled_flag_and_ends_cancelled(
    app: dromos.App, workers: Workers
) -> None:
    started = threading.Event()
    saw_flag = threading.Event()

    @app.task
    def cooperative() -> str:
        started.set()
        job = dromos.current_job()
        for _ in range(3000):  # bounded: at most ~30 s
            if job.cancelled:
                saw_flag.set()
                return "stopped early"
            time.sleep(0.01)
        return "ran to the end"

    workers.start(app)
    job = await cooperative.aenqueue()
    await eventually(started.is_set, what="the plain task started")
    assert await job.acancel() is JobState.RUNNING
    with pytest.raises(dromos.JobCancelled):
        await job.aresult(timeout=10)
    await eventually(saw_flag.is_set, what="the task saw current_job().cancelled")
    assert (await job.astatus()).state is JobState.CANCELLED


async def test_cancelling_an_ended_job_leaves_its_result(app: dromos.App, workers: Workers) -> None:
    @app.task
    async def answer() -> int:
        return 42

    workers.start(app)
    job = await answer.aenqueue()
    await job.aresult(timeout=10)
    assert await job.acancel() is JobState.SUCCEEDED
    assert await job.aresult(timeout=1) == 42


async def test_cancelling_an_unknown_job_raises_job_not_found(app: dromos.App) -> None:
    with pytest.raises(dromos.JobNotFound):
        await app.job("0190b5b2-0000-7000-8000-000000000000").acancel()


async def test_a_cancelled_job_is_not_retried(app: dromos.App, workers: Workers) -> None:
    started = asyncio.Event()
    runs: list[int] = []

    @app.task(retries=3, backoff=0.01)
    async def endless() -> None:
        runs.append(1)
        started.set()
        await asyncio.sleep(60)

    workers.start(app)
    job = await endless.aenqueue()
    await asyncio.wait_for(started.wait(), 10)
    await job.acancel()
    with pytest.raises(dromos.JobCancelled):
        await job.aresult(timeout=10)
    await asyncio.sleep(0.1)
    assert runs == [1]
