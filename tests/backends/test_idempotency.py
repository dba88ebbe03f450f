"""Enqueueing: idempotency keys, bulk all-or-none, and arguments refused at the door."""

import asyncio

import pytest

import dromos
from dromos import JobState


async def test_one_idempotency_key_returns_the_same_job(app: dromos.App) -> None:
    @app.task
    async def charge(order: int) -> None: ...

    first = await charge.options(idempotency_key="order-7").aenqueue(7)
    second = await charge.options(idempotency_key="order-7").aenqueue(7)
    assert first.id == second.id
    assert len(await (await app.abroker()).jobs()) == 1


async def test_different_idempotency_keys_make_different_jobs(app: dromos.App) -> None:
    @app.task
    async def charge(order: int) -> None: ...

    first = await charge.options(idempotency_key="order-7").aenqueue(7)
    second = await charge.options(idempotency_key="order-8").aenqueue(8)
    assert first.id != second.id


async def test_an_idempotency_key_is_scoped_to_its_queue(app: dromos.App) -> None:
    @app.task
    async def charge(order: int) -> None: ...

    first = await charge.options(idempotency_key="order-7", queue="eu").aenqueue(7)
    again = await charge.options(idempotency_key="order-7", queue="eu").aenqueue(7)
    elsewhere = await charge.options(idempotency_key="order-7", queue="us").aenqueue(7)
    assert first.id == again.id
    assert elsewhere.id != first.id
    assert (await elsewhere.astatus()).queue == "us"


async def test_fifty_concurrent_enqueues_with_one_key_make_one_job(app: dromos.App) -> None:
    @app.task
    async def charge(order: int) -> None: ...

    keyed = charge.options(idempotency_key="order-9")
    jobs = await asyncio.gather(*(keyed.aenqueue(9) for _ in range(50)))
    assert len({job.id for job in jobs}) == 1
    [stored] = await (await app.abroker()).jobs()
    assert stored.id == jobs[0].id


def test_concurrent_blocking_enqueues_with_one_key_make_one_job(app: dromos.App) -> None:
    import concurrent.futures

    @app.task
    def charge(order: int) -> None: ...

    keyed = charge.options(idempotency_key="order-10")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(lambda _: keyed.enqueue(10), range(50)))
    assert len({job.id for job in jobs}) == 1
    assert len(app.portal.call(app.broker.jobs)) == 1


async def test_enqueue_many_queues_every_call(app: dromos.App) -> None:
    @app.task
    async def add(a: int, b: int) -> int:
        return a + b

    jobs = await app.aenqueue_many([add.call(1, 2), add.options(priority=3).call(3, 4)])
    states = [(await j.astatus()).state for j in jobs]
    assert states == [JobState.QUEUED, JobState.QUEUED]
    assert (await jobs[1].astatus()).priority == 3


async def test_enqueue_many_is_all_or_none_when_one_call_is_invalid(app: dromos.App) -> None:
    @app.task
    async def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(dromos.ValidationError):
        await add.aenqueue_many([(1, 2), (3, 4), ("three", 4)])
    assert await (await app.abroker()).jobs() == []


async def test_wrong_argument_types_are_refused_at_enqueue(app: dromos.App) -> None:
    @app.task
    async def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(dromos.ValidationError) as refused:
        await add.aenqueue(1, "two")  # type: ignore[arg-type]
    assert refused.value.task == "add"
    assert [e["loc"] for e in refused.value.errors] == [("b",)]
    assert await (await app.abroker()).jobs() == []


async def test_missing_arguments_are_refused_at_enqueue(app: dromos.App) -> None:
    @app.task
    async def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(dromos.ValidationError):
        await add.aenqueue(1)  # type: ignore[call-arg]
    assert await (await app.abroker()).jobs() == []
