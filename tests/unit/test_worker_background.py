"""Nothing a worker cancels runs on past it, even when a cancellation is swallowed: on
Python 3.11 ``asyncio.wait_for`` drops one that lands as its inner awaitable finishes, and
redis-py wraps each socket write in it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import pytest

import dromos
from dromos._loop import cancel_and_wait, finish, first_of
from dromos.brokers.memory import MemoryBroker
from dromos.webhooks import Deliverer


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


async def _idle(
    monkeypatch: pytest.MonkeyPatch, wait: Callable[[float], Awaitable[None]]
) -> tuple[dromos.App, dromos.Worker, asyncio.Task[None]]:
    """A worker on the memory broker, started and waiting for work in ``wait(timeout)``."""
    waiting = asyncio.Event()

    async def wait_for_work(self: MemoryBroker, queues: Sequence[str], timeout: float) -> None:
        waiting.set()
        await wait(timeout)

    monkeypatch.setattr(MemoryBroker, "wait_for_work", wait_for_work)
    app = dromos.App("idle", broker="memory://")
    worker = dromos.Worker(app, concurrency=1)
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(waiting.wait(), 10)
    return app, worker, running


async def test_an_idle_wait_that_swallows_its_cancellation_ends_before_the_worker_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The wait that ran on opened a new RabbitMQ connection after the app was closed, and
    # its event loop ended with that connection open (ResourceWarnings in later tests).
    waits = {"running": 0, "swallowed": 0}

    async def wait(timeout: float) -> None:
        waits["running"] += 1
        try:
            try:
                await asyncio.sleep(timeout)
            except asyncio.CancelledError:
                waits["swallowed"] += 1
            await asyncio.sleep(timeout)
        finally:
            waits["running"] -= 1

    app, worker, running = await _idle(monkeypatch, wait)
    worker.stop()
    await asyncio.wait_for(running, 10)
    assert waits == {"running": 0, "swallowed": 1}
    await app.aclose()


async def test_a_worker_cancelled_while_idle_ends_cancelled_and_its_wait_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # stop() ends an idle wait by cancelling it, and the worker takes that cancellation for
    # a stop; a cancellation of the worker's own task must still end the worker.
    waits = {"running": 0}

    async def wait(timeout: float) -> None:
        waits["running"] += 1
        try:
            await asyncio.sleep(timeout)
        finally:
            waits["running"] -= 1

    app, _, running = await _idle(monkeypatch, wait)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, 10)
    assert running.cancelled()
    assert waits == {"running": 0}
    await app.aclose()


async def test_an_idle_worker_stops_at_once_rather_than_at_the_end_of_its_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ended = asyncio.Event()

    async def wait(timeout: float) -> None:
        try:
            await asyncio.sleep(3600)  # far beyond the test's bound: only stop() ends it
        finally:
            ended.set()

    app, worker, running = await _idle(monkeypatch, wait)
    worker.stop()
    await asyncio.wait_for(running, 10)
    assert ended.is_set()
    await app.aclose()


async def test_a_slow_close_in_a_finally_runs_to_its_end_through_repeated_cancels() -> None:
    # The webhook deliverer closes its HTTP client in a finally; cut short by the worker's
    # repeated cancels on a loaded machine, it left sockets to be reported unclosed.
    closed: list[str] = []

    async def close() -> None:
        await asyncio.sleep(0.35)  # three of cancel_and_wait's 0.1 s rounds
        closed.append("closed")

    async def serve() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await finish(close())

    task = asyncio.create_task(serve())
    await asyncio.sleep(0)
    await cancel_and_wait([task])
    assert task.cancelled()  # the cancellation still ends it, once the close is done
    assert closed == ["closed"]


async def test_a_close_that_never_ends_is_given_up_at_its_limit() -> None:
    async def serve() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await finish(asyncio.sleep(60), limit=0.3)

    task = asyncio.create_task(serve())
    await asyncio.sleep(0)
    began = time.monotonic()
    await cancel_and_wait([task])
    assert task.cancelled()
    assert time.monotonic() - began < 5.0


async def test_the_webhook_deliverer_closes_its_client_when_its_worker_stops() -> None:
    app = dromos.App("t", "memory://")
    broker = await app.abroker()
    deliverer = Deliverer(broker, app.webhooks, "/t")
    closed: list[bool] = []

    class SlowClient:
        async def aclose(self) -> None:
            await asyncio.sleep(0.35)
            closed.append(True)

    deliverer._client = SlowClient()  # type: ignore[assignment]
    running = asyncio.create_task(deliverer.run(asyncio.Event()))
    await asyncio.sleep(0.05)
    await cancel_and_wait([running])
    assert closed == [True]
    await app.aclose()


async def test_first_of_returns_the_first_to_end_once_the_others_ended() -> None:
    ended: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            ended.append("slow")

    async def failing() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("boom")

    first = await first_of(slow(), failing())
    assert ended == ["slow"]  # cancelled and waited for, before first_of returned
    assert isinstance(first.exception(), RuntimeError)  # returned, the caller's to raise
