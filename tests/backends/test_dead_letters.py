"""The dead-letter list: exhausted jobs and undeliverable messages, with reasons, and replay."""

from typing import Any

import pytest

import dromos
from dromos import JobState
from dromos.brokers.base import EnqueueRequest
from dromos.message import Message, encode, new_job_id, utcnow
from tests.backends.conftest import Workers


def _raw(task: str, args: list[Any], payload: bytes | None = None) -> EnqueueRequest:
    """A message put on the queue by someone else (another language, a bug, an attacker)."""
    message = Message(id=new_job_id(), task=task, args=args, created_at=utcnow())
    return EnqueueRequest(message, encode(message) if payload is None else payload)


async def test_an_exhausted_job_is_listed_in_the_dead_letters(
    app: dromos.App, workers: Workers
) -> None:
    @app.task(retries=1, backoff=0.01)
    async def doomed() -> None:
        raise ValueError("no")

    workers.start(app)
    job = await doomed.aenqueue()
    with pytest.raises(dromos.JobFailed):
        await job.aresult(timeout=10)
    dead = await (await app.abroker()).jobs(state=JobState.FAILED)
    assert [(d.id, len(d.errors)) for d in dead] == [(job.id, 2)]


async def test_a_replayed_dead_letter_runs_afresh_with_a_new_retry_budget(
    app: dromos.App, workers: Workers
) -> None:
    calls: list[int] = []

    @app.task(retries=2, backoff=0.01)
    async def flaky() -> int:
        calls.append(dromos.current_job().attempt)
        if len(calls) <= 5:  # three failures exhaust it; two more after the replay
            raise ConnectionError(f"call {len(calls)}")
        return len(calls)

    workers.start(app)
    job = await flaky.aenqueue()
    with pytest.raises(dromos.JobFailed):
        await job.aresult(timeout=10)
    assert await (await app.abroker()).replay([job.id]) == [job.id]
    assert await job.aresult(timeout=10) == 6
    status = await job.astatus()
    assert calls == [1, 2, 3, 4, 5, 6]
    assert (status.state, status.attempts, len(status.errors)) == (JobState.SUCCEEDED, 6, 5)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (_raw("add", [1, 2], payload=b"\x00garbage"), "DecodeError"),
        (_raw("add", [1, 2], payload=b'{"v": 99, "id": "x", "task": "add"}'), "DecodeError"),
        (_raw("no_such_task", []), "UnknownTask"),
        (_raw("add", ["one", "two"]), "InvalidArguments"),
        (_raw("add", [1]), "InvalidArguments"),
    ],
    ids=["garbage", "version-99", "unknown-task", "wrong-types", "missing-argument"],
)
async def test_a_bad_message_is_dead_lettered_with_its_reason_and_the_worker_goes_on(
    app: dromos.App, workers: Workers, bad: EnqueueRequest, reason: str
) -> None:
    @app.task(retries=3)
    async def add(a: int, b: int) -> int:
        return a + b

    broker = await app.abroker()
    workers.start(app, concurrency=1)
    await broker.enqueue([bad])
    good = await add.aenqueue(2, 3)
    assert await good.aresult(timeout=10) == 5
    status = await broker.wait(bad.message.id, 10)
    assert status is not None
    assert (status.state, status.attempts) == (JobState.FAILED, 1)  # never retried
    assert status.error is not None
    assert status.error.type == reason
    assert [d.id for d in await broker.jobs(state=JobState.FAILED)] == [bad.message.id]
