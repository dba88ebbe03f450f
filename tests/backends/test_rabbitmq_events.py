"""What only the RabbitMQ event bus does (docs/design/rabbitmq.md §9): RabbitMQ routes the
events itself, a group's queue outlives a connection, failures are parked in the state store,
and a message put on a group's queue behind the broker's back is dead-lettered with its reason.

The events conformance suite proves the contract on RabbitMQ; these cases look at RabbitMQ
itself, or put something on it that the broker did not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import dromos
from dromos.brokers import create_broker
from dromos.brokers.base import Broker, BrokerOptions, EventOutcome
from dromos.brokers.rabbitmq import RabbitMQBroker
from dromos.errors import BrokerError
from tests.backends._support import eventually
from tests.backends.conftest import BACKENDS, RABBITMQ_PORT, MakeBroker, Target, Workers
from tests.backends.test_events_contract import record
from tests.proxy import Proxy

aio_pika = pytest.importorskip("aio_pika")  # (the backend fixture fails first under CI)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Target]:
    """This module's store: RabbitMQ under a prefix of its own, records in Redis."""
    with BACKENDS["rabbitmq-redis"](tmp_path, "rmq-events") as target:
        yield target


@pytest.fixture
async def rabbit(make_broker: MakeBroker) -> RabbitMQBroker:
    broker = await make_broker()
    assert isinstance(broker, RabbitMQBroker)
    return broker


@pytest.fixture
async def channel(backend: Target) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A client of the test's own, beside the broker: what RabbitMQ itself holds."""
    connection = await aio_pika.connect(backend.broker.partition("?")[0])
    async with connection:
        yield await connection.channel()


async def _ready(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.message_count or 0)


async def test_rabbitmq_routes_events_to_each_group_queue_by_its_patterns(
    rabbit: RabbitMQBroker, channel: aio_pika.abc.AbstractChannel
) -> None:
    await rabbit.join_group("star", ["orders.*"], "latest")
    await rabbit.join_group("hash", ["orders.#"], "latest")
    await rabbit.join_group("payments", ["payments.created", "payments.failed"], "latest")
    topics = ["orders", "orders.created", "orders.eu.created", "payments.created", "other"]
    await rabbit.publish([record(t) for t in topics])
    names = rabbit.events.names
    counts = {g: await _ready(channel, names.group(g)) for g in ("star", "hash", "payments")}
    assert counts == {"star": 1, "hash": 3, "payments": 1}  # routed by RabbitMQ, unclaimed
    # A producer without Python publishes to the exchange with the topic as its routing key.
    exchange = await channel.get_exchange(names.exchange)
    foreign = record("payments.failed")
    await exchange.publish(
        aio_pika.Message(foreign.payload, message_id=foreign.id), routing_key=foreign.topic
    )
    got = await rabbit.claim_events("payments", 10, 30.0)
    assert [(d.topic, d.key) for d in got][-1] == ("payments.failed", foreign.id)
    assert len(got) == 2


async def test_a_groups_queue_survives_a_lost_connection(
    rabbit: RabbitMQBroker, make_broker: MakeBroker
) -> None:
    await rabbit.join_group("g", ["#"], "latest")
    first, second = record(data=1), record(data=2)
    await rabbit.publish([first])
    [held] = await rabbit.claim_events("g", 10, 30.0)
    await (await rabbit.transport.connection()).close()  # the link drops: held goes back
    await rabbit.publish([second])  # through the rebuilt connection
    got = await rabbit.claim_events("g", 10, 30.0)
    assert sorted((d.payload, d.attempt) for d in got) == sorted(
        [(first.payload, 2), (second.payload, 1)]  # the first came back, counted
    )
    assert await rabbit.settle_events("g", [EventOutcome(held.key, 1)]) == 0  # stale
    assert await rabbit.settle_events("g", [EventOutcome(d.key, d.attempt) for d in got]) == 2
    other = await make_broker()  # another process: the group is registered in the store
    assert [s.group for s in await other.event_groups()] == ["g"]


async def test_an_event_whose_handler_keeps_failing_is_parked_then_dead_lettered(
    app: dromos.App, workers: Workers, rabbit: RabbitMQBroker, channel: aio_pika.abc.AbstractChannel
) -> None:
    calls: list[int] = []

    @app.subscriber("orders.*", group="failing", retries=2, backoff=0.01, max_backoff=0.02)
    async def fail(event: dromos.Event[dict[str, int]]) -> None:
        calls.append(event.attempt)
        raise RuntimeError(f"boom {event.attempt}")

    worker = workers.start(app)
    await eventually(lambda: worker.event_runner is not None, what="subscribers started")

    async def joined() -> bool:
        return bool(await rabbit.event_groups())  # registered in the store

    await eventually(joined, what="the group joined")
    await app.apublish("orders.created", {"id": 7})
    await eventually(lambda: len(calls) >= 3, what="three attempts")

    async def dead_letter_stored() -> bool:
        return (await rabbit.store.parked_counts()).get("failing") == (0, 1)

    await eventually(dead_letter_stored, what="the dead letter parked in the store")
    [dead] = await rabbit.event_dead_letters("failing")
    assert calls == [1, 2, 3]  # two retries, each republished by the relay
    assert [(e.attempt, e.message) for e in dead.errors] == [(1, "boom 1"), (2, "boom 2"),
                                                             (3, "boom 3")]  # fmt: skip
    assert dead.attempts == 3
    assert await _ready(channel, rabbit.events.names.group("failing")) == 0  # acked off it


async def test_a_malformed_message_on_a_group_queue_is_dead_lettered_with_its_reason(
    app: dromos.App, workers: Workers, rabbit: RabbitMQBroker, channel: aio_pika.abc.AbstractChannel
) -> None:
    handled: list[int] = []

    @app.subscriber("orders.*", group="audit")
    async def audit(event: dromos.Event[dict[str, int]]) -> None:
        handled.append(event.data["id"])

    await rabbit.join_group("audit", ["orders.*"], "latest")
    queue = rabbit.events.names.group("audit")
    await channel.default_exchange.publish(aio_pika.Message(b"\x00 not json"), routing_key=queue)
    await channel.default_exchange.publish(
        aio_pika.Message(b'{"specversion": "0.3"}', message_id="foreign-1"), routing_key=queue
    )
    workers.start(app)
    await app.apublish("orders.created", {"id": 1})
    await eventually(lambda: handled == [1], what="the good event handled")

    async def both_dead() -> bool:
        return len(await rabbit.event_dead_letters("audit")) == 2

    await eventually(both_dead, what="both malformed messages dead-lettered")
    dead = await rabbit.event_dead_letters("audit")
    reasons = sorted(d.errors[-1].message for d in dead)
    assert all(d.errors[-1].type == "DecodeError" for d in dead)
    assert reasons[0].startswith("not a JSON object")
    assert reasons[1].startswith("specversion must be '1.0'")
    assert {d.payload for d in dead} == {b"\x00 not json", b'{"specversion": "0.3"}'}
    assert "foreign-1" in {d.key for d in dead}


async def test_instances_joining_a_group_at_once_fill_it_from_the_log_once(
    rabbit: RabbitMQBroker, make_broker: MakeBroker, channel: aio_pika.abc.AbstractChannel
) -> None:
    # Two replicas of one service deployed together: both join "earliest" at the same time.
    events = [record(data=i) for i in range(20)]
    await rabbit.publish(events)
    other = await make_broker()
    await asyncio.gather(
        rabbit.join_group("g", ["#"], "earliest"), other.join_group("g", ["#"], "earliest")
    )
    # Filled once: each event on the queue once (the conformance suite checks that each is
    # then claimed once, on every backend).
    assert await _ready(channel, rabbit.events.names.group("g")) == len(events)


@pytest.fixture
async def through_proxy(backend: Target) -> AsyncIterator[tuple[Proxy, MakeBroker]]:
    """A proxy in front of the node, and ``make(publish_timeout=...)``: a broker on the
    test's names and store whose link goes through it."""
    proxy = Proxy(RABBITMQ_PORT)
    await proxy.start()
    made: list[Broker] = []

    async def make(**query: float) -> Broker:
        url = backend.broker.replace(f":{RABBITMQ_PORT}/", f":{proxy.port}/")
        url += "".join(f"&{key}={value}" for key, value in query.items())
        broker = create_broker(url, BrokerOptions(), backend.backend)
        await broker.open()
        made.append(broker)
        return broker

    yield proxy, make
    proxy.flowing.set()
    for broker in made:
        await broker.close()
    await proxy.stop()


async def test_an_event_publish_on_a_stalled_link_fails_at_publish_timeout(
    through_proxy: tuple[Proxy, MakeBroker],
) -> None:
    # No confirm comes and the connection is not (yet) seen lost: the publish fails on the
    # jobs' deadline instead of waiting for the heartbeat to give up on the link.
    proxy, make = through_proxy
    broker = await make(publish_timeout=0.5)
    await broker.publish([record()])  # connected and declared
    proxy.flowing.clear()
    started = time.monotonic()
    with pytest.raises(BrokerError, match=r"publishing 1 of 1 event\(s\) failed"):
        await asyncio.wait_for(broker.publish([record()]), 20)
    assert time.monotonic() - started < 10.5  # within publish_limit (0.5 s + 10 s)


async def test_a_big_event_publish_on_a_slow_link_succeeds_while_its_confirms_keep_coming(
    through_proxy: tuple[Proxy, MakeBroker], channel: aio_pika.abc.AbstractChannel
) -> None:
    proxy, make = through_proxy
    broker = await make(publish_timeout=0.6)
    assert isinstance(broker, RabbitMQBroker)
    await broker.join_group("g", ["#"], "latest")
    proxy.lag = 0.05  # 600 x 4 KB through 64 KB reads: about 2 s
    started = time.monotonic()
    await broker.publish([record(data="x" * 4096) for _ in range(600)])
    assert time.monotonic() - started > 0.6  # longer than publish_timeout in all
    proxy.lag = 0
    assert await _ready(channel, broker.events.names.group("g")) == 600
