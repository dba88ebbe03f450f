"""The event bus contract, called directly: publish, groups, claims, settles, dead letters."""

from __future__ import annotations

import asyncio
import time

from dromos import Broker
from dromos.brokers.base import EventOutcome, EventRecord
from dromos.events import encode_event
from dromos.job import JobError
from dromos.message import new_job_ids, utcnow
from tests.backends.conftest import MakeBroker, Target


def record(topic: str = "orders.created", data: object = None) -> EventRecord:
    event_id = new_job_ids(1)[0]
    body = encode_event(topic, data, event_id=event_id, source="/test", time=utcnow())
    return EventRecord(topic, event_id, body)


def failure(attempt: int) -> JobError:
    return JobError(type="RuntimeError", message="boom", attempt=attempt)


async def test_every_group_gets_every_event_and_each_once(broker: Broker) -> None:
    await broker.join_group("billing", ["orders.*"], "latest")
    await broker.join_group("analytics", ["#"], "latest")
    events = [record(data=i) for i in range(5)]
    await broker.publish(events)
    for group in ("billing", "analytics"):
        got = await broker.claim_events(group, 10, 30.0)
        assert [d.payload for d in got] == [e.payload for e in events]  # in publishing order
        assert {d.attempt for d in got} == {1}
        assert {d.topic for d in got} == {"orders.created"}
        assert await broker.claim_events(group, 10, 30.0) == []  # leased: nobody else gets them


async def test_consumers_of_one_group_share_its_events(make_broker: MakeBroker) -> None:
    one = await make_broker()
    await one.join_group("billing", ["orders.created"], "latest")
    await one.publish([record(data=i) for i in range(6)])
    first = await one.claim_events("billing", 4, 30.0)
    second = await one.claim_events("billing", 4, 30.0)
    assert (len(first), len(second)) == (4, 2)
    assert not {d.key for d in first} & {d.key for d in second}


async def test_patterns_choose_the_topics_a_group_gets(broker: Broker) -> None:
    await broker.join_group("star", ["orders.*"], "latest")
    await broker.join_group("hash", ["orders.#"], "latest")
    topics = ["orders", "orders.created", "orders.eu.created", "payments.created"]
    await broker.publish([record(t) for t in topics])
    star = [d.topic for d in await broker.claim_events("star", 10, 30.0)]
    hashed = [d.topic for d in await broker.claim_events("hash", 10, 30.0)]
    assert star == ["orders.created"]
    assert hashed == ["orders", "orders.created", "orders.eu.created"]


async def test_a_new_group_starts_at_the_latest_or_the_earliest_event(broker: Broker) -> None:
    old = record(data="old")
    await broker.publish([old])
    await broker.join_group("late", ["#"], "latest")
    await broker.join_group("replayer", ["#"], "earliest")
    new = record(data="new")
    await broker.publish([new])
    assert [d.payload for d in await broker.claim_events("late", 10, 30.0)] == [new.payload]
    got = await broker.claim_events("replayer", 10, 30.0)
    assert [d.payload for d in got] == [old.payload, new.payload]


async def test_a_group_can_start_at_a_time(broker: Broker) -> None:
    await broker.publish([record(data="before")])
    await asyncio.sleep(0.05)
    since = time.time()
    await asyncio.sleep(0.05)
    after = record(data="after")
    await broker.publish([after])
    await broker.join_group("since", ["#"], since)
    assert [d.payload for d in await broker.claim_events("since", 10, 30.0)] == [after.payload]


async def test_joining_again_keeps_the_position(broker: Broker) -> None:
    await broker.join_group("billing", ["orders.*"], "latest")
    await broker.publish([record(data=1)])
    await broker.join_group("billing", ["orders.*"], "earliest")  # a second instance starts
    assert len(await broker.claim_events("billing", 10, 30.0)) == 1
    assert await broker.claim_events("billing", 10, 30.0) == []


async def test_an_acknowledged_event_is_not_delivered_again(broker: Broker) -> None:
    await broker.join_group("g", ["#"], "latest")
    await broker.publish([record()])
    [d] = await broker.claim_events("g", 10, 0.2)
    assert await broker.settle_events("g", [EventOutcome(d.key, d.attempt)]) == 1
    await asyncio.sleep(0.3)  # past the lease: an acknowledged event stays gone
    assert await broker.claim_events("g", 10, 30.0) == []
    [stats] = await broker.event_groups()
    assert (stats.group, stats.lag, stats.running, stats.retrying, stats.dead) == ("g", 0, 0, 0, 0)


async def test_a_retry_comes_back_when_due_with_the_next_attempt(broker: Broker) -> None:
    await broker.join_group("g", ["#"], "latest")
    event = record()
    await broker.publish([event])
    [d] = await broker.claim_events("g", 10, 30.0)
    retry = EventOutcome(d.key, 1, failure(1), time.time() + 0.3)
    assert await broker.settle_events("g", [retry]) == 1
    assert await broker.claim_events("g", 10, 30.0) == []
    [stats] = await broker.event_groups()
    assert (stats.running, stats.retrying) == (0, 1)
    await asyncio.sleep(0.4)
    [again] = await broker.claim_events("g", 10, 30.0)
    assert (again.key, again.attempt, again.payload) == (d.key, 2, event.payload)


async def test_settling_and_claiming_at_once_does_both_in_that_order(broker: Broker) -> None:
    await broker.join_group("g", ["#"], "latest")
    await broker.publish([record(data=i) for i in range(3)])
    done, failed, dead = await broker.claim_events("g", 3, 30.0)
    later = [record(data=i) for i in range(3, 6)]
    await broker.publish(later)
    outcomes = [
        EventOutcome(done.key, done.attempt),
        EventOutcome(failed.key, 1, failure(1), time.time() + 0.3),
        EventOutcome(dead.key, 1, failure(1), None),
    ]
    got = await broker.settle_and_claim_events("g", outcomes, 2, 30.0)
    assert [d.payload for d in got] == [e.payload for e in later[:2]]  # not the retry: not due
    [stats] = await broker.event_groups()
    assert (stats.running, stats.retrying, stats.dead) == (2, 1, 1)
    [letter] = await broker.event_dead_letters("g")
    assert letter.key == dead.key
    await asyncio.sleep(0.4)
    settled = [EventOutcome(d.key, d.attempt) for d in got]
    again = await broker.settle_and_claim_events("g", settled, 10, 30.0)
    # The retry, now due, and the last new one (in this order, but on RabbitMQ, whose relay
    # puts the retry back on the queue behind it):
    assert {(d.payload, d.attempt) for d in again} == {(failed.payload, 2), (later[2].payload, 1)}
    assert await broker.settle_and_claim_events("g", [], 10, 30.0) == []
    [stats] = await broker.event_groups()
    assert (stats.running, stats.retrying, stats.dead) == (2, 0, 1)


async def test_a_stale_attempt_cannot_settle(broker: Broker) -> None:
    await broker.join_group("g", ["#"], "latest")
    await broker.publish([record()])
    [d] = await broker.claim_events("g", 10, 0.2)
    await asyncio.sleep(0.3)
    [again] = await broker.claim_events("g", 10, 30.0)  # the lease ran out: handed on
    assert again.attempt == 2
    assert await broker.settle_events("g", [EventOutcome(d.key, 1)]) == 0
    assert await broker.settle_events("g", [EventOutcome(d.key, 2)]) == 1


async def test_a_holder_from_before_a_replay_cannot_settle_the_replayed_delivery(
    broker: Broker,
) -> None:
    await broker.join_group("g", ["#"], "latest")
    await broker.publish([record()])
    [first] = await broker.claim_events("g", 10, 0.2)  # a holder that stalls
    await asyncio.sleep(0.3)
    [second] = await broker.claim_events("g", 10, 30.0)  # handed on: attempt 2, and it fails
    assert (second.attempt, second.tries) == (2, 2)
    assert await broker.settle_events("g", [EventOutcome(second.key, 2, failure(2), None)]) == 1
    assert await broker.replay_events("g") == 1
    [third] = await broker.claim_events("g", 10, 30.0)
    assert (third.attempt, third.tries) == (3, 1)
    # the stalled holder wakes: its attempt 1 does not name the replayed delivery
    assert await broker.settle_events("g", [EventOutcome(first.key, 1)]) == 0
    [stats] = await broker.event_groups()
    assert stats.running == 1
    assert await broker.settle_events("g", [EventOutcome(third.key, 3)]) == 1


async def test_an_event_whose_consumers_keep_dying_is_dead_lettered(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker(max_recoveries=1)
    await broker.join_group("g", ["#"], "latest")
    await broker.publish([record()])
    assert len(await broker.claim_events("g", 10, 0.1)) == 1
    await asyncio.sleep(0.2)
    assert len(await broker.claim_events("g", 10, 0.1)) == 1  # recovered once
    await asyncio.sleep(0.2)
    assert await broker.claim_events("g", 10, 0.1) == []  # twice: poison
    [dead] = await broker.event_dead_letters("g")
    assert dead.errors[-1].type == "Poison"


async def test_dead_letters_keep_the_event_and_its_errors_and_replay(broker: Broker) -> None:
    await broker.join_group("g", ["#"], "latest")
    await broker.join_group("other", ["#"], "latest")
    event = record(data={"order": 7})
    await broker.publish([event])
    [d] = await broker.claim_events("g", 10, 30.0)
    await broker.settle_events("g", [EventOutcome(d.key, 1, failure(1), None)])
    assert await broker.claim_events("g", 10, 30.0) == []
    [dead] = await broker.event_dead_letters("g")
    assert (dead.group, dead.key, dead.topic, dead.payload) == (
        "g",
        d.key,
        event.topic,
        event.payload,
    )
    assert (dead.attempts, [e.message for e in dead.errors]) == (1, ["boom"])
    assert dead.failed_at is not None
    assert await broker.event_dead_letters("other") == []
    stats = {s.group: s for s in await broker.event_groups()}
    assert stats["g"].dead == 1
    assert await broker.replay_events("g") == 1
    [again] = await broker.claim_events("g", 10, 30.0)
    # a fresh retry budget (tries) under a fencing token that goes on (attempt)
    assert (again.key, again.attempt, again.tries, again.payload) == (d.key, 2, 1, event.payload)
    assert await broker.event_dead_letters("g") == []


async def test_replay_takes_the_named_keys_only(broker: Broker) -> None:
    await broker.join_group("g", ["#"], "latest")
    await broker.publish([record(data=1), record(data=2)])
    a, b = await broker.claim_events("g", 10, 30.0)
    await broker.settle_events(
        "g", [EventOutcome(a.key, 1, failure(1)), EventOutcome(b.key, 1, failure(1))]
    )
    assert await broker.replay_events("g", [b.key]) == 1
    assert [d.key for d in await broker.claim_events("g", 10, 30.0)] == [b.key]
    assert [x.key for x in await broker.event_dead_letters("g")] == [a.key]


async def test_lag_counts_what_a_group_has_not_looked_at(broker: Broker) -> None:
    await broker.join_group("g", ["orders.*"], "latest")
    await broker.publish([record(data=i) for i in range(3)])
    [stats] = await broker.event_groups()
    assert (stats.group, stats.patterns, stats.lag) == ("g", ("orders.*",), 3)
    await broker.claim_events("g", 2, 30.0)
    [stats] = await broker.event_groups()
    assert (stats.lag, stats.running) == (1, 2)


async def test_a_waiting_consumer_wakes_when_an_event_is_published(
    make_broker: MakeBroker, backend: Target
) -> None:
    consumer = await make_broker()
    # Another client of the same store (the memory broker's store is its instance).
    producer = consumer if backend.broker.startswith("memory") else await make_broker()
    await consumer.join_group("g", ["#"], "latest")
    waiting = asyncio.create_task(consumer.wait_for_events(["g"], 5.0))
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    await producer.publish([record()])
    await asyncio.wait_for(waiting, 4.0)
    assert time.monotonic() - t0 < 4.0


async def test_instances_joining_a_new_group_at_once_get_each_event_once(
    make_broker: MakeBroker, backend: Target
) -> None:
    # Two replicas of one service deployed together: both join "earliest" at the same time.
    one = await make_broker()
    other = one if backend.broker.startswith("memory") else await make_broker()
    events = [record(data=i) for i in range(20)]
    await one.publish(events)
    await asyncio.gather(
        one.join_group("g", ["#"], "earliest"), other.join_group("g", ["#"], "earliest")
    )
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(got) < len(events) and time.monotonic() < deadline:
        for broker in (one, other):
            got.extend(d.payload for d in await broker.claim_events("g", 50, 30.0))
    await asyncio.sleep(0.3)  # a second copy, if any, has had time to arrive
    for broker in (one, other):
        got.extend(d.payload for d in await broker.claim_events("g", 50, 30.0))
    assert sorted(got) == sorted(e.payload for e in events)  # each once


async def test_an_unknown_group_claims_nothing(broker: Broker) -> None:
    await broker.publish([record()])
    assert await broker.claim_events("nobody", 10, 30.0) == []
    assert await broker.settle_events("nobody", [EventOutcome("1", 1)]) == 0


async def test_a_group_that_leaves_is_gone_with_its_events_in_flight(broker: Broker) -> None:
    await broker.join_group("tail", ["#"], "latest")
    await broker.join_group("stays", ["#"], "latest")
    await broker.publish([record(), record()])
    [a, _] = await broker.claim_events("tail", 10, 30.0)
    await broker.settle_events("tail", [EventOutcome(a.key, 1, failure(1), None)])
    await broker.leave_group("tail")
    assert [s.group for s in await broker.event_groups()] == ["stays"]
    assert await broker.claim_events("tail", 10, 30.0) == []
    assert await broker.event_dead_letters("tail") == []
    assert len(await broker.claim_events("stays", 10, 30.0)) == 2  # the others keep theirs
    await broker.join_group("tail", ["#"], "latest")  # joining again starts afresh
    assert await broker.claim_events("tail", 10, 30.0) == []
    await broker.leave_group("never-was")  # nothing to do


async def test_a_waiter_wakes_for_its_own_groups_only(broker: Broker) -> None:
    await broker.join_group("unserved", ["#"], "latest")  # nobody claims for it: a backlog
    await broker.join_group("idle", ["payments.*"], "latest")
    await broker.publish([record(data=i) for i in range(5)])
    assert await broker.claim_events("idle", 2, 30.0) == []  # looked past them all
    t0 = time.monotonic()
    await broker.wait_for_events(["idle"], 0.5)
    assert time.monotonic() - t0 >= 0.4  # the other group's backlog did not wake it
    t0 = time.monotonic()
    await broker.wait_for_events(["unserved"], 5.0)  # its own backlog: at once
    assert time.monotonic() - t0 < 1.0


async def test_publish_blocking_stores_the_events_or_nothing(broker: Broker) -> None:
    await broker.join_group("g", ["#"], "latest")
    events = [record(data=1), record(data=2)]
    waiting = asyncio.create_task(broker.wait_for_events(["g"], 30.0))
    await asyncio.sleep(0.05)
    served = await asyncio.to_thread(broker.publish_blocking, events)
    got = await broker.claim_events("g", 10, 30.0)
    if served:
        assert [d.payload for d in got] == [e.payload for e in events]
        await asyncio.wait_for(waiting, 5.0)  # and a waiting consumer woke
    else:
        assert got == []
        waiting.cancel()


async def test_keys_that_name_no_event_change_nothing(broker: Broker) -> None:
    await broker.join_group("g", ["#"], "latest")
    await broker.publish([record()])
    [d] = await broker.claim_events("g", 10, 30.0)
    await broker.settle_events("g", [EventOutcome(d.key, 1, failure(1), None)])
    for key in ("nope", "999999999", "1-0x"):
        assert await broker.settle_events("g", [EventOutcome(key, 1)]) == 0
        assert await broker.replay_events("g", [key]) == 0
    assert [x.key for x in await broker.event_dead_letters("g")] == [d.key]


async def test_dead_letters_are_listed_oldest_first_up_to_the_limit(broker: Broker) -> None:
    await broker.join_group("g", ["#"], "latest")
    await broker.publish([record(data=i) for i in range(3)])
    got = await broker.claim_events("g", 10, 30.0)
    await broker.settle_events("g", [EventOutcome(d.key, 1, failure(1), None) for d in got])
    assert [x.key for x in await broker.event_dead_letters("g", limit=2)] == [
        d.key for d in got[:2]
    ]
    assert await broker.event_dead_letters("g", limit=0) == []
