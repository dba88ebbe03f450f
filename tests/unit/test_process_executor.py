"""executor="process": plain CPU-bound tasks run in a pool of separate processes."""

import asyncio
import os

import pytest

import dromos
from tests.unit import process_tasks as mod


@pytest.mark.slow
async def test_process_task_runs_in_another_process_and_survives_a_crashed_child() -> None:
    worker = mod.app.worker(concurrency=2)
    running = asyncio.create_task(worker.run())
    try:
        job = await mod.child_pid.aenqueue()
        assert await job.aresult(timeout=60) != os.getpid()
        crashed = await mod.crash.aenqueue(3)
        with pytest.raises(dromos.JobFailed) as info:
            await crashed.aresult(timeout=60)
        assert info.value.status.error is not None
        assert info.value.status.error.type == "BrokenProcessPool"
        again = await mod.child_pid.aenqueue()  # a fresh pool replaces the broken one
        assert await again.aresult(timeout=60) != os.getpid()
    finally:
        worker.stop()
        await running


def test_async_function_cannot_ask_for_a_process_pool() -> None:
    app = dromos.App("t", broker="memory://")
    with pytest.raises(dromos.ConfigurationError, match="plain functions"):

        @app.task(executor="process")
        async def nope() -> None: ...
