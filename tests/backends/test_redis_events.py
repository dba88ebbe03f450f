"""The event bus on Redis, where the contract suite cannot look: the stream itself.

Entries written straight to the stream (not by ``publish``), the keys the bus uses, trimming
by retention, the lag after trimming, a deleted log, and a waiting consumer that must not
spin on the backlog of a group it does not serve. Run with raw redis-py next to the broker,
on the shared server under a private prefix (and the private Cluster for the key layout).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio

from dromos.brokers import create_broker
from dromos.brokers.base import (
    BrokerOptions,
    EventDeadLetter,
    EventDelivery,
    EventOutcome,
    EventRecord,
)
from dromos.brokers.redis import RedisBroker
from dromos.events import encode_event
from dromos.events.envelope import decode_event
from dromos.job import JobError
from dromos.message import DecodeError, new_job_ids, utcnow
from tests.backends.conftest import require_server
from tests.redis_servers import (
    SHARED_HOST,
    SHARED_PORT,
    RedisCluster,
    delete_prefix,
    new_prefix,
)

MakeRedisBroker = Callable[..., Awaitable[RedisBroker]]


def record(topic: str = "orders.created", data: object = None) -> EventRecord:
    event_id = new_job_ids(1)[0]
    body = encode_event(topic, data, event_id=event_id, source="/test", time=utcnow())
    return EventRecord(topic, event_id, body)


@pytest.fixture
def prefix() -> str:
    return new_prefix()


@pytest.fixture
async def raw(prefix: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client of the shared server; the prefix's keys are deleted afterwards."""
    require_server("redis", SHARED_HOST, SHARED_PORT)
    client = redis.asyncio.Redis(host=SHARED_HOST, port=SHARED_PORT, db=0)
    try:
        yield client
    finally:
        await client.aclose()
        delete_prefix(SHARED_HOST, SHARED_PORT, prefix)


@pytest.fixture
async def make_broker(raw: redis.asyncio.Redis, prefix: str) -> AsyncIterator[MakeRedisBroker]:
    """``await make_broker(event_retention=0.2, ...)``: an opened broker on the prefix."""
    made: list[RedisBroker] = []

    async def make(**options: Any) -> RedisBroker:
        url = f"redis://{SHARED_HOST}:{SHARED_PORT}/0?prefix={prefix}"
        broker = RedisBroker(url, BrokerOptions(**options))
        await broker.open()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()


def log_key(prefix: str) -> str:
    return f"{{{prefix}:events}}:log"


async def test_entries_without_a_payload_or_with_garbage_are_delivered(
    make_broker: MakeRedisBroker, raw: redis.asyncio.Redis, prefix: str
) -> None:
    broker = await make_broker()
    await broker.join_group("g", ["orders.*"], "latest")
    log = log_key(prefix)
    await raw.xadd(log, {"t": "orders.created"})  # no payload
    await raw.xadd(log, {"t": "orders.created", "p": b"\xff not json"})
    await raw.xadd(log, {"p": b"{}"})  # no topic: cannot be routed, every group gets it
    await raw.xadd(log, {"t": "payments.created", "p": b"{}"})  # not the group's
    good = record(data="after")
    await broker.publish([good])
    got = await broker.claim_events("g", 10, 30.0)
    assert [(d.topic, d.payload, d.attempt) for d in got] == [
        ("orders.created", b"", 1),
        ("orders.created", b"\xff not json", 1),
        ("", b"{}", 1),
        (good.topic, good.payload, 1),
    ]
    # The runner cannot decode them: it dead-letters them with the reason; the good one goes on.
    outcomes = []
    for d in got[:3]:
        with pytest.raises(DecodeError) as caught:
            decode_event(d.payload, d.attempt)
        error = JobError(type="DecodeError", message=str(caught.value), attempt=d.attempt)
        outcomes.append(EventOutcome(d.key, d.attempt, error))
    outcomes.append(EventOutcome(got[3].key, 1))
    assert await broker.settle_events("g", outcomes) == 4
    dead = await broker.event_dead_letters("g")
    assert [x.key for x in dead] == [d.key for d in got[:3]]
    assert {x.errors[-1].type for x in dead} == {"DecodeError"}
    [stats] = await broker.event_groups()
    assert (stats.lag, stats.running, stats.retrying, stats.dead) == (0, 0, 0, 3)
    assert await broker.claim_events("g", 10, 30.0) == []


async def _cycle(broker: RedisBroker) -> None:
    """Every kind of write the bus makes: join, publish, claim, ack, retry, dead, replay."""
    await broker.join_group("g:1", ["#"], "latest")
    await broker.join_group("other", ["orders.*"], "earliest")
    await broker.publish([record(data=i) for i in range(4)])
    a, b, c, d = await broker.claim_events("g:1", 10, 30.0)
    failed = JobError(type="RuntimeError", message="boom", attempt=1)
    await broker.settle_events("g:1", [
        EventOutcome(a.key, 1), EventOutcome(b.key, 1, failed, time.time() + 60),
        EventOutcome(c.key, 1, failed), EventOutcome(d.key, 1, failed),
    ])  # fmt: skip
    assert await broker.replay_events("g:1", [c.key]) == 1
    assert [x.key for x in await broker.claim_events("g:1", 10, 30.0)] == [c.key]
    await broker.claim_events("other", 1, 30.0)
    assert len(await broker.event_groups()) == 2


async def test_every_key_of_the_bus_is_under_its_hash_tag(
    make_broker: MakeRedisBroker, raw: redis.asyncio.Redis, prefix: str
) -> None:
    await _cycle(await make_broker())
    keys = sorted([k.decode() async for k in raw.scan_iter(match=f"*{prefix}*", count=1000)])
    tag = f"{{{prefix}:events}}:"
    assert keys, "the cycle wrote nothing?"
    assert [k for k in keys if not k.startswith(tag)] == []
    suffixes = {k[len(tag) :] for k in keys}
    assert {"log", "groups", "g:g:1:running", "g:g:1:retrying", "g:g:1:dead"} <= suffixes
    # A group that leaves takes every key of its own along.
    await (await make_broker()).leave_group("g:1")
    left = [k.decode() async for k in raw.scan_iter(match=f"*{prefix}*", count=1000)]
    assert [k for k in left if k.startswith(f"{tag}g:g:1:")] == []
    assert await raw.hkeys(f"{tag}groups") == [b"other"]
    assert [g["name"] for g in await raw.xinfo_groups(f"{tag}log")] == [b"other"]


async def test_on_a_cluster_the_bus_lives_in_one_slot(redis_cluster: RedisCluster) -> None:
    prefix = new_prefix()
    broker = RedisBroker(redis_cluster.url(prefix))
    try:
        await broker.open()
        await _cycle(broker)
        slots = set()
        for port in redis_cluster.ports:
            async with redis.asyncio.Redis(host="127.0.0.1", port=port) as node:
                async for key in node.scan_iter(match=f"*{prefix}*", count=1000):
                    assert key.decode().startswith(f"{{{prefix}:events}}:")
                    slots.add((port, await node.cluster("KEYSLOT", key)))
        assert len(slots) == 1
    finally:
        await broker.close()
        redis_cluster.delete_prefix(prefix)


async def test_the_log_is_trimmed_by_retention(
    make_broker: MakeRedisBroker, raw: redis.asyncio.Redis, prefix: str
) -> None:
    broker = await make_broker(event_retention=0.3)
    await broker.join_group("late", ["#"], "latest")
    await broker.publish([record(data=i) for i in range(3)])
    assert await raw.xlen(log_key(prefix)) == 3
    await asyncio.sleep(0.4)
    new = record(data="new")
    await broker.publish([new])
    entries = await raw.xrange(log_key(prefix))
    assert [fields[b"p"] for _, fields in entries] == [new.payload]  # the old ones are gone
    # A group that starts from the beginning sees only what is left ...
    await broker.join_group("replayer", ["#"], "earliest")
    assert [d.payload for d in await broker.claim_events("replayer", 10, 30.0)] == [new.payload]
    # ... and one whose position the trimming passed counts only what is left as its lag.
    stats = {s.group: s for s in await broker.event_groups()}
    assert (stats["late"].lag, stats["replayer"].lag) == (1, 0)
    assert [d.payload for d in await broker.claim_events("late", 10, 30.0)] == [new.payload]


async def test_a_retry_of_an_event_trimmed_meanwhile_is_dropped(
    make_broker: MakeRedisBroker,
) -> None:
    broker = await make_broker(event_retention=0.3)
    await broker.join_group("g", ["#"], "latest")
    await broker.publish([record()])
    [d] = await broker.claim_events("g", 10, 30.0)
    failed = JobError(type="RuntimeError", message="boom", attempt=1)
    await broker.settle_events("g", [EventOutcome(d.key, 1, failed, time.time() + 0.4)])
    await asyncio.sleep(0.5)
    await broker.publish([record(data="new")])  # trims the first
    [again] = await broker.claim_events("g", 10, 30.0)
    assert again.key != d.key
    [stats] = await broker.event_groups()
    assert (stats.running, stats.retrying, stats.dead) == (1, 0, 0)


async def test_a_group_survives_its_log_being_deleted(
    make_broker: MakeRedisBroker, raw: redis.asyncio.Redis, prefix: str
) -> None:
    broker = await make_broker()
    await broker.join_group("g", ["#"], "latest")
    await broker.publish([record(data="before")])
    await raw.delete(log_key(prefix))
    after = record(data="after")
    await broker.publish([after])
    assert [d.payload for d in await broker.claim_events("g", 10, 30.0)] == [after.payload]


async def test_a_claim_scans_a_bounded_stretch_of_entries_not_its_own(
    make_broker: MakeRedisBroker,
) -> None:
    broker = await make_broker()
    await broker.join_group("rare", ["payments.*"], "latest")
    await broker.publish([record("orders.created") for _ in range(600)])
    wanted = record("payments.created")
    await broker.publish([wanted])
    claims = 0
    got: list[bytes] = []
    while not got:
        got = [d.payload for d in await broker.claim_events("rare", 1, 30.0)]
        claims += 1
        if not got:  # the rest is still unseen: a waiting consumer comes back at once
            t0 = time.monotonic()
            await broker.wait_for_events(["rare"], 5.0)
            assert time.monotonic() - t0 < 1.0
    assert got == [wanted.payload]
    assert claims == 3  # 256 entries looked at per claim (limit 1), not all 601 at once
    [stats] = await broker.event_groups()
    assert stats.lag == 0


@pytest.mark.parametrize("seed", [1, 2])
async def test_the_bus_behaves_as_the_memory_reference(
    make_broker: MakeRedisBroker, seed: int
) -> None:
    """Random publishes, joins, claims, settles (stale ones too) and replays, on this broker
    and on ``memory://`` side by side: every answer the same (keys differ: mapped by payload)."""
    rnd = random.Random(seed)
    topics = ["a", "a.b", "a.b.c", "x.b", "x.y.z", "a.x.c"]
    patterns = ["#", "a.*", "a.#", "*.b", "#.c", "x.#.z", "a.b.c", "*"]
    redis_bus, memory = await make_broker(), create_broker("memory://")
    held: dict[str, list[tuple[int, str, str]]] = {}  # group -> attempt, redis key, memory key
    groups: list[str] = []
    published = 0

    def seen(got: Sequence[EventDelivery]) -> list[tuple[str, bytes, int]]:
        return [(d.topic, d.payload, d.attempt) for d in got]

    def dead_view(dead: Sequence[EventDeadLetter]) -> list[tuple[Any, ...]]:
        return [(d.topic, d.payload, d.attempts, [(e.type, e.message) for e in d.errors])
                for d in dead]  # fmt: skip

    for _ in range(250):
        op = rnd.random()
        if op < 0.25:
            events = []
            for _ in range(rnd.randint(1, 6)):
                published += 1
                events.append(EventRecord(rnd.choice(topics), "x", str(published).encode()))
            for bus in (redis_bus, memory):
                await bus.publish(events)
        elif op < 0.27 and groups:
            group = rnd.choice(groups)
            for bus in (redis_bus, memory):
                await bus.leave_group(group)
            groups.remove(group)
            held.pop(group, None)
        elif op < 0.35 or not groups:
            group, chosen = rnd.choice(["g1", "g2", "g3"]), rnd.sample(patterns, 2)
            start = rnd.choice(["latest", "earliest"])
            for bus in (redis_bus, memory):
                await bus.join_group(group, chosen, start)
            groups += [] if group in groups else [group]
        elif op < 0.6:
            group, limit = rnd.choice(groups), rnd.randint(0, 5)
            got = await redis_bus.claim_events(group, limit, 30.0)
            reference = await memory.claim_events(group, limit, 30.0)
            assert seen(got) == seen(reference)
            held.setdefault(group, []).extend(
                (d.attempt, d.key, m.key) for d, m in zip(got, reference, strict=True)
            )
        elif op < 0.85:
            group = rnd.choice(groups)
            picked = rnd.sample(held.get(group, []), min(len(held.get(group, [])), 3))
            ours, theirs = [], []
            for attempt, key, memory_key in picked:
                kind = rnd.choice(["ack", "retry", "dead", "stale"])
                error = JobError(type="E", message=kind, attempt=attempt)
                args: tuple[Any, ...] = {
                    "ack": (attempt,), "stale": (attempt - 1,),
                    "retry": (attempt, error, time.time() - 1), "dead": (attempt, error),
                }[kind]  # fmt: skip
                ours.append(EventOutcome(key, *args))
                theirs.append(EventOutcome(memory_key, *args))
                if kind != "stale":
                    held[group].remove((attempt, key, memory_key))
            applied = await redis_bus.settle_events(group, ours)
            assert applied == await memory.settle_events(group, theirs)
        else:
            group = rnd.choice(groups)
            dead = await redis_bus.event_dead_letters(group)
            reference_dead = await memory.event_dead_letters(group)
            assert dead_view(dead) == dead_view(reference_dead)
            chosen_dead = rnd.sample(range(len(dead)), len(dead) // 2)
            replayed = await redis_bus.replay_events(group, [dead[i].key for i in chosen_dead])
            assert replayed == await memory.replay_events(
                group, [reference_dead[i].key for i in chosen_dead]
            )
        assert await redis_bus.event_groups() == await memory.event_groups()
