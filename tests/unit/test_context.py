"""``current_job()``: the running job through a context variable, never global state."""

import asyncio

import pytest

import dromos
from dromos.context import JobContext, run_as


def test_current_job_outside_a_task_raises_a_helpful_dromos_error() -> None:
    with pytest.raises(dromos.DromosError, match=r"outside a running task.*@app\.task"):
        dromos.current_job()


def test_current_job_inside_run_as_is_that_job() -> None:
    ctx = JobContext("job-1", "resize", attempt=2)
    assert run_as(ctx, dromos.current_job) is ctx
    with pytest.raises(dromos.DromosError):
        dromos.current_job()


async def test_concurrent_async_tasks_each_see_their_own_job() -> None:
    async def report(ctx: JobContext) -> str:
        token = dromos.context.set_current(ctx)
        try:
            await asyncio.sleep(0)
            return dromos.current_job().id
        finally:
            dromos.context.reset_current(token)

    ids = await asyncio.gather(*(report(JobContext(f"job-{i}", "t")) for i in range(10)))
    assert ids == [f"job-{i}" for i in range(10)]


def test_progress_is_handed_to_the_reporter() -> None:
    seen: list[tuple[str, float, str | None]] = []
    ctx = JobContext("job-1", "t", report=lambda c, f, m: seen.append((c.id, f, m)))
    ctx.progress(0.5, "half")
    ctx.progress(1)
    assert seen == [("job-1", 0.5, "half"), ("job-1", 1.0, None)]


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_progress_outside_zero_to_one_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        JobContext("job-1", "t").progress(fraction)


async def test_progress_can_be_awaited_from_async_code() -> None:
    await JobContext("job-1", "t").progress(0.3)


def test_the_cancelled_flag_starts_false_and_latches() -> None:
    ctx = JobContext("job-1", "t")
    assert not ctx.cancelled
    ctx._cancel()
    assert ctx.cancelled
