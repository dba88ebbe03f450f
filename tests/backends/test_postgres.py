"""What only the PostgreSQL broker does: the transactional enqueue, migrations, schemas,
LISTEN/NOTIFY wake-ups, and publishes that commit in ``seq`` order.

Every test here runs on the shared server (``-k postgres`` selects them with the conformance
suite's PostgreSQL runs): ``backend`` below overrides the suite's parametrized fixture with
the PostgreSQL entry alone, so ``make_broker``, ``app`` and ``workers`` work as elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import dromos
from dromos import JobState
from dromos.brokers import create_broker
from dromos.brokers.base import EventRecord, Lease, Outcome
from dromos.errors import BrokerError
from tests.backends._support import eventually, request
from tests.backends.conftest import (
    BACKENDS,
    POSTGRES_DSN,
    POSTGRES_PORT,
    MakeBroker,
    Target,
    Workers,
    drop_postgres_schema,
)
from tests.proxy import Proxy

psycopg = pytest.importorskip("psycopg")  # (the backend fixture fails first under CI)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Target]:
    """This module's store: a fresh schema on the shared PostgreSQL server."""
    with BACKENDS["postgres"](tmp_path, "pg") as target:
        yield target


def _schema(target: Target) -> str:
    return target.broker.rpartition("schema=")[2]


@pytest.fixture
async def conn(backend: Target) -> AsyncIterator[Any]:
    """The application's own connection (not autocommit: psycopg's default)."""
    connection = await psycopg.AsyncConnection.connect(POSTGRES_DSN)
    yield connection
    await connection.close()


@pytest.fixture
def other_schema() -> Iterator[str]:
    """A second fresh schema, dropped afterwards."""
    schema = f"dromos_t_{secrets.token_hex(6)}"
    yield schema
    drop_postgres_schema(schema)


# -- the transactional enqueue ---------------------------------------------------------------
async def test_a_job_enqueued_in_a_rolled_back_transaction_never_exists(
    app: dromos.App, conn: Any
) -> None:
    @app.task
    async def send(order: int) -> int:
        return order

    broker = await app.abroker()
    job = await send.options(connection=conn).aenqueue(1)
    assert await broker.status(job.id) is None  # not committed: nobody else sees it
    await conn.rollback()
    async with conn.transaction():  # a transaction block: the enqueue is a savepoint in it
        other = await send.options(connection=conn).aenqueue(2)
        raise psycopg.Rollback()
    await conn.execute("SELECT 1")  # a transaction psycopg opened implicitly: a savepoint too
    third = await send.options(connection=conn).aenqueue(3)
    await conn.rollback()
    for handle in (job, other, third):
        assert await broker.status(handle.id) is None
    assert await broker.jobs() == []


async def test_a_job_enqueued_in_a_committed_transaction_runs_with_the_rows_beside_it(
    app: dromos.App, conn: Any, workers: Workers, backend: Target
) -> None:
    orders = f'"{_schema(backend)}".orders'

    @app.task
    async def confirm(order: int) -> str:
        return f"order {order} confirmed"

    broker = await app.abroker()  # migrated: the schema exists
    await conn.execute(f"CREATE TABLE {orders} (id int PRIMARY KEY)")
    await conn.commit()
    workers.start(app)
    async with conn.transaction():  # the transactional outbox: the order and its job
        await conn.execute(f"INSERT INTO {orders} VALUES (7)")
        job = await confirm.options(connection=conn).aenqueue(7)
        await asyncio.sleep(0.2)  # a worker that could see it would have taken it
        assert await broker.status(job.id) is None
    assert await job.aresult(timeout=10) == "order 7 confirmed"
    assert [s.id for s in await broker.jobs()] == [job.id]


async def test_a_blocking_connection_enqueues_in_its_transaction_too(
    app: dromos.App, workers: Workers, backend: Target
) -> None:
    orders = f'"{_schema(backend)}".orders'

    @app.task
    async def confirm(order: int) -> str:
        return f"order {order} confirmed"

    def produce() -> tuple[str, str, str]:  # plain code: Django's or SQLAlchemy's thread
        with psycopg.connect(POSTGRES_DSN) as c:  # the app has not connected yet
            with c.transaction():
                kept = confirm.options(connection=c).enqueue(7)  # connects, migrates first
                c.execute(f"CREATE TABLE {orders} (id int PRIMARY KEY)")
                c.execute(f"INSERT INTO {orders} VALUES (7)")
            with c.transaction():
                dropped = confirm.options(connection=c).enqueue(8)
                raise psycopg.Rollback()
            again = confirm.options(connection=c, idempotency_key="order-7").enqueue(7)
            twice = confirm.options(connection=c, idempotency_key="order-7").enqueue(7)
            c.commit()
            assert twice.id == again.id
            return kept.id, dropped.id, again.id

    kept, dropped, again = await asyncio.to_thread(produce)
    workers.start(app)
    assert await app.job(kept).aresult(timeout=10) == "order 7 confirmed"
    assert await app.job(again).aresult(timeout=10) == "order 7 confirmed"
    broker = await app.abroker()
    assert await broker.status(dropped) is None
    assert len(await broker.jobs()) == 2


async def test_enqueue_in_keeps_idempotency_keys_and_order(
    make_broker: MakeBroker, conn: Any
) -> None:
    broker = await make_broker()
    first = request(key="order-1")
    await broker.enqueue([first])
    reqs = [request(), request(key="order-1"), request(delay=3600)]
    ids = await broker.enqueue_in(conn, reqs)
    await conn.commit()
    assert ids == [reqs[0].message.id, first.message.id, reqs[2].message.id]
    states = {s.id: s.state for s in await broker.jobs()}
    assert states == {
        first.message.id: JobState.QUEUED,
        reqs[0].message.id: JobState.QUEUED,
        reqs[2].message.id: JobState.SCHEDULED,
    }


async def test_enqueue_in_wants_a_psycopg_async_connection(
    make_broker: MakeBroker, app: dromos.App
) -> None:
    broker = await make_broker()
    with pytest.raises(dromos.ConfigurationError, match="AsyncConnection"):
        await broker.enqueue_in(object(), [request()])
    with (
        psycopg.connect(POSTGRES_DSN) as blocking,
        pytest.raises(dromos.ConfigurationError, match="AsyncConnection"),
    ):
        await broker.enqueue_in(blocking, [request()])

    @app.task
    async def noop() -> None: ...

    with pytest.raises(dromos.ConfigurationError, match="aenqueue"):
        await asyncio.to_thread(noop.options(connection=object()).enqueue)


async def test_a_committed_enqueue_in_wakes_a_waiting_worker(
    make_broker: MakeBroker, conn: Any
) -> None:
    broker = await make_broker()
    waiting = asyncio.create_task(broker.wait_for_work(["default"], 10.0))
    await asyncio.sleep(0.1)
    await broker.enqueue_in(conn, [request()])
    await asyncio.sleep(0.3)
    assert not waiting.done()  # NOTIFY is delivered at commit, not before
    await conn.commit()
    t0 = time.monotonic()
    await asyncio.wait_for(waiting, 5.0)
    assert time.monotonic() - t0 < 0.5


async def test_dromos_enqueue_takes_the_depends_on_header(
    make_broker: MakeBroker, backend: Target
) -> None:
    broker = await make_broker()
    dependency = request()
    await broker.enqueue([dependency])
    dep = dependency.message.id
    enqueue = f'SELECT "{_schema(backend)}".dromos_enqueue(%s::jsonb)'

    def envelope(depends_on: str, **fields: Any) -> str:
        return json.dumps({"task": "t", "headers": {"depends_on": depends_on}, **fields})

    async with await psycopg.AsyncConnection.connect(POSTGRES_DSN, autocommit=True) as c:
        cur = await c.execute(enqueue, (envelope(f" {dep} ,{dep}"),))  # each id once
        row = await cur.fetchone()
        assert row is not None
        job_id = row[0]
        with pytest.raises(psycopg.errors.NoDataFound, match="no job nope"):
            await c.execute(enqueue, (envelope(f"{dep},nope"),))
        with pytest.raises(psycopg.errors.RaiseException, match="eta"):
            await c.execute(enqueue, (envelope(dep, eta="2030-01-01T00:00:00Z"),))
    status = await broker.status(job_id)
    assert status is not None
    assert (status.state, status.message) == (JobState.SCHEDULED, "waiting for 1 job(s)")
    assert len(await broker.jobs()) == 2  # the refused calls stored nothing
    [delivery] = await broker.claim(["default"], 10, 30.0)
    assert await broker.settle([Outcome(dep, delivery.attempt, JobState.SUCCEEDED)]) == 1
    assert [d.job_id for d in await broker.claim(["default"], 10, 30.0)] == [job_id]


# -- migrations and schemas ------------------------------------------------------------------
async def test_migrations_are_recorded_once_and_a_second_open_does_nothing(
    make_broker: MakeBroker, backend: Target
) -> None:
    from dromos.brokers.postgres import migrations

    await make_broker()
    table = f'"{_schema(backend)}".dromos_schema_version'
    async with await psycopg.AsyncConnection.connect(POSTGRES_DSN) as c:
        cur = await c.execute(f"SELECT version, name, applied_at FROM {table} ORDER BY version")
        first = await cur.fetchall()
    shipped = migrations()
    assert [(v, n) for v, n, _ in first] == [(v, n) for v, n, _ in shipped]
    assert [v for v, _, _ in shipped] == list(range(1, len(shipped) + 1))  # 0001, 0002 ...
    second = await make_broker()
    assert await second.migrate() == shipped[-1][0]  # type: ignore[attr-defined]
    async with await psycopg.AsyncConnection.connect(POSTGRES_DSN) as c:
        cur = await c.execute(f"SELECT version, name, applied_at FROM {table} ORDER BY version")
        assert await cur.fetchall() == first


async def test_a_schema_of_an_earlier_version_is_migrated_and_keeps_its_jobs(
    backend: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dromos.brokers import postgres

    shipped = postgres.migrations()
    monkeypatch.setattr(postgres, "migrations", lambda: shipped[:2])  # an older dromos
    assert await create_broker(backend.broker).migrate() == 2  # type: ignore[attr-defined]
    monkeypatch.undo()
    req = request()  # a job its workers left queued
    async with await psycopg.AsyncConnection.connect(POSTGRES_DSN, autocommit=True) as c:
        await c.execute(
            f'INSERT INTO "{_schema(backend)}".dromos_jobs (id, task, queue, state, payload, '
            "created_at) VALUES (%s, 't', 'default', 'queued', %s, 0)",
            (req.message.id, req.payload),
        )
    new = create_broker(backend.broker)
    try:
        assert await new.migrate() == shipped[-1][0]  # type: ignore[attr-defined]
        [delivery] = await new.claim(["default"], 10, 30.0)
        assert delivery.job_id == req.message.id
        assert await new.settle([Outcome(req.message.id, 1, JobState.SUCCEEDED)]) == 1
    finally:
        await new.close()


async def test_brokers_opening_at_once_migrate_once(backend: Target) -> None:
    brokers = [create_broker(backend.broker) for _ in range(4)]
    try:
        await asyncio.gather(*(b.open() for b in brokers))
        assert await brokers[0].enqueue([request()])
    finally:
        for b in brokers:
            await b.close()


async def test_two_schemas_never_see_or_wake_each_other(
    make_broker: MakeBroker, other_schema: str
) -> None:
    one = await make_broker()
    two = create_broker(f"{POSTGRES_DSN}?schema={other_schema}")
    await two.open()
    try:
        await two.join_group("g", ["#"], "latest")
        work = asyncio.create_task(two.wait_for_work(["default"], 0.6))
        events = asyncio.create_task(two.wait_for_events(["g"], 0.6))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await one.enqueue([request()])
        await one.publish([EventRecord("a.b", "1", b"{}")])
        await asyncio.gather(work, events)
        assert time.monotonic() - t0 >= 0.4  # neither woke: they ran to their timeout
        assert await two.claim(["default"], 10, 30.0) == []
        assert await two.claim_events("g", 10, 30.0) == []
        assert len(await one.claim(["default"], 10, 30.0)) == 1
    finally:
        await two.close()


def test_a_bad_url_is_refused_with_what_to_write() -> None:
    with pytest.raises(dromos.ConfigurationError, match="schema="):
        create_broker("postgresql://localhost/db?schema=no-dashes")
    with pytest.raises(dromos.ConfigurationError, match="pool_size"):
        create_broker("postgresql://localhost/db?pool_size=none")
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(dromos.ConfigurationError, match="query_timeout="):
            create_broker(f"postgresql://localhost/db?query_timeout={bad}")
    broker = create_broker(
        "postgres://user:secret@localhost:5432/db?schema=a&sslmode=disable&query_timeout=2.5"
    )
    assert broker.schemes == ("postgresql", "postgres")
    assert broker.schema == "a"  # type: ignore[attr-defined]
    assert broker.query_timeout == 2.5  # type: ignore[attr-defined]
    assert "schema" not in broker.conninfo  # type: ignore[attr-defined]
    assert "query_timeout" not in broker.conninfo  # type: ignore[attr-defined]


async def test_an_unreachable_server_is_a_broker_error_naming_it() -> None:
    broker = create_broker("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")
    with pytest.raises(dromos.BrokerError, match=r"127\.0\.0\.1:1/test"):
        await broker.open()
    await broker.close()


# -- LISTEN/NOTIFY ---------------------------------------------------------------------------
async def test_a_notify_wakes_a_waiting_worker_at_once(make_broker: MakeBroker) -> None:
    worker, producer = await make_broker(), await make_broker()  # two pools, two listeners
    for _ in range(3):
        waiting = asyncio.create_task(worker.wait_for_work(["default"], 10.0))
        await asyncio.sleep(0.1)  # parked
        await producer.enqueue([request()])
        t0 = time.monotonic()
        await asyncio.wait_for(waiting, 5.0)
        assert time.monotonic() - t0 < 0.2
        assert len(await worker.claim(["default"], 10, 30.0)) == 1


@pytest.mark.parametrize("pause", [0.0, 0.8])
async def test_a_claim_after_a_wake_recovers_leases_and_readies_jobs_once_due(
    make_broker: MakeBroker, pause: float
) -> None:
    # The claim that follows a notification skips recovering and readying while nothing is
    # due by what the wait last saw; whatever has come due by the claim is still taken.
    worker, producer = await make_broker(), await make_broker()
    [lost_id] = await producer.enqueue([request()])
    [lost] = await worker.claim(["default"], 1, 0.6, "dead")  # its worker dies
    [later_id] = await producer.enqueue([request(delay=0.6)])
    waiting = asyncio.create_task(worker.wait_for_work(["default"], 10.0))
    await asyncio.sleep(0.1)  # parked: the lease and the delay end in about 0.5 s
    [new_id] = await producer.enqueue([request()])
    await asyncio.wait_for(waiting, 5.0)
    await asyncio.sleep(pause)
    taken = {d.job_id: d.attempt for d in await worker.claim(["default"], 10, 30.0, "w")}
    if pause:  # the lease and the delay ended before this claim
        assert taken == {new_id: 1, lost_id: lost.attempt + 1, later_id: 1}
        return
    assert taken == {new_id: 1}
    await asyncio.sleep(0.8)
    await worker.wait_for_work(["default"], 5.0)  # returns at once: something is due
    taken = {d.job_id: d.attempt for d in await worker.claim(["default"], 10, 30.0, "w")}
    assert taken == {lost_id: lost.attempt + 1, later_id: 1}


async def test_a_waiter_for_another_queue_is_not_woken(make_broker: MakeBroker) -> None:
    worker, producer = await make_broker(), await make_broker()
    waiting = asyncio.create_task(worker.wait_for_work(["mail"], 0.5))
    await asyncio.sleep(0.1)
    await producer.enqueue([request(queue="images")])
    t0 = time.monotonic()
    await waiting
    assert time.monotonic() - t0 >= 0.3


async def test_wait_returns_when_the_job_ends_elsewhere(make_broker: MakeBroker) -> None:
    caller, worker = await make_broker(), await make_broker()
    reqs = [request() for _ in range(250)]  # more ids than one notification carries
    await caller.enqueue(reqs)
    deliveries = await worker.claim(["default"], 250, 30.0)
    last = reqs[-1].message.id
    waiting = asyncio.create_task(caller.wait(last, 10.0))
    await asyncio.sleep(0.1)
    await worker.settle([Outcome(d.job_id, d.attempt, JobState.SUCCEEDED) for d in deliveries])
    t0 = time.monotonic()
    status = await asyncio.wait_for(waiting, 5.0)
    assert time.monotonic() - t0 < 0.2
    assert status is not None
    assert status.state is JobState.SUCCEEDED


async def test_a_publish_wakes_a_waiting_consumer_at_once(make_broker: MakeBroker) -> None:
    consumer, producer = await make_broker(), await make_broker()
    await consumer.join_group("g", ["#"], "latest")
    waiting = asyncio.create_task(consumer.wait_for_events(["g"], 10.0))
    await asyncio.sleep(0.1)
    await producer.publish([EventRecord("a.b", "1", b"{}")])
    t0 = time.monotonic()
    await asyncio.wait_for(waiting, 5.0)
    assert time.monotonic() - t0 < 0.2


async def test_a_released_job_wakes_a_waiting_worker(make_broker: MakeBroker) -> None:
    worker, other = await make_broker(), await make_broker()
    await other.enqueue([request()])
    [held] = await other.claim(["default"], 1, 30.0)
    waiting = asyncio.create_task(worker.wait_for_work(["default"], 10.0))
    await asyncio.sleep(0.1)
    await other.release([Lease(held.job_id, held.attempt)])
    await asyncio.wait_for(waiting, 0.5)


async def test_a_lost_notification_costs_a_second_at_most(
    make_broker: MakeBroker, backend: Target
) -> None:
    broker = await make_broker()
    waiting = asyncio.create_task(broker.wait_for_work(["default"], 10.0))
    await asyncio.sleep(0.1)
    # A job that arrives without its NOTIFY (as if the listener had been reconnecting).
    req = request()
    async with await psycopg.AsyncConnection.connect(POSTGRES_DSN, autocommit=True) as c:
        await c.execute(
            f'INSERT INTO "{_schema(backend)}".dromos_jobs (id, task, queue, state, payload, '
            "created_at) VALUES (%s, 't', 'default', 'queued', %s, 0)",
            (req.message.id, req.payload),
        )
    t0 = time.monotonic()
    await asyncio.wait_for(waiting, 5.0)
    assert time.monotonic() - t0 < 1.5
    [delivery] = await broker.claim(["default"], 10, 30.0)
    assert delivery.job_id == req.message.id


# -- the bus under concurrency ---------------------------------------------------------------
async def test_concurrent_publishers_lose_no_event_for_a_claiming_group(
    make_broker: MakeBroker,
) -> None:
    consumer = await make_broker()
    producers = [await make_broker() for _ in range(4)]
    await consumer.join_group("g", ["#"], "latest")
    got: list[str] = []
    done = asyncio.Event()

    async def consume() -> None:
        while not done.is_set() or (await consumer.event_groups())[0].lag:
            for d in await consumer.claim_events("g", 50, 30.0):
                got.append(d.key)
            await asyncio.sleep(0)

    async def produce(p: Any, n: int) -> None:
        for i in range(n):
            await p.publish([EventRecord("t", f"{i}-{j}", b"{}") for j in range(3)])

    reader = asyncio.create_task(consume())
    await asyncio.gather(*(produce(p, 40) for p in producers))
    done.set()
    await asyncio.wait_for(reader, 20.0)
    assert len(got) == len(set(got)) == 4 * 40 * 3


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    """A TCP proxy in front of the shared server: its link can stall, the server cannot."""
    proxy = Proxy(POSTGRES_PORT)
    await proxy.start()
    yield proxy
    proxy.flowing.set()
    await proxy.stop()


def _through(target: Target, proxy: Proxy, **query: float) -> str:
    """The test's URL with its link through ``proxy``, and ``query`` added."""
    url = target.broker.replace(f":{POSTGRES_PORT}/", f":{proxy.port}/", 1)
    return url + "".join(f"&{key}={value}" for key, value in query.items())


async def test_a_stalled_link_fails_a_call_at_query_timeout_and_the_next_call_reconnects(
    backend: Target, proxy: Proxy
) -> None:
    # Nothing answers and nothing says the link is gone (no RST): without a deadline of its
    # own the call waited for ever (psycopg's cancel request then waits on the same link).
    broker = create_broker(_through(backend, proxy, query_timeout=0.5))
    await broker.open()
    try:
        [job_id] = await broker.enqueue([request()])
        proxy.flowing.clear()
        started = time.monotonic()
        with pytest.raises(BrokerError, match=r"no answer within query_timeout=0\.5 s"):
            await asyncio.wait_for(broker.status(job_id), 20)
        assert time.monotonic() - started < 5
        proxy.flowing.set()
        status = await broker.status(job_id)  # on a new connection: the old one was dropped
        assert status is not None
        assert status.state is JobState.QUEUED
    finally:
        await broker.close()


async def test_a_silent_listening_connection_is_checked_and_replaced(
    backend: Target,
    proxy: Proxy,
    make_broker: MakeBroker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The listener only reads: on a dead link it would wait for ever and no NOTIFY would
    # wake anyone again. After a silence it asks, under query_timeout, and reconnects.
    monkeypatch.setattr("dromos.brokers.postgres._LISTEN_CHECK", 0.2)
    broker = create_broker(_through(backend, proxy, query_timeout=0.5))
    await broker.open()
    try:
        proxy.flowing.clear()
        with caplog.at_level("WARNING", logger="dromos.postgres"):
            await eventually(
                lambda: any("listener" in r.getMessage() for r in caplog.records),
                what="the listener found dead",
            )
        proxy.flowing.set()
        producer = await make_broker()  # the shared server's link, never stalled
        for _ in range(20):  # the new listener is up once a NOTIFY wakes a waiter again
            waiting = asyncio.create_task(broker.wait_for_work(["default"], 0.5))
            await asyncio.sleep(0.05)
            await producer.enqueue([request()])
            started = time.monotonic()
            await asyncio.wait_for(waiting, 5.0)
            if time.monotonic() - started < 0.3:
                break
        else:
            pytest.fail("no NOTIFY woke a waiter after the link came back")
    finally:
        await broker.close()
