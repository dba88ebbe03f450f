"""The SQLite broker's blocking enqueue: in the caller's thread, with the in-process wake-up."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from dromos.brokers.base import EnqueueRequest
from dromos.brokers.sqlite import SQLiteBroker
from dromos.message import Message, encode, new_job_id, utcnow


def _request(queue: str = "default") -> EnqueueRequest:
    message = Message(id=new_job_id(), task="t", queue=queue, created_at=utcnow())
    return EnqueueRequest(message, encode(message))


def test_enqueue_blocking_before_open_stores_nothing(tmp_path: Path) -> None:
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/x.db")
    assert broker.enqueue_blocking([_request()]) is None
    assert not (tmp_path / "x.db").exists()


async def test_enqueue_blocking_runs_in_the_calling_thread(tmp_path: Path) -> None:
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/x.db")
    await broker.open()
    threads = []
    enqueue = broker._enqueue

    def spy(requests: list[EnqueueRequest]) -> list[str]:
        threads.append(threading.current_thread())
        return enqueue(requests)

    broker._enqueue = spy  # type: ignore[method-assign]
    caller = await asyncio.to_thread(
        lambda: (threading.current_thread(), broker.enqueue_blocking([_request()]))
    )
    await broker.close()
    assert threads == [caller[0]]
    assert caller[1] is not None


async def test_enqueue_blocking_wakes_a_waiter_of_this_process_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/x.db")
    await broker.open()
    # Blind the poll of other processes' commits: only the in-process wake-up is left.
    monkeypatch.setattr(broker, "_data_version", lambda: 0)
    waiting = asyncio.create_task(broker.wait_for_work(["images"], 60.0))
    await asyncio.sleep(0.05)  # the waiter is parked
    await asyncio.to_thread(broker.enqueue_blocking, [_request("images")])
    try:
        await asyncio.wait_for(waiting, 10)
    finally:
        await broker.close()


async def test_enqueue_blocking_after_close_stores_nothing(tmp_path: Path) -> None:
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/x.db")
    await broker.open()
    await broker.close()
    assert await asyncio.to_thread(broker.enqueue_blocking, [_request()]) is None
    await broker.open()
    try:
        assert await broker.jobs() == []
    finally:
        await broker.close()
