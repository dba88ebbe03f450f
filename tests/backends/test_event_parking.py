"""Event parking and the names registry: what a store keeps for the RabbitMQ broker's event
bus (docs/design/rabbitmq.md §3 and §9).

RabbitMQ carries the events; an event to retry later or dead-lettered is parked in the store
once its message is acked, and the relay republishes retries when due. These tests pin the
store's side on every store, the memory store being the reference.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from dromos.brokers.base import Broker, Parked
from dromos.job import JobError
from tests.backends.conftest import BACKENDS, MakeBroker, Target

#: the stores with event parking
STORES = ["memory", "sqlite", "postgres", "redis", "redis-cluster"]


@pytest.fixture(params=STORES)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    with BACKENDS[request.param](tmp_path, "parking") as target:
        yield target


@pytest.fixture
async def store(make_broker: MakeBroker) -> Broker:
    return await make_broker(relay=True)


def _error(attempt: int, message: str = "boom") -> JobError:
    return JobError(type="RuntimeError", message=message, attempt=attempt)


def parked(key: str, due: float | None, attempt: int = 1, payload: bytes = b"{}") -> Parked:
    return Parked(key, "orders.created", payload, attempt, [_error(attempt)], due)


async def _now(store: Broker) -> float:
    return (await store.events_due(0, 30.0)).now


async def test_groups_are_registered_with_their_patterns_and_joining_again_replaces_them(
    store: Broker,
) -> None:
    await store.names_add("group", {"billing": ["orders.*"], "audit": ["#"]})
    await store.names_add("queue", {"ns.g.billing": ()})
    await store.names_add("group", {"billing": ["orders.#", "payments.*"]})
    assert await store.names_list("group") == {
        "billing": ("orders.#", "payments.*"),
        "audit": ("#",),
    }
    assert await store.names_list("queue") == {"ns.g.billing": ()}
    await store.names_drop("group", ["audit", "never-was"])
    assert await store.names_list("group") == {"billing": ("orders.#", "payments.*")}
    assert await store.names_list("exchange") == {}


async def test_a_retry_is_leased_to_the_relay_once_due_and_then_held(store: Broker) -> None:
    now = await _now(store)
    payload = b'{"data": "\\u00e9"}\x00\xff'  # bytes as they came, even not UTF-8
    await store.park_events("g", [parked("a", now + 0.3, attempt=2, payload=payload)])
    early = await store.events_due(10, 30.0)
    assert early.entries == []
    assert early.next_due is not None
    assert 0 < early.next_due - early.now <= 0.31
    await asyncio.sleep(0.35)
    due = await store.events_due(10, 30.0)
    assert [(g, p.key, p.topic, p.payload, p.attempt) for g, p in due.entries] == [
        ("g", "a", "orders.created", payload, 2)
    ]
    assert [e.message for e in due.entries[0][1].errors] == ["boom"]
    assert (due.entries[0][1].due or 0) - due.now > 29  # leased to this relay
    held = await store.events_due(10, 30.0)  # leased to the first relay
    assert held.entries == []
    assert held.next_due is not None
    assert held.next_due - held.now > 29


async def test_a_relay_that_died_leaves_its_retries_to_the_next_after_the_hold(
    store: Broker,
) -> None:
    now = await _now(store)
    await store.park_events("g", [parked("a", now)])
    assert len((await store.events_due(10, 0.2)).entries) == 1
    await asyncio.sleep(0.25)
    assert [p.key for _, p in (await store.events_due(10, 30.0)).entries] == ["a"]


async def test_due_entries_come_oldest_first_across_groups_up_to_the_limit(
    store: Broker,
) -> None:
    now = await _now(store)
    await store.park_events("g1", [parked("late", now - 1), parked("first", now - 3)])
    await store.park_events("g2", [parked("second", now - 2), parked("dead", None)])
    due = await store.events_due(2, 30.0)
    assert [(g, p.key) for g, p in due.entries] == [("g1", "first"), ("g2", "second")]
    assert [(g, p.key) for g, p in (await store.events_due(10, 30.0)).entries] == [("g1", "late")]


async def test_a_retrys_wait_counts_on_the_stores_clock_not_its_due(store: Broker) -> None:
    # A worker whose clock is 30 s off computes a due 30 s off; the wait it also gives
    # (due_in) is what the store goes by.
    now = await _now(store)
    soon = Parked("soon", "orders.created", b"{}", 1, [_error(1)], now - 30, due_in=0.3)
    later = Parked("later", "orders.created", b"{}", 1, [_error(1)], now + 30, due_in=0.0)
    await store.park_events("g", [soon, later])
    assert [p.key for _, p in (await store.events_due(10, 30.0)).entries] == ["later"]
    await asyncio.sleep(0.4)
    assert [p.key for _, p in (await store.events_due(10, 30.0)).entries] == ["soon"]


async def test_unpark_deletes_entries_and_parking_again_replaces_one(store: Broker) -> None:
    now = await _now(store)
    await store.park_events("g", [parked("a", now + 60), parked("b", now + 60)])
    await store.park_events("g", [parked("a", None, attempt=3)])  # failed again: dead now
    assert await store.parked_counts() == {"g": (1, 1)}
    await store.unpark("g", ["b", "nope"])
    assert await store.parked_counts() == {"g": (0, 1)}
    assert [d.attempts for d in await store.parked_dead("g", 10)] == [3]
    await store.unpark("g", ["a"])
    assert await store.parked_counts() in ({}, {"g": (0, 0)})
    assert (await store.events_due(10, 30.0)).next_due is None


async def test_dead_entries_are_listed_oldest_first_and_never_relayed(store: Broker) -> None:
    await store.park_events("g", [parked("one", None)])
    await asyncio.sleep(0.01)
    await store.park_events("g", [parked("two", None, attempt=2), parked("three", None)])
    await store.park_events("other", [parked("x", None)])
    dead = await store.parked_dead("g", 10)
    assert dead[0].key == "one"
    assert sorted(d.key for d in dead) == ["one", "three", "two"]
    assert [(d.group, d.topic, d.payload) for d in dead[:1]] == [("g", "orders.created", b"{}")]
    assert dead[0].failed_at is not None
    assert [e.type for e in dead[0].errors] == ["RuntimeError"]
    assert [d.key for d in await store.parked_dead("g", 1)] == ["one"]
    assert await store.parked_dead("g", 0) == []
    assert await store.parked_dead("nobody", 10) == []
    assert (await store.events_due(10, 30.0)).entries == []
    assert await store.parked_counts() == {"g": (0, 3), "other": (0, 1)}


async def test_dropping_a_group_deletes_its_entries_and_its_registration_only(
    store: Broker,
) -> None:
    now = await _now(store)
    await store.names_add("group", {"g": ["#"], "other": ["#"]})
    await store.park_events("g", [parked("a", now - 1), parked("b", None)])
    await store.park_events("other", [parked("a", now - 1)])
    await store.drop_group("g")
    await store.drop_group("never-was")
    assert await store.names_list("group") == {"other": ("#",)}
    assert await store.parked_dead("g", 10) == []
    assert [(g, p.key) for g, p in (await store.events_due(10, 30.0)).entries] == [("other", "a")]
    assert "g" not in await store.parked_counts()
