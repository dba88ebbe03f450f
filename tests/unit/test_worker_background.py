"""Nothing a worker cancels runs on past it, even when a cancellation is swallowed: on
Python 3.11 ``asyncio.wait_for`` drops one that lands as its inner awaitable finishes, and
redis-py wraps each socket write in it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

import dromos
from dromos._loop import cancel_and_wait
from dromos.brokers.memory import MemoryBroker


async def test_a_loop_that_swallows_its_first_cancellation_still_ends_promptly() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # as a client library that caught it mid-command

    async def plain() -> None:
        await asyncio.sleep(60)

    tasks = [asyncio.create_task(stubborn()), asyncio.create_task(plain())]
    await asyncio.sleep(0)
    began = time.monotonic()
    await cancel_and_wait(tasks)
    assert time.monotonic() - began < 5.0
    assert all(t.done() for t in tasks)
    assert swallowed == 1


async def test_an_idle_wait_that_swallows_its_cancellation_ends_before_the_worker_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The wait that ran on opened a new RabbitMQ connection after the app was closed, and
    # its event loop ended with that connection open (ResourceWarnings in later tests).
    waits = {"running": 0, "swallowed": 0}
    waiting = asyncio.Event()

    async def wait_for_work(self: MemoryBroker, queues: Sequence[str], timeout: float) -> None:
        waits["running"] += 1
        waiting.set()
        try:
            try:
                await asyncio.sleep(timeout)
            except asyncio.CancelledError:
                waits["swallowed"] += 1
            await asyncio.sleep(timeout)
        finally:
            waits["running"] -= 1

    monkeypatch.setattr(MemoryBroker, "wait_for_work", wait_for_work)
    app = dromos.App("idle", broker="memory://")
    worker = dromos.Worker(app, concurrency=1)
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(waiting.wait(), 10)
    worker.stop()
    await asyncio.wait_for(running, 10)
    assert waits == {"running": 0, "swallowed": 1}
    await app.aclose()
