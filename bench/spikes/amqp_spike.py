"""Spike for the RabbitMQ broker (issue 7): what aio-pika on RabbitMQ can reach, and which
RabbitMQ 3.10 features dromos can build on. Not part of ``make test``.

    .venv/bin/python bench/spikes/amqp_spike.py [--url amqp://guest:guest@127.0.0.1/] [--quick]

Two parts, both on the given node (the shared one by default), under queue and exchange
names unique to this run (``dromos-spike-<hex>-...``) that are deleted at the end, whatever
happens (``finally``). Nothing else of the node is touched: no policy, vhost, user or config.

1. Facts: declares small test queues to check what the server accepts (quorum queue
   arguments, streams, the delayed-message exchange type, requeue order, delivery counts).
2. Figures, each the median of 3 runs, with a dromos-sized envelope (~330 bytes JSON) on a
   durable quorum queue, persistent messages:
   - publish with publisher confirms, one at a time (await each confirm): messages/s;
   - publish in batches (confirms pipelined: ``BATCH`` publishes in flight, then awaited): /s;
   - consume with manual acks at prefetch 32 and 256 (one ack per message): messages/s;
   - ``basic.get`` one at a time with manual acks (the claim fallback): messages/s;
   - round trip publish -> delivery to an idle consumer (one message at a time): p50/p99 ms.

The delayed-exchange probe makes aiormq log "Unexpected connection close ... unknown exchange
type": that is the answer (the plugin is absent), on a connection of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

PREFIX = f"dromos-spike-{secrets.token_hex(4)}"
QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}
ENVELOPE = json.dumps(
    {
        "v": 1,
        "id": "01935f4e-7a3b-7c1d-9e2f-0123456789ab",
        "task": "bench.noop",
        "queue": "default",
        "args": [42, "thumbnail"],
        "kwargs": {"width": 800},
        "attempt": 0,
        "max_attempts": 4,
        "eta": None,
        "priority": 0,
        "created_at": "2026-11-26T10:00:00.000000Z",
        "headers": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    }
).encode()


class Names:
    """Every queue and exchange this run declares, for the cleanup."""

    def __init__(self) -> None:
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def queue(self, suffix: str) -> str:
        name = f"{PREFIX}-{suffix}"
        self.queues.append(name)
        return name

    def exchange(self, suffix: str) -> str:
        name = f"{PREFIX}-{suffix}"
        self.exchanges.append(name)
        return name


NAMES = Names()


def message(body: bytes = ENVELOPE, **kwargs: Any) -> aio_pika.Message:
    return aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **kwargs)


# -- part 1: facts ----------------------------------------------------------------------------
async def try_declare(
    conn: AbstractRobustConnection, suffix: str, arguments: dict[str, Any]
) -> str:
    """Declare a queue on a channel of its own (a refusal closes the channel): 'ok' or why."""
    channel = await conn.channel()
    name = NAMES.queue(suffix)
    try:
        await channel.declare_queue(name, durable=True, arguments=arguments)
        return "accepted"
    except aiormq.exceptions.AMQPError as exc:
        return f"refused: {exc}"
    finally:
        if not channel.is_closed:
            await channel.close()


async def facts(conn: AbstractRobustConnection, url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    server = conn.transport.connection.server_properties  # type: ignore[union-attr]
    product, version = (server.get(k) for k in ("product", "version"))
    out["server"] = " ".join(
        v.decode() if isinstance(v, bytes) else str(v) for v in (product, version)
    )
    checks: dict[str, dict[str, Any]] = {
        "quorum + x-max-priority": {**QUORUM, "x-max-priority": 10},
        "quorum + x-message-ttl": {**QUORUM, "x-message-ttl": 1000},
        "quorum + x-delivery-limit": {**QUORUM, "x-delivery-limit": 5},
        "quorum + at-least-once dead-lettering": {
            **QUORUM,
            "x-dead-letter-exchange": "amq.direct",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
        "quorum + x-single-active-consumer": {**QUORUM, "x-single-active-consumer": True},
        "quorum + x-consumer-timeout (3.12+ arg)": {**QUORUM, "x-consumer-timeout": 5000},
        "stream + x-max-age": {"x-queue-type": "stream", "x-max-age": "7D"},
        "classic + x-max-priority": {"x-max-priority": 10},
    }
    for label, arguments in checks.items():
        suffix = label.split()[0] + "-" + secrets.token_hex(2)
        out[label] = await try_declare(conn, suffix, arguments)

    out.update(await requeue_and_delivery_count(conn))
    out.update(await per_message_ttl_on_quorum(conn))
    out.update(await stream_offsets(conn))
    out["x-delayed-message exchange"] = await delayed_exchange(url)
    return out


async def delayed_exchange(url: str) -> str:
    """Is the delayed-message plugin enabled? An unknown exchange type closes the whole
    connection (503, a connection-level error), so this asks on a connection of its own."""
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel()
        await channel.declare_exchange(
            NAMES.exchange("delayed"), "x-delayed-message", durable=True,
            arguments={"x-delayed-type": "direct"},
        )  # fmt: skip
        return "accepted (plugin enabled)"
    except (aiormq.exceptions.AMQPError, RuntimeError) as exc:
        return f"refused: {exc}"
    finally:
        if not conn.is_closed:
            await conn.close()


async def requeue_and_delivery_count(conn: AbstractRobustConnection) -> dict[str, Any]:
    """Where a nacked (requeued) message goes in a quorum queue, and x-delivery-count."""
    channel = await conn.channel(publisher_confirms=True)
    name = NAMES.queue("requeue")
    queue = await channel.declare_queue(name, durable=True, arguments=QUORUM)
    for body in (b"A", b"B", b"C"):
        await channel.default_exchange.publish(message(body), routing_key=name)
    first = await queue.get(no_ack=False)
    assert first is not None
    await first.nack(requeue=True)
    order = []
    counts = []
    for _ in range(3):
        got = await queue.get(no_ack=False, fail=False)
        if got is None:
            break
        order.append(got.body.decode())
        counts.append((got.headers or {}).get("x-delivery-count"))
        await got.ack()
    ready = (await channel.declare_queue(name, passive=True)).declaration_result.message_count
    await channel.close()
    return {
        "quorum requeue order after nack(A)": "".join(order),
        "x-delivery-count seen (A,B,C order above)": counts,
        "declare-ok message_count after draining": ready,
    }


async def per_message_ttl_on_quorum(conn: AbstractRobustConnection) -> dict[str, Any]:
    """Does a quorum queue dead-letter an expired message (per-message expiration) back?"""
    channel = await conn.channel(publisher_confirms=True)
    target = NAMES.queue("ttl-target")
    holding = NAMES.queue("ttl-holding")
    tq = await channel.declare_queue(target, durable=True, arguments=QUORUM)
    await channel.declare_queue(
        holding, durable=True,
        arguments={**QUORUM, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": target},
    )  # fmt: skip
    t0 = time.monotonic()
    await channel.default_exchange.publish(message(b"late", expiration=0.3), routing_key=holding)
    got = None
    while time.monotonic() - t0 < 5 and got is None:
        got = await tq.get(no_ack=True, fail=False)
        if got is None:
            await asyncio.sleep(0.02)
    await channel.close()
    if got is None:
        return {"quorum per-message TTL dead-letters back": "no (nothing within 5 s)"}
    return {
        "quorum per-message TTL dead-letters back": f"yes, after {time.monotonic() - t0:.2f} s "
        "(asked 0.30 s)",
        "x-death on the dead-lettered copy": bool((got.headers or {}).get("x-death")),
    }


async def stream_offsets(conn: AbstractRobustConnection) -> dict[str, Any]:
    """A stream read from 'first' and from a timestamp over AMQP 0.9.1 (needs a prefetch)."""
    channel = await conn.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=100)
    name = NAMES.queue("stream")
    stream: dict[str, Any] = {"x-queue-type": "stream", "x-max-age": "1h"}
    await channel.declare_queue(name, durable=True, arguments=stream)
    await channel.default_exchange.publish(message(b"before"), routing_key=name)
    await asyncio.sleep(1.1)  # stream timestamps are whole seconds for x-stream-offset
    # An AMQP timestamp (a datetime), not an int: an int is read as an offset number.
    since = datetime.fromtimestamp(int(time.time()), UTC)
    await channel.default_exchange.publish(message(b"after"), routing_key=name)
    await asyncio.sleep(0.05)

    async def read(offset: Any) -> list[str]:
        queue = await channel.get_queue(name, ensure=False)
        got: list[str] = []
        done = asyncio.Event()

        async def on(msg: AbstractIncomingMessage) -> None:
            got.append(msg.body.decode())
            await msg.ack()
            if len(got) >= 2:
                done.set()

        tag = await queue.consume(on, arguments={"x-stream-offset": offset})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 1.0)
        await queue.cancel(tag)
        return got

    first = await read("first")
    by_time = await read(since)
    await channel.close()
    return {"stream from 'first'": first, "stream from a timestamp (s)": by_time}


# -- part 2: figures --------------------------------------------------------------------------
async def fresh_queue(channel: AbstractChannel, suffix: str) -> aio_pika.abc.AbstractQueue:
    return await channel.declare_queue(NAMES.queue(suffix), durable=True, arguments=QUORUM)


async def publish_one_by_one(conn: AbstractRobustConnection, n: int) -> float:
    channel = await conn.channel(publisher_confirms=True)
    queue = await fresh_queue(channel, "pub1-" + secrets.token_hex(2))
    t0 = time.perf_counter()
    for _ in range(n):
        await channel.default_exchange.publish(message(), routing_key=queue.name)
    rate = n / (time.perf_counter() - t0)
    await queue.delete(if_unused=False, if_empty=False)
    await channel.close()
    return rate


async def fill(channel: AbstractChannel, queue: str, n: int, batch: int) -> None:
    publish = channel.default_exchange.publish
    for start in range(0, n, batch):
        await asyncio.gather(
            *(publish(message(), routing_key=queue) for _ in range(min(batch, n - start)))
        )


async def publish_batched(conn: AbstractRobustConnection, n: int, batch: int) -> float:
    channel = await conn.channel(publisher_confirms=True)
    queue = await fresh_queue(channel, f"pubN-{batch}-" + secrets.token_hex(2))
    t0 = time.perf_counter()
    await fill(channel, queue.name, n, batch)
    rate = n / (time.perf_counter() - t0)
    await queue.delete(if_unused=False, if_empty=False)
    await channel.close()
    return rate


async def consume(conn: AbstractRobustConnection, n: int, prefetch: int) -> float:
    pub = await conn.channel(publisher_confirms=True)
    queue = await fresh_queue(pub, f"con-{prefetch}-" + secrets.token_hex(2))
    await fill(pub, queue.name, n, 500)
    channel = await conn.channel()
    await channel.set_qos(prefetch_count=prefetch)
    cq = await channel.get_queue(queue.name, ensure=False)
    done = asyncio.Event()
    count = 0

    async def on(msg: AbstractIncomingMessage) -> None:
        nonlocal count
        await msg.ack()
        count += 1
        if count >= n:
            done.set()

    t0 = time.perf_counter()
    tag = await cq.consume(on)
    await asyncio.wait_for(done.wait(), 120)
    rate = n / (time.perf_counter() - t0)
    await cq.cancel(tag)
    await channel.close()
    await queue.delete(if_unused=False, if_empty=False)
    await pub.close()
    return rate


async def basic_get(conn: AbstractRobustConnection, n: int) -> float:
    pub = await conn.channel(publisher_confirms=True)
    queue = await fresh_queue(pub, "get-" + secrets.token_hex(2))
    await fill(pub, queue.name, n, 500)
    channel = await conn.channel()
    gq = await channel.get_queue(queue.name, ensure=False)
    t0 = time.perf_counter()
    for _ in range(n):
        msg = await gq.get(no_ack=False)
        assert msg is not None
        await msg.ack()
    rate = n / (time.perf_counter() - t0)
    await channel.close()
    await queue.delete(if_unused=False, if_empty=False)
    await pub.close()
    return rate


async def round_trip(conn: AbstractRobustConnection, n: int) -> tuple[float, float]:
    pub = await conn.channel(publisher_confirms=True)
    queue = await fresh_queue(pub, "rtt-" + secrets.token_hex(2))
    channel = await conn.channel()
    await channel.set_qos(prefetch_count=32)
    cq = await channel.get_queue(queue.name, ensure=False)
    arrived: asyncio.Queue[float] = asyncio.Queue()

    async def on(msg: AbstractIncomingMessage) -> None:
        arrived.put_nowait(time.perf_counter())
        await msg.ack()

    tag = await cq.consume(on)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        # Publish with its confirm, as dromos's enqueue does; the clock stops at the delivery.
        await pub.default_exchange.publish(message(), routing_key=queue.name)
        samples.append((await asyncio.wait_for(arrived.get(), 10) - t0) * 1000)
        await asyncio.sleep(0.002)  # the consumer is idle again before the next one
    await cq.cancel(tag)
    await channel.close()
    await queue.delete(if_unused=False, if_empty=False)
    await pub.close()
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]


async def median_of_3(label: str, run: Callable[[], Awaitable[float]]) -> float:
    runs = [await run() for _ in range(3)]
    value = statistics.median(runs)
    print(f"  {label:<52} {value:>9,.0f} /s   (runs: {', '.join(f'{r:,.0f}' for r in runs)})")
    return value


async def figures(conn: AbstractRobustConnection, quick: bool) -> dict[str, Any]:
    scale = 5 if quick else 1
    out: dict[str, Any] = {}
    out["publish, confirm each"] = await median_of_3(
        "publish with confirms, one at a time", lambda: publish_one_by_one(conn, 2000 // scale)
    )
    for batch in (100, 1000):
        out[f"publish, batches of {batch}"] = await median_of_3(
            f"publish in batches of {batch} (confirms pipelined)",
            lambda b=batch: publish_batched(conn, 20000 // scale, b),  # type: ignore[misc]
        )
    for prefetch in (32, 256):
        out[f"consume, prefetch {prefetch}"] = await median_of_3(
            f"consume, prefetch {prefetch}, manual ack each",
            lambda p=prefetch: consume(conn, 20000 // scale, p),  # type: ignore[misc]
        )
    out["basic.get one at a time"] = await median_of_3(
        "basic.get + ack, one at a time", lambda: basic_get(conn, 2000 // scale)
    )
    rtts = [await round_trip(conn, 500 // scale) for _ in range(3)]
    p50 = statistics.median(r[0] for r in rtts)
    p99 = statistics.median(r[1] for r in rtts)
    label = "round trip publish(confirmed) -> idle consumer"
    print(f"  {label:<52} p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    out["round trip p50 ms"], out["round trip p99 ms"] = p50, p99
    return out


async def cleanup(url: str) -> None:
    """Delete every queue and exchange this run declared (each on a fresh channel)."""
    conn = await aio_pika.connect(url)
    try:
        for name in NAMES.queues:
            channel = await conn.channel()
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await channel.queue_delete(name)
            if not channel.is_closed:
                await channel.close()
        for name in NAMES.exchanges:
            channel = await conn.channel()
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await channel.exchange_delete(name)
            if not channel.is_closed:
                await channel.close()
    finally:
        await conn.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--quick", action="store_true", help="a fifth of the messages")
    parser.add_argument("--no-facts", action="store_true")
    args = parser.parse_args()
    print(f"aio-pika {aio_pika.__version__}, names under {PREFIX}")
    conn = await aio_pika.connect_robust(args.url)
    try:
        if not args.no_facts:
            print("facts:")
            for key, value in (await facts(conn, args.url)).items():
                print(f"  {key}: {value}")
        size = len(ENVELOPE)
        print(f"figures (quorum queue, persistent, {size}-byte envelope, median of 3):")
        await figures(conn, args.quick)
    finally:
        await conn.close()
        await cleanup(args.url)
        print(f"deleted {len(NAMES.queues)} queue(s) and {len(NAMES.exchanges)} exchange(s)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
