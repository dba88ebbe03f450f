"""Failure handling through a worker: retries with backoff, retry_on, Retry, time limits."""

import asyncio
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

import dromos
from dromos import JobState
from dromos.brokers.base import Outcome
from tests.backends._support import SkewedClock, eventually
from tests.backends.conftest import Workers
from tests.cancellation import swallowing_loop


async def test_a_failing_task_is_retried_with_backoff_until_it_succeeds(
    app: dromos.App, workers: Workers
) -> None:
    calls: list[int] = []

    @app.task(retries=3, backoff=0.01)
    async def flaky() -> str:
        calls.append(dromos.current_job().attempt)
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)}")
        return "ok"

    workers.start(app)
    job = await flaky.aenqueue()
    assert await job.aresult(timeout=10) == "ok"
    assert calls == [1, 2, 3]
    status = await job.astatus()
    assert (status.state, status.attempts, status.error) == (JobState.SUCCEEDED, 3, None)
    assert [(e.type, e.message, e.attempt) for e in status.errors] == [
        ("ConnectionError", "try 1", 1),
        ("ConnectionError", "try 2", 2),
    ]


async def test_a_plain_task_is_retried_like_an_async_one(app: dromos.App, workers: Workers) -> None:
    calls: list[int] = []

    @app.task(retries=1, backoff=0.01)
    def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk busy")
        return len(calls)

    workers.start(app)
    assert await (await flaky.aenqueue()).aresult(timeout=10) == 2


async def test_exhausted_retries_fail_the_job_with_every_attempts_error(
    app: dromos.App, workers: Workers
) -> None:
    @app.task(retries=2, backoff=0.01)
    async def doomed() -> None:
        raise ValueError(f"attempt {dromos.current_job().attempt}")

    workers.start(app)
    job = await doomed.aenqueue()
    with pytest.raises(dromos.JobFailed) as failed:
        await job.aresult(timeout=10)
    status = failed.value.status
    assert (status.state, status.attempts) == (JobState.FAILED, 3)
    assert [(e.type, e.message) for e in status.errors] == [
        ("ValueError", "attempt 1"),
        ("ValueError", "attempt 2"),
        ("ValueError", "attempt 3"),
    ]
    assert all(e.traceback and "ValueError" in e.traceback for e in status.errors)
    assert status.error == status.errors[-1]


async def test_retries_zero_fails_at_the_first_error(app: dromos.App, workers: Workers) -> None:
    @app.task(retries=0)
    async def once() -> None:
        raise RuntimeError("no")

    workers.start(app)
    with pytest.raises(dromos.JobFailed) as failed:
        await (await once.aenqueue()).aresult(timeout=10)
    assert (failed.value.status.attempts, len(failed.value.status.errors)) == (1, 1)


async def test_per_job_retries_override_the_tasks(app: dromos.App, workers: Workers) -> None:
    calls: list[int] = []

    @app.task(retries=5, backoff=0.01)
    async def flaky() -> None:
        calls.append(1)
        raise ConnectionError("down")

    workers.start(app)
    job = await flaky.options(retries=1).aenqueue()
    with pytest.raises(dromos.JobFailed):
        await job.aresult(timeout=10)
    assert len(calls) == 2


async def test_an_exception_outside_retry_on_fails_at_once(
    app: dromos.App, workers: Workers
) -> None:
    calls: list[int] = []

    @app.task(retries=3, backoff=0.01, retry_on=(ConnectionError,))
    async def picky() -> None:
        calls.append(1)
        raise KeyError("not retryable")

    workers.start(app)
    job = await picky.aenqueue()
    with pytest.raises(dromos.JobFailed) as failed:
        await job.aresult(timeout=10)
    assert calls == [1]
    assert failed.value.status.error is not None
    assert failed.value.status.error.type == "KeyError"


async def test_an_exception_in_retry_on_is_retried(app: dromos.App, workers: Workers) -> None:
    calls: list[int] = []

    @app.task(retries=3, backoff=0.01, retry_on=(OSError,))
    async def picky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("a subclass of OSError")
        return len(calls)

    workers.start(app)
    assert await (await picky.aenqueue()).aresult(timeout=10) == 2


async def test_raising_retry_runs_again_after_its_delay(app: dromos.App, workers: Workers) -> None:
    raised_at: list[float] = []
    ran_at: list[float] = []

    @app.task(retries=3, backoff=60.0)  # the task's own backoff would wait a minute
    async def poll() -> str:
        ran_at.append(time.time())
        if len(ran_at) == 1:
            raised_at.append(time.time())
            raise dromos.Retry(delay=0.3, reason="not ready")
        return "ready"

    workers.start(app)
    job = await poll.aenqueue()
    assert await job.aresult(timeout=10) == "ready"
    assert ran_at[1] >= raised_at[0] + 0.3
    [error] = (await job.astatus()).errors
    assert (error.type, error.message) == ("Retry", "not ready (in 0.3s)")


async def test_retry_counts_against_the_attempts(app: dromos.App, workers: Workers) -> None:
    @app.task(retries=1)
    async def forever() -> None:
        raise dromos.Retry(delay=0.01)

    workers.start(app)
    with pytest.raises(dromos.JobFailed) as failed:
        await (await forever.aenqueue()).aresult(timeout=10)
    assert failed.value.status.attempts == 2


async def test_an_async_task_past_its_time_limit_is_cancelled_and_fails(
    app: dromos.App, workers: Workers
) -> None:
    interrupted = asyncio.Event()

    @app.task(retries=0, timeout=0.2)
    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            interrupted.set()
            raise

    workers.start(app)
    job = await slow.aenqueue()
    with pytest.raises(dromos.JobFailed) as failed:
        await job.aresult(timeout=10)
    assert interrupted.is_set()
    error = failed.value.status.error
    assert error is not None
    assert (error.type, error.message) == (
        "TimeoutError",
        "the attempt exceeded its time limit of 0.2s",
    )


async def test_a_task_that_swallows_its_time_limits_cancellation_still_fails_at_it(
    app: dromos.App, workers: Workers
) -> None:
    # redis-py on Python 3.11 swallows a cancellation that lands as a command's write ends:
    # with asyncio.timeout, such a task ran on past its limit and succeeded.
    @app.task(retries=0, timeout=0.2)
    async def stubborn() -> None:
        await swallowing_loop()

    workers.start(app)
    job = await stubborn.aenqueue()
    with pytest.raises(dromos.JobFailed) as failed:
        await job.aresult(timeout=10)
    error = failed.value.status.error
    assert error is not None
    assert (error.type, error.message) == (
        "TimeoutError",
        "the attempt exceeded its time limit of 0.2s",
    )


async def test_a_per_job_timeout_overrides_the_tasks(app: dromos.App, workers: Workers) -> None:
    @app.task(retries=0, timeout=30)
    async def slow() -> None:
        await asyncio.sleep(30)

    workers.start(app)
    with pytest.raises(dromos.JobFailed) as failed:
        await (await slow.options(timeout=0.1).aenqueue()).aresult(timeout=10)
    assert failed.value.status.error is not None
    assert failed.value.status.error.type == "TimeoutError"


async def test_a_timeout_error_raised_by_the_task_itself_is_reported_as_such(
    app: dromos.App, workers: Workers
) -> None:
    @app.task(retries=0, timeout=30)
    async def calls_out() -> None:
        raise TimeoutError("upstream took too long")

    @app.task(retries=0)  # no time limit of its own: reported alike (not UnboundLocalError)
    async def waits_for_upstream() -> None:
        await asyncio.wait_for(asyncio.sleep(10), 0.01)

    workers.start(app)
    with pytest.raises(dromos.JobFailed) as failed:
        await (await calls_out.aenqueue()).aresult(timeout=10)
    assert failed.value.status.error is not None
    assert failed.value.status.error.message == "upstream took too long"
    with pytest.raises(dromos.JobFailed) as failed:
        await (await waits_for_upstream.aenqueue()).aresult(timeout=10)
    assert failed.value.status.error is not None
    assert failed.value.status.error.type == "TimeoutError"


async def test_a_plain_task_past_its_time_limit_fails_while_the_worker_keeps_serving(
    app: dromos.App, workers: Workers
) -> None:
    release = threading.Event()
    saw_cancelled: list[bool] = []

    @app.task(retries=0, timeout=0.2)
    def stuck() -> None:
        release.wait(30)  # ignores the flag until the test lets it go
        saw_cancelled.append(dromos.current_job().cancelled)

    @app.task
    def quick(x: int) -> int:
        return x * 2

    workers.start(app, concurrency=1, prefetch=0)
    try:
        job = await stuck.aenqueue()
        with pytest.raises(dromos.JobFailed) as failed:
            await job.aresult(timeout=10)
        assert failed.value.status.error is not None
        assert failed.value.status.error.type == "TimeoutError"
        # The only slot's thread is still blocked, yet the worker runs the next job.
        assert await (await quick.aenqueue(21)).aresult(timeout=10) == 42
    finally:
        release.set()
    await eventually(lambda: bool(saw_cancelled), what="the abandoned thread finished")
    assert saw_cancelled == [True]


async def _failed(job: dromos.Job[Any], match: str | None = None) -> dromos.JobStatus:
    """The status of ``job``, whose result must raise JobFailed (saying ``match``)."""
    with pytest.raises(dromos.JobFailed, match=match):
        await job.aresult(timeout=30)
    status = await job.astatus()
    assert status is not None
    return status


async def test_text_that_is_not_utf8_in_an_error_or_progress_is_escaped_not_fatal(
    app: dromos.App, workers: Workers
) -> None:
    # os.fsdecode() of a file name that is not UTF-8 leaves a lone surrogate in the text:
    # raw, it made every write of the worker's outcomes fail, and no later job ended either.
    @app.task(retries=0)
    async def read() -> None:
        path = os.fsdecode(b"report-\xff.csv")
        await dromos.current_job().progress(0.5, f"reading {path}")
        raise FileNotFoundError(2, "No such file or directory", path)

    @app.task
    async def add(a: int, b: int) -> int:
        return a + b

    workers.start(app)
    status = await _failed(await read.aenqueue())
    assert status.state is JobState.FAILED
    assert "report-\\udcff.csv" in status.errors[-1].message
    assert status.message == "reading report-\\udcff.csv"
    assert await (await add.aenqueue(2, 3)).aresult(timeout=30) == 5  # the worker goes on


async def test_an_outcome_the_broker_cannot_take_fails_its_job_and_holds_back_no_other(
    app: dromos.App, workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Should any outcome be unwritable (a bug, a value no store takes), retrying its batch
    # would fail forever and every later outcome of the worker with it.
    @app.task
    async def echo(text: str) -> str:
        return text

    broker = await app.abroker()
    settle = broker.settle

    async def refusing(outcomes: Sequence[Outcome]) -> int:
        if any(o.result and b"poison" in o.result for o in outcomes):
            raise TypeError("cannot store this result")
        return await settle(outcomes)

    monkeypatch.setattr(broker, "settle", refusing)
    workers.start(app, concurrency=8)
    jobs = await echo.aenqueue_many([echo.call(t) for t in ["a", "poison", "b", "c"]])
    assert await jobs[0].aresult(timeout=30) == "a"
    assert [await j.aresult(timeout=30) for j in jobs[2:]] == ["b", "c"]
    with pytest.raises(dromos.JobFailed, match="OutcomeNotWritten"):
        await jobs[1].aresult(timeout=30)
    after = await echo.aenqueue("d")
    assert await after.aresult(timeout=30) == "d"


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no words for this")


async def test_an_exception_whose_str_raises_fails_its_job_at_once(
    app: dromos.App, workers: Workers
) -> None:
    # Its str() crashed the run's bookkeeping: the job stayed running until its lease ended,
    # then again at every attempt, until dead-lettered as Poison.
    @app.task(retries=0)
    async def odd() -> None:
        raise _Unprintable

    workers.start(app)
    status = await _failed(await odd.aenqueue())
    assert [(e.type, e.message) for e in status.errors] == [
        ("_Unprintable", "<_Unprintable: its str() raised RuntimeError>")
    ]


async def test_a_task_calling_sys_exit_fails_its_job_and_the_worker_goes_on(
    app: dromos.App, workers: Workers
) -> None:
    # A script turned into a task keeps its sys.exit(): raised through the event loop, it
    # ended the worker's process, with every job it held, at every attempt of that job.
    @app.task(retries=0)
    async def script_async() -> None:
        sys.exit(3)

    @app.task(retries=0)
    def script_plain() -> None:  # in a worker thread
        sys.exit("no input file")

    @app.task
    async def add(a: int, b: int) -> int:
        return a + b

    workers.start(app)
    for job, message in [(await script_async.aenqueue(), "3"),
                         (await script_plain.aenqueue(), "no input file")]:  # fmt: skip
        status = await _failed(job, match="SystemExit")
        assert [(e.type, e.message) for e in status.errors] == [("SystemExit", message)]
    assert await (await add.aenqueue(2, 3)).aresult(timeout=30) == 5


@pytest.mark.parametrize("skew", [-30.0, 30.0], ids=["behind", "ahead"])
async def test_a_retry_waits_its_delay_on_the_brokers_clock_whatever_the_workers(
    app: dromos.App, workers: Workers, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    # RELIABILITY #13: the broker's clock decides. A worker 30 s behind retried at once
    # (its "now + 0.6 s" was already past); one 30 s ahead retried 30 s late.
    monkeypatch.setattr("dromos.worker.runtime.time", SkewedClock(skew))
    started: list[float] = []

    @app.task(retries=1)
    async def flaky() -> int:
        started.append(time.monotonic())
        if len(started) == 1:
            raise dromos.Retry(delay=0.6, reason="not yet")
        return 1

    job = await flaky.aenqueue()
    workers.start(app)
    assert await job.aresult(timeout=20) == 1
    assert 0.5 <= started[1] - started[0] < 10
