"""The AMQP half of the RabbitMQ broker (``dromos.brokers.rabbitmq_transport``), against the
shared node at 127.0.0.1:5672 (guest/guest).

Each test works under a prefix of its own (``dromos_t_<hex>``) and deletes every queue and
exchange it declared; nothing else of the node (configuration, users, vhosts, policies) is
touched. Outages are made by a TCP proxy on loopback in front of the node (:class:`Proxy`):
cut its connections, or stop and restart it, without touching the node.

The URL tests need no server.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

import pytest

if importlib.util.find_spec("aio_pika") is None:  # the rabbitmq extra
    _why = "aio-pika is not installed: pip install -e '.[rabbitmq]'"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{_why}: CI must run the RabbitMQ tests", pytrace=False)
    pytest.skip(_why, allow_module_level=True)

import aio_pika
import aiormq

from dromos.brokers.rabbitmq_transport import (
    AmqpTransport,
    Message,
    Name,
    Outgoing,
    band_of,
    parse_url,
)
from dromos.errors import BrokerError, ConfigurationError
from tests.proxy import Proxy
from tests.servers import require_server

HOST, PORT = "127.0.0.1", 5672


def amqp_url(prefix: str, *, port: int = PORT, password: str = "guest", **options: Any) -> str:
    query = urlencode({"prefix": prefix, **options})
    return f"amqp://guest:{password}@{HOST}:{port}/?{query}"


def job_id(n: int) -> str:
    """Ids that sort in the order of ``n``, as UUIDv7 ids sort in enqueue order."""
    return f"0190a000-0000-7000-8000-{n:012d}"


def outgoing(n: int, queue: str = "a", priority: int = 0) -> Outgoing:
    return Outgoing(job_id(n), queue, priority, b'{"id": "%d"}' % n)


MakeTransport = Callable[..., AmqpTransport]


@pytest.fixture
def prefix() -> str:
    require_server("rabbitmq", HOST, PORT)
    return f"dromos_t_{secrets.token_hex(6)}"


@pytest.fixture
async def make(prefix: str) -> AsyncIterator[MakeTransport]:
    """``make(port=..., publish_timeout=...)``: a transport under the test's prefix; at the
    end every one is closed and everything any of them declared is deleted."""
    made: list[AmqpTransport] = []

    def factory(*, port: int = PORT, prefetch: int | None = None, **options: Any) -> AmqpTransport:
        transport = AmqpTransport(amqp_url(prefix, port=port, **options), prefetch=prefetch)
        made.append(transport)
        return transport

    yield factory
    declared: set[Name] = set()
    for transport in made:
        await transport.close()
        declared |= transport.declared
    assert all(n.name.startswith(f"{prefix}.") for n in declared)
    await AmqpTransport(amqp_url(prefix)).delete_names(declared)


@pytest.fixture
async def proxy(prefix: str) -> AsyncIterator[Proxy]:
    proxy = Proxy(PORT)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def drain(transport: AmqpTransport, queues: list[str], limit: int = 100) -> list[Message]:
    """Take and ack until a take finds nothing."""
    got: list[Message] = []
    while taken := await transport.take(queues, limit):
        assert await transport.ack(taken) == len(taken)
        got += taken
    return got


# -- the barrier ------------------------------------------------------------------------------
async def test_one_barrier_get_buffers_every_ready_message(make: MakeTransport) -> None:
    """The design's proof first (§4.2 step 3): N ready on a quorum queue, a consumer at
    prefetch >= N, one barrier get per band: all N are buffered. 30 rounds, half with a
    consumer started by the barrier itself, half with a consumer already running when the N
    were published."""
    n = 50
    producer, consumer = make(), make(prefetch=64)
    for round_ in range(30):
        fresh = round_ % 2 == 0
        if fresh:
            assert await consumer.nack_all() == 0  # stops consuming: the barrier starts it
        else:
            await consumer.consume(["a"])
        await producer.publish([outgoing(round_ * 1000 + i) for i in range(n)])
        if fresh:
            assert consumer.candidates(["a"]) == []
        await consumer.barrier(["a"], limit=n)
        buffered = consumer.candidates(["a"])
        assert len(buffered) == n, f"round {round_}: {len(buffered)} of {n} after the barrier"
        assert await consumer.ack(buffered) == n
    # Nothing left behind: a last barrier finds the queues empty.
    await consumer.barrier(["a"], limit=n)
    assert consumer.candidates(["a"]) == []


# -- publish, take, ack -----------------------------------------------------------------------
async def test_confirmed_messages_are_taken_and_acked_once_each(make: MakeTransport) -> None:
    producer, consumer = make(), make(prefetch=8)
    sent = [outgoing(i, priority=p) for i, p in enumerate([0, 3, -2, 0, 1, -1, 0] * 10)]
    await producer.publish(sent)
    got = await drain(consumer, ["a"], limit=7)
    assert sorted(m.job_id for m in got) == sorted(o.job_id for o in sent)
    assert {m.job_id: m.body for m in got} == {o.job_id: o.body for o in sent}
    # Acked means gone: another consumer finds nothing, also after this one closed.
    await consumer.close()
    assert await make().take(["a"], 100) == []


async def test_bands_and_order_by_priority_then_id(make: MakeTransport) -> None:
    producer, consumer = make(), make()
    # Enqueue order = id order; priorities mixed, two queues.
    plan = [("a", 0), ("a", 5), ("b", 1), ("a", -3), ("b", 5), ("a", 0), ("b", -1), ("a", 1)]
    await producer.publish([outgoing(i, q, p) for i, (q, p) in enumerate(plan)])
    taken = await consumer.take(["a", "b"], 100)
    expected = sorted(range(len(plan)), key=lambda i: (-plan[i][1], i))
    assert [m.job_id for m in taken] == [job_id(i) for i in expected]
    for m in taken:
        i = int(m.job_id[-12:])
        assert (m.queue, m.priority, m.band) == (plan[i][0], plan[i][1], band_of(plan[i][1]))
    assert {m.band for m in taken} == {"high", "normal", "low"}
    await consumer.ack(taken)
    # A limit takes the best first and leaves the rest buffered, in order.
    await producer.publish([outgoing(100 + i, "a", p) for i, p in enumerate([0, 2, -1, 2])])
    first = await consumer.take(["a"], 2)
    assert [m.job_id for m in first] == [job_id(101), job_id(103)]
    assert [m.job_id for m in consumer.candidates(["a"])] == [job_id(100), job_id(102)]
    await consumer.ack(first + consumer.candidates(["a"]))


async def test_a_message_without_the_priority_header_gets_its_band_default(
    make: MakeTransport, prefix: str
) -> None:
    consumer = make()
    await consumer.consume(["a"])  # declares the queues
    connection = await aio_pika.connect(amqp_url(prefix))
    async with connection:
        channel = await connection.channel()
        jobs = await channel.get_exchange(f"{prefix}.jobs")
        for key, n in (("a.low", 1), ("a.high", 2), ("a.normal", 3)):
            await jobs.publish(aio_pika.Message(b"{}", message_id=job_id(n)), routing_key=key)
    await until(lambda: len(consumer.candidates(["a"])) == 3)
    taken = await consumer.take(["a"], 10)
    assert [(m.job_id, m.priority) for m in taken] == [
        (job_id(2), 1),
        (job_id(3), 0),
        (job_id(1), -1),
    ]
    await consumer.ack(taken)


async def test_declarations_follow_the_design(make: MakeTransport, prefix: str) -> None:
    transport = make()
    await transport.publish([outgoing(1, "a", 0)])
    ns = prefix
    bands = [f"{ns}.q.a.{b}" for b in ("high", "normal", "low")]
    assert transport.declared == {
        Name("exchange", f"{ns}.jobs"), Name("exchange", f"{ns}.dlx"), Name("queue", f"{ns}.dead"),
        *(Name("queue", q) for q in bands),
    }  # fmt: skip
    arguments = {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": f"{ns}.dlx",
        "x-delivery-limit": 20,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    connection = await aio_pika.connect(amqp_url(prefix))
    async with connection:
        channel = await connection.channel()
        # The same declaration is accepted (the arguments match) ...
        for name in bands:
            await channel.declare_queue(name, durable=True, arguments=arguments)
        await channel.declare_exchange(f"{ns}.jobs", aio_pika.ExchangeType.DIRECT, durable=True)
        await channel.declare_exchange(f"{ns}.dlx", aio_pika.ExchangeType.FANOUT, durable=True)
        await channel.declare_queue(
            f"{ns}.dead", durable=True, arguments={"x-queue-type": "quorum"}
        )
        normal = await channel.declare_queue(bands[1], passive=True)
        assert normal.declaration_result.message_count == 1
        # ... and a different one is refused: they were declared with exactly these.
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await channel.declare_queue(
                bands[0], durable=True, arguments={**arguments, "x-delivery-limit": 5}
            )
    await make().take(["a"], 10)  # (acked or not, the teardown deletes them)


async def test_delete_names_removes_everything_declared(make: MakeTransport, prefix: str) -> None:
    transport = make()
    await transport.publish([outgoing(1, "a", 0), outgoing(2, "b", 1)])
    declared = set(transport.declared)
    assert len(declared) == 3 + 6
    await transport.close()
    await transport.delete_names(declared)
    assert transport.declared == set()
    connection = await aio_pika.connect(amqp_url(prefix))
    async with connection:
        for name in declared:
            channel = await connection.channel()
            check = (
                channel.declare_queue(name.name, passive=True)
                if name.kind == "queue"
                else channel.get_exchange(name.name, ensure=True)
            )
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                await check


# -- shutdown, losses, outages ----------------------------------------------------------------
async def test_nack_all_requeues_buffered_and_held_messages(make: MakeTransport) -> None:
    producer, first = make(), make()
    await producer.publish([outgoing(i) for i in range(5)])
    held = await first.take(["a"], 2)
    assert len(held) == 2
    assert len(first.candidates(["a"])) == 3
    assert await first.nack_all() == 5
    assert first.candidates(["a"]) == []
    assert await first.ack(held) == 0  # nacked already: nothing to ack
    # They come back, to another consumer (and to this one, which consumes again on demand).
    second = make()
    again = await drain(second, ["a"])
    assert sorted(m.job_id for m in again) == [job_id(i) for i in range(5)]
    assert all(m.redelivered for m in again)
    assert await first.take(["a"], 10) == []


async def test_a_lost_connection_drops_the_buffer_and_the_messages_come_again(
    make: MakeTransport, proxy: Proxy
) -> None:
    producer, consumer = make(), make(port=proxy.port)
    await producer.publish([outgoing(i) for i in range(6)])
    held = await consumer.take(["a"], 2)
    assert len(consumer.candidates(["a"])) == 4
    proxy.cut()
    await until(lambda: consumer.losses() == 1)
    assert consumer.candidates(["a"]) == []
    assert await consumer.ack(held) == 0  # a lost connection's tags mean nothing now
    # Reconnected (backoff 0.1 s) and consuming again: every message comes again, once.
    again = await drain(consumer, ["a"])
    assert sorted(m.job_id for m in again) == [job_id(i) for i in range(6)]
    assert consumer.losses() == 1
    assert await make().take(["a"], 10) == []


async def test_a_connection_closed_by_a_cancellation_is_dropped_quietly_and_reopened_on_use(
    make: MakeTransport, caplog: pytest.LogCaptureFixture
) -> None:
    # What an ending asyncio.run does to a connection: it cancels its reader. That is not a
    # lost RabbitMQ: no warning, no reconnection task on a loop that is going away; a later
    # call on a loop that lives on connects again.
    consumer = make()
    await consumer.consume(["a"])
    link = consumer._state().link
    assert link is not None
    with caplog.at_level("WARNING", logger="dromos.rabbitmq"):
        link.connection.transport.connection._reader_task.cancel()  # type: ignore[union-attr]
        await until(lambda: link.lost)
    assert [r.getMessage() for r in caplog.records if "lost" in r.getMessage()] == []
    assert consumer._state().rebuilding is None
    assert consumer.losses() == 1
    await make().publish([outgoing(1)])
    assert [m.job_id for m in await drain(consumer, ["a"])] == [job_id(1)]


async def test_a_take_under_way_at_a_loss_raises_broker_error(
    make: MakeTransport, proxy: Proxy
) -> None:
    consumer = make(port=proxy.port)
    await consumer.consume(["a"])
    proxy.flowing.clear()  # the barrier's get gets no answer ...
    take = asyncio.create_task(consumer.take(["a"], 10))
    await asyncio.sleep(0.2)
    assert not take.done()
    proxy.cut()  # ... and then the connection is gone
    proxy.flowing.set()
    with pytest.raises(BrokerError, match=r"RabbitMQ at amqp://127\.0\.0\.1:\d+/: claiming"):
        await take
    assert await consumer.take(["a"], 10) == []  # the next one reconnects


async def test_a_publish_during_a_short_outage_succeeds_after_reconnecting(
    make: MakeTransport, proxy: Proxy
) -> None:
    producer = make(port=proxy.port, publish_timeout=10)
    await producer.publish([outgoing(0)])
    await proxy.stop()  # connections cut, nothing listens: reconnects are refused
    publish = asyncio.create_task(producer.publish([outgoing(i) for i in range(1, 21)]))
    await asyncio.sleep(0.6)
    assert not publish.done()
    started = time.monotonic()
    await proxy.start()
    await asyncio.wait_for(publish, 10)
    assert time.monotonic() - started < 6  # within one backoff step (<= 5 s + 20 %)
    got = await drain(make(), ["a"])
    assert sorted(m.job_id for m in got) == [job_id(i) for i in range(21)]


async def test_a_big_publish_on_a_slow_link_succeeds_while_its_confirms_keep_coming(
    make: MakeTransport, proxy: Proxy
) -> None:
    # A thousand enqueues coalesced on a loaded machine took longer than publish_timeout in
    # all, with confirms all along: the timeout is for a publish that stopped moving.
    producer = make(port=proxy.port, publish_timeout=0.6)
    await producer.publish([outgoing(0)])
    proxy.lag = 0.05  # 600 x 4 KB through 64 KB reads: about 2 s
    bulky = [Outgoing(job_id(i), "a", 0, b"x" * 4096) for i in range(1, 601)]
    started = time.monotonic()
    await producer.publish(bulky)
    assert time.monotonic() - started > 0.6  # longer than publish_timeout in all
    proxy.lag = 0
    got = await drain(make(), ["a"])
    assert {m.job_id for m in got} == {job_id(i) for i in range(601)}


async def test_a_publish_fails_with_broker_error_past_publish_timeout(prefix: str) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind((HOST, 0))
        closed = sock.getsockname()[1]
    transport = AmqpTransport(
        amqp_url(prefix, port=closed, password="s3cret-pw", publish_timeout=0.3)
    )
    started = time.monotonic()
    try:
        with pytest.raises(BrokerError) as raised:
            await transport.publish([outgoing(1)])
    finally:
        await transport.close()
    assert 0.25 < time.monotonic() - started < 3
    message = str(raised.value)
    assert f"RabbitMQ at amqp://127.0.0.1:{closed}/: publishing" in message
    assert "s3cret-pw" not in message


async def test_wait_returns_when_a_delivery_arrives_or_at_its_timeout(
    make: MakeTransport,
) -> None:
    producer, consumer = make(), make()
    started = time.monotonic()
    assert await consumer.wait(["a"], 0.3) is False
    assert 0.25 < time.monotonic() - started < 2
    waiting = asyncio.create_task(consumer.wait(["a"], 10))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await producer.publish([outgoing(1, "b")])  # another queue wakes nobody
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await producer.publish([outgoing(2, "a", 7)])
    assert await asyncio.wait_for(waiting, 5) is True
    assert await consumer.wait(["a"], 5) is True  # buffered: at once
    await consumer.ack(await consumer.take(["a"], 10))


# -- the URL ----------------------------------------------------------------------------------
def test_the_url_gives_prefix_timeout_prefetch_and_a_safe_url() -> None:
    settings = parse_url(
        "amqps://app:pw@mq.example:5671/prod?prefix=shop&publish_timeout=2.5&prefetch=32&name=x"
    )
    assert (settings.prefix, settings.publish_timeout, settings.prefetch) == ("shop", 2.5, 32)
    assert settings.safe_url == "amqps://mq.example:5671/prod"
    assert settings.url == "amqps://app:pw@mq.example:5671/prod?name=x&heartbeat=15"
    defaults = parse_url("amqp://127.0.0.1")
    assert (defaults.prefix, defaults.publish_timeout, defaults.prefetch) == ("dromos", 10.0, 16)
    assert defaults.safe_url == "amqp://127.0.0.1/"
    assert parse_url("amqp://h/?heartbeat=30").url == "amqp://h/?heartbeat=30"
    assert AmqpTransport("amqp://h/?prefetch=4", prefetch=9).settings.prefetch == 9


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://h/", "not a RabbitMQ URL"),
        ("amqp:///vhost", "names no host"),
        ("amqp://h:port/", "port"),
        ("amqp://h/?prefix=", "prefix=''"),
        ("amqp://h/?prefix=a.b", "no dots"),
        ("amqp://h/?prefix=a{b}", "prefix="),
        ("amqp://h/?publish_timeout=0", "publish_timeout='0'"),
        ("amqp://h/?publish_timeout=-1", "publish_timeout="),
        ("amqp://h/?publish_timeout=soon", "publish_timeout='soon'"),
        ("amqp://h/?publish_timeout=inf", "publish_timeout="),
        ("amqp://h/?prefetch=0", "prefetch='0'"),
        ("amqp://h/?prefetch=many", "prefetch='many'"),
        ("amqp://h/?prefetch=70000", "1 to 65535"),
        ("amqp://h/?prefech=4", "unknown option(s) in the RabbitMQ URL: prefech"),
    ],
)
def test_a_bad_url_is_refused_with_what_to_write(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_url(url)
    assert says in str(raised.value)


def test_a_bad_prefetch_argument_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="prefetch=0"):
        AmqpTransport("amqp://h/", prefetch=0)
