"""Waiting on SQLite for jobs another process ends: one watcher per loop wakes the waiters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dromos.brokers import sqlite
from dromos.brokers.base import EnqueueRequest, Outcome
from dromos.brokers.sqlite import SQLiteBroker
from dromos.job import JobState
from dromos.message import Message, encode, new_job_id, utcnow


def _request() -> EnqueueRequest:
    message = Message(id=new_job_id(), task="t", queue="default", created_at=utcnow())
    return EnqueueRequest(message, encode(message))


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[SQLiteBroker, SQLiteBroker]]:
    """Two brokers on one file: the second stands for another process (its own connections)."""
    url = f"sqlite:///{tmp_path}/x.db"
    here, there = SQLiteBroker(url), SQLiteBroker(url)
    await here.open()
    await there.open()
    yield here, there
    await here.close()
    await there.close()


async def test_waiters_wake_when_another_connection_ends_their_job(
    two: tuple[SQLiteBroker, SQLiteBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    here, there = two
    monkeypatch.setattr(sqlite, "_RECHECK", 60.0)  # no periodic re-read: only the watcher
    req = _request()
    await there.enqueue([req])
    waiters = [asyncio.create_task(here.wait(req.message.id, 30.0)) for _ in range(20)]
    await asyncio.sleep(0.1)  # all parked
    [delivery] = await there.claim(["default"], 1, 30.0)
    await there.settle([Outcome(delivery.job_id, delivery.attempt, JobState.SUCCEEDED)])
    done = await asyncio.wait_for(asyncio.gather(*waiters), 10.0)  # not the 30 s timeout
    assert {s.state for s in done if s is not None} == {JobState.SUCCEEDED}
    assert len(done) == 20


async def test_other_commits_do_not_make_each_waiter_read_its_job_again(
    two: tuple[SQLiteBroker, SQLiteBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 100 waiters and 30 unrelated commits elsewhere: each waiter reads its status once
    # when it starts and once when its job ends, not once per commit (3,000 reads before).
    here, there = two
    monkeypatch.setattr(sqlite, "_RECHECK", 60.0)
    req = _request()
    await there.enqueue([req])
    reads = 0
    status = here._status

    def counted(job_id: str) -> object:
        nonlocal reads
        reads += 1
        return status(job_id)

    monkeypatch.setattr(here, "_status", counted)
    waiters = [asyncio.create_task(here.wait(req.message.id, 30.0)) for _ in range(100)]
    await asyncio.sleep(0.1)
    for _ in range(30):
        await there.enqueue([_request()])
        await asyncio.sleep(0.005)  # each seen by the watcher as a change of its own
    [delivery] = await there.claim(["default"], 1, 30.0)
    await there.settle([Outcome(delivery.job_id, delivery.attempt, JobState.SUCCEEDED)])
    await asyncio.wait_for(asyncio.gather(*waiters), 10.0)
    assert reads == 200
