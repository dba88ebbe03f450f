"""What Redis publishes when jobs end: the done message carries each job's status, so that a
waiting caller needs no read after the push; nothing is published when nobody listens.

Checked with raw redis-py on a private server (its command counters are this test's alone).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio

import dromos
from dromos.brokers.base import Outcome, Waited
from dromos.brokers.redis import RedisBroker
from dromos.job import JobError, JobState, JobStatus
from tests.redis_servers import PrivateRedis, RedisCluster, new_prefix

pytestmark = pytest.mark.slow

BIG = 70_000  # characters: over the 64 KiB a done message carries


@pytest.fixture
def server(private_redis: Callable[..., PrivateRedis]) -> PrivateRedis:
    return private_redis(appendonly=False)


@pytest.fixture
async def app(server: PrivateRedis) -> AsyncIterator[dromos.App]:
    prefix = new_prefix()
    app = dromos.App("done", f"redis://127.0.0.1:{server.port}/0?prefix={prefix}")

    @app.task
    async def echo(text: str) -> str:
        return text

    yield app
    await app.aclose()


async def _run_one(app: dromos.App, text: str) -> str:
    """Enqueue echo(text), claim it and settle it as the worker would; return its id."""
    job = await app.get_task("echo").aenqueue(text)
    broker = await app.abroker()
    [delivery] = await broker.claim(["default"], 10, 30.0)
    result = msgspec.json.encode(text)
    await broker.settle([Outcome(delivery.job_id, delivery.attempt, JobState.SUCCEEDED, result)])
    return job.id


async def _published(server: PrivateRedis) -> int:
    async with redis.asyncio.Redis(port=server.port) as client:
        stats = await client.info("commandstats")
    return int(stats.get("cmdstat_publish", {}).get("calls", 0))


async def test_a_done_message_carries_the_status_of_each_ended_job(
    app: dromos.App, server: PrivateRedis
) -> None:
    broker = await app.abroker()
    assert isinstance(broker, RedisBroker)
    async with redis.asyncio.Redis(port=server.port) as client, client.pubsub() as pubsub:
        await pubsub.subscribe(f"{broker.prefix}:done:default")
        job_id = await _run_one(app, "hello")
        message: dict[str, Any] | None = None
        for _ in range(50):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                break
    assert message is not None
    job, fields = msgspec.msgpack.decode(message["data"])
    assert job == job_id
    values = dict(zip(("task", "state"), fields, strict=False))  # the id is the job's key
    assert values == {"task": "echo", "state": "succeeded"}
    assert msgspec.json.decode(fields[6]) == "hello"  # the result, as stored


async def test_waiting_returns_the_same_status_as_a_read(app: dromos.App) -> None:
    broker = await app.abroker()
    job = await app.get_task("echo").aenqueue("hi")
    waiting = asyncio.create_task(broker.wait(job.id, 10.0))
    await asyncio.sleep(0.05)  # the waiter is subscribed and listening
    [delivery] = await broker.claim(["default"], 10, 30.0)
    done = Outcome(delivery.job_id, delivery.attempt, JobState.SUCCEEDED, b'"hi"')
    await broker.settle([done])
    status = await waiting
    assert status is not None
    assert status == await broker.status(job.id)
    assert status.result == "hi"
    assert status.finished_at is not None


async def test_a_long_result_is_not_carried_and_the_waiter_reads_it(app: dromos.App) -> None:
    broker = await app.abroker()
    text = "x" * BIG
    job = await app.get_task("echo").aenqueue(text)
    waiting = asyncio.create_task(job.aresult(timeout=10.0))
    await asyncio.sleep(0.05)
    [delivery] = await broker.claim(["default"], 10, 30.0)
    outcome = Outcome(
        delivery.job_id, delivery.attempt, JobState.SUCCEEDED, msgspec.json.encode(text)
    )
    await broker.settle([outcome])
    assert await waiting == text


async def test_nothing_is_published_when_nobody_listens(
    app: dromos.App, server: PrivateRedis
) -> None:
    await _run_one(app, "warm-up")  # scripts loaded, the work channel's first push done
    before = await _published(server)
    await _run_one(app, "quiet")
    # The enqueue pushes to the work channel; the settle publishes nothing on done.
    assert await _published(server) - before == 1


def test_on_a_cluster_the_done_message_names_the_ids_only(redis_cluster: RedisCluster) -> None:
    prefix = new_prefix()
    app = dromos.App("done", redis_cluster.url(prefix))

    @app.task
    def echo(text: str) -> str:
        return text

    try:
        job = echo.enqueue("x")
        channel = f"{prefix}:done:default"
        with redis.Redis(host="127.0.0.1", port=redis_cluster.ports[0]) as client:
            pubsub = client.pubsub()
            pubsub.subscribe(channel)

            async def settle() -> None:
                broker = await app.abroker()
                [delivery] = await broker.claim(["default"], 10, 30.0)
                ok = Outcome(delivery.job_id, delivery.attempt, JobState.SUCCEEDED, b'"x"')
                await broker.settle([ok])

            app.portal.call(settle)
            message = None
            for _ in range(50):
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if message is not None:
                    break
            pubsub.close()
        assert message is not None
        assert msgspec.msgpack.decode(message["data"]) == [job.id, False]
        assert job.result(timeout=5) == "x"
    finally:
        app.close()
        redis_cluster.delete_prefix(prefix)


async def _settle_next(broker: RedisBroker, outcome: JobState = JobState.SUCCEEDED) -> None:
    [delivery] = await broker.claim(["default"], 10, 30.0)
    ok = outcome is JobState.SUCCEEDED
    error = None if ok else JobError(type="ValueError", message="boom")
    result = b'"done"' if ok else None
    await broker.settle([Outcome(delivery.job_id, delivery.attempt, outcome, result, error)])


async def _echo(app: dromos.App) -> tuple[RedisBroker, dromos.Job[Any], str]:
    """The app's Redis broker, one echo job enqueued, and the hash tag of its queue."""
    broker = await app.abroker()
    assert isinstance(broker, RedisBroker)
    job = await app.get_task("echo").aenqueue("hi")
    return broker, job, f"{{{broker.prefix}:default}}"


def _waiting(broker: RedisBroker, job_id: str) -> asyncio.Future[Waited]:
    """``wait_blocking`` started in a thread, as a blocking ``result()`` calls it."""
    return asyncio.ensure_future(asyncio.to_thread(broker.wait_blocking, job_id, 10.0))


async def _served(waiting: asyncio.Future[Waited]) -> JobStatus:
    """The status the wait returned: served by the broker (not left to the portal: False)."""
    status = await waiting
    assert status is not False
    assert status is not None
    return status


async def _counted(client: redis.asyncio.Redis, tag: str, job_id: str) -> None:
    """Until the await script has counted one blocking waiter of the job."""
    for _ in range(250):
        if await client.hget(f"{tag}:awaited", job_id) == b"1":
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the waiter was never counted")


async def test_a_blocking_wait_is_served_in_the_callers_thread_and_leaves_nothing(
    app: dromos.App, server: PrivateRedis
) -> None:
    broker, job, tag = await _echo(app)
    assert await asyncio.to_thread(broker.wait_blocking, job.id, 0.2) is None  # timed out
    waiting = _waiting(broker, job.id)
    async with redis.asyncio.Redis(port=server.port) as client:
        await _counted(client, tag, job.id)  # the waiter is counted before the job ends
        await _settle_next(broker)
        assert await _served(waiting) == await broker.status(job.id)
        # nobody is counted any more, nothing is left to pop
        assert await client.hlen(f"{tag}:awaited") == 0
        assert await client.llen(f"{tag}:notify:{job.id}") == 0


async def test_a_status_left_for_a_waiter_gone_does_not_answer_a_wait_after_replay(
    app: dromos.App, server: PrivateRedis
) -> None:
    broker, job, tag = await _echo(app)
    await _settle_next(broker, JobState.FAILED)
    async with redis.asyncio.Redis(port=server.port) as client:
        # a failed end's status pushed for a waiter that left without taking it
        assert await asyncio.to_thread(broker.wait_blocking, job.id, 5.0) is not None
        await client.rpush(f"{tag}:notify:{job.id}", b"stale")
        assert await broker.replay([job.id]) == [job.id]
        waiting = _waiting(broker, job.id)
        await _counted(client, tag, job.id)
        assert not waiting.done()
        await _settle_next(broker)
        assert (await _served(waiting)).state is JobState.SUCCEEDED


async def test_a_blocking_wait_for_a_job_this_instance_does_not_know_is_left_to_the_portal(
    app: dromos.App, server: PrivateRedis
) -> None:
    broker = await app.abroker()
    assert isinstance(broker, RedisBroker)
    assert await asyncio.to_thread(broker.wait_blocking, "0" * 26, 1.0) is False
    job = await app.get_task("echo").aenqueue("hi")
    assert await asyncio.to_thread(broker.wait_blocking, job.id, 0) is False  # no wait at all


async def test_a_blocking_wait_after_the_scripts_were_flushed_loads_its_script_and_returns(
    app: dromos.App, server: PrivateRedis
) -> None:
    broker, job, tag = await _echo(app)
    async with redis.asyncio.Redis(port=server.port) as client:
        await client.script_flush()  # as a restart of a server without persistence does
        waiting = _waiting(broker, job.id)
        await _counted(client, tag, job.id)  # counted once the script was loaded again
        await _settle_next(broker)
        assert (await _served(waiting)).state is JobState.SUCCEEDED


async def test_a_wait_that_timed_out_before_it_was_counted_uncounts_nobody(
    app: dromos.App, server: PrivateRedis
) -> None:
    broker, job, tag = await _echo(app)
    async with redis.asyncio.Redis(port=server.port) as client:
        first = _waiting(broker, job.id)
        await _counted(client, tag, job.id)
        await client.script_flush()
        # its await script is refused (NOSCRIPT) and its BLPOP times out: never counted
        assert await asyncio.to_thread(broker.wait_blocking, job.id, 0.3) is None
        assert await client.hget(f"{tag}:awaited", job.id) == b"1"  # the first is still
        await _settle_next(broker)
        assert (await _served(first)).state is JobState.SUCCEEDED
