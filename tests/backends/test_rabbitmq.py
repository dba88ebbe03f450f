"""What only the RabbitMQ broker does: messages without a record, duplicate messages, and an
enqueue whose publish fails (docs/design/rabbitmq.md §4.1 and §4.6).

The conformance suite proves the rest on RabbitMQ; these cases need a message put on RabbitMQ
behind the broker's back, or a RabbitMQ that cannot be reached.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import dromos
from dromos import JobState
from dromos.brokers import create_broker
from dromos.brokers.base import BrokerOptions
from dromos.message import Message, encode, new_job_id, utcnow
from tests.backends._support import request
from tests.backends.conftest import BACKENDS, MakeBroker, Target, Workers

aio_pika = pytest.importorskip("aio_pika")  # (the backend fixture fails first under CI)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Target]:
    """This module's store: RabbitMQ under a prefix of its own, records in Redis."""
    with BACKENDS["rabbitmq-redis"](tmp_path, "rmq") as target:
        yield target


async def test_a_message_without_a_record_is_adopted_and_runs(
    app: dromos.App, workers: Workers, backend: Target
) -> None:
    # A producer without Python: the wire format, straight to the exchange (§4.6).
    @app.task
    async def add(a: int, b: int) -> int:
        return a + b

    broker = await app.abroker()
    from dromos.brokers.rabbitmq import RabbitMQBroker

    assert isinstance(broker, RabbitMQBroker)
    await broker.transport.consume(["default"])  # declares the queues, as a worker would
    message = Message(id=new_job_id(), task="add", queue="default", args=[2, 3],
                      created_at=utcnow())  # fmt: skip
    connection = await aio_pika.connect(backend.broker.partition("?")[0])
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(broker.transport.names.jobs)
        await exchange.publish(
            aio_pika.Message(encode(message), message_id=message.id, delivery_mode=2),
            routing_key="default.normal",
        )
    assert await broker.status(message.id) is None  # no record yet
    workers.start(app)
    for _ in range(200):  # the record appears when a worker adopts the message
        if await broker.status(message.id) is not None:
            break
        await asyncio.sleep(0.05)
    assert await app.job(message.id).aresult(timeout=10) == 5
    status = await broker.status(message.id)
    assert status is not None
    assert (status.state, status.attempts) == (JobState.SUCCEEDED, 1)


async def test_garbage_on_the_queue_is_dead_lettered_with_its_reason(
    app: dromos.App, workers: Workers, backend: Target
) -> None:
    @app.task
    async def ok(n: int) -> int:
        return n

    broker = await app.abroker()
    from dromos.brokers.rabbitmq import RabbitMQBroker

    assert isinstance(broker, RabbitMQBroker)
    await broker.transport.consume(["default"])
    garbage_id = new_job_id()
    connection = await aio_pika.connect(backend.broker.partition("?")[0])
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(broker.transport.names.jobs)
        for body, message_id in ((b"\xff not json", garbage_id), (b"[1, 2]", "not-a-uuid")):
            await exchange.publish(
                aio_pika.Message(body, message_id=message_id), routing_key="default.normal"
            )
    after = await ok.aenqueue(7)
    workers.start(app)
    assert await after.aresult(timeout=10) == 7  # the worker went on
    for _ in range(200):
        dead = await broker.jobs(state=JobState.FAILED)
        if len(dead) == 2:
            break
        await asyncio.sleep(0.05)
    assert len(dead) == 2
    assert garbage_id in {s.id for s in dead}  # kept under its message id, when it is one
    assert {s.errors[-1].type for s in dead} == {"DecodeError"}


async def test_a_duplicate_message_never_makes_a_second_run(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    from dromos.brokers.rabbitmq import RabbitMQBroker
    from dromos.brokers.rabbitmq_transport import Outgoing

    assert isinstance(broker, RabbitMQBroker)
    req = request()
    await broker.enqueue([req])
    again = Outgoing(req.message.id, "default", 0, req.payload)  # a republish, say
    await broker.transport.publish([again, again])
    claimed = await broker.claim(["default"], 10, 30.0)
    assert [d.job_id for d in claimed] == [req.message.id]  # three messages, one run
    assert await broker.claim(["default"], 10, 30.0) == []  # the others were dropped


async def test_an_enqueue_whose_publish_fails_is_withdrawn_and_raises(
    backend: Target, tmp_path: Path
) -> None:
    # A RabbitMQ nobody listens at (a closed port): the store is reachable, the publish not.
    unreachable = "amqp://guest:guest@127.0.0.1:9/?prefix=dromos_t_gone&publish_timeout=0.3"
    broker = create_broker(unreachable, BrokerOptions(), backend.backend)
    await broker.open()
    try:
        req = request(key="order-9")
        with pytest.raises(dromos.BrokerError, match=r"127\.0\.0\.1:9"):
            await broker.enqueue([req])
        status = await broker.status(req.message.id)
        assert status is not None
        assert status.state is JobState.CANCELLED  # never runs
        assert [e.type for e in status.errors] == ["EnqueueFailed"]
        store = broker.store  # type: ignore[attr-defined]
        [again] = await store.enqueue_unsent([request(key="order-9")], hold=30.0)
        assert again.publish  # the key was freed: a retry makes one new job
    finally:
        await broker.close()


def test_the_inspection_commands_find_the_state_store_in_backend_or_dromos_backend(
    backend: Target, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dromos.cli import main

    def dromos_cli(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["dromos", *args])
        try:
            main()
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        return 0

    assert backend.backend is not None
    monkeypatch.setenv("DROMOS_BACKEND", backend.backend)
    assert dromos_cli("queues", "--broker", backend.broker) == 0
    monkeypatch.delenv("DROMOS_BACKEND")
    assert dromos_cli("queues", "--broker", backend.broker) != 0
    assert "state store" in capsys.readouterr().err
    assert dromos_cli("queues", "--broker", backend.broker, "--backend", backend.backend) == 0


async def test_a_queue_whose_name_is_too_long_for_rabbitmq_is_refused_storing_nothing(
    app: dromos.App,
) -> None:
    @app.task(queue="q" * 240)
    async def noop() -> None: ...

    with pytest.raises(dromos.ConfigurationError, match="too long for RabbitMQ"):
        await asyncio.wait_for(noop.aenqueue(), 3.0)  # at once, not after publish_timeout
    assert await (await app.abroker()).jobs() == []


async def test_a_worker_for_a_queue_too_long_for_rabbitmq_stops_with_the_reason(
    app: dromos.App, workers: Workers
) -> None:
    # No retry can mend it: the worker stops (the CLI prints the reason and exits non-zero)
    # rather than retrying its claim for ever.
    worker = workers.start(app, queues=["q" * 240])
    with pytest.raises(dromos.ConfigurationError, match="too long for RabbitMQ"):
        await workers.ended(worker, timeout=20)
