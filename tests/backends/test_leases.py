"""Named leases (the scheduler's): one holder at a time, renewable, dropped, expiring."""

from __future__ import annotations

import asyncio
import time

from dromos import Broker
from tests.backends.conftest import MakeBroker, Target


async def test_one_holder_at_a_time_and_renewals(broker: Broker) -> None:
    assert await broker.hold_lease("scheduler", "a", 30.0) == 0.0  # never held before
    assert await broker.hold_lease("scheduler", "b", 30.0) is None
    t0 = time.time()
    renewed = await broker.hold_lease("scheduler", "a", 30.0)
    assert renewed is not None
    assert t0 - 2 < renewed <= t0 + 0.1  # when "a" took it
    assert await broker.hold_lease("other", "b", 30.0) == 0.0  # names are independent


async def test_a_new_holder_learns_when_the_lease_was_last_held(broker: Broker) -> None:
    assert await broker.hold_lease("scheduler", "a", 0.2) == 0.0
    t0 = time.time()
    await asyncio.sleep(0.3)  # "a" stops renewing: its lease runs out
    last = await broker.hold_lease("scheduler", "b", 30.0)
    assert last is not None
    assert t0 - 1 < last <= t0 + 0.1
    await broker.drop_lease("scheduler", "b")
    again = await broker.hold_lease("scheduler", "c", 30.0)
    assert again is not None
    assert again >= last  # dropped: free at once, and when it was held is kept


async def test_a_lease_that_runs_out_goes_to_the_next(broker: Broker) -> None:
    assert await broker.hold_lease("scheduler", "a", 0.2) is not None
    assert await broker.hold_lease("scheduler", "b", 0.2) is None
    await asyncio.sleep(0.3)
    assert await broker.hold_lease("scheduler", "b", 30.0) is not None
    assert await broker.hold_lease("scheduler", "a", 30.0) is None


async def test_dropped_by_its_holder_only(broker: Broker) -> None:
    assert await broker.hold_lease("scheduler", "a", 30.0) is not None
    await broker.drop_lease("scheduler", "b")  # not b's: nothing happens
    assert await broker.hold_lease("scheduler", "b", 30.0) is None
    await broker.drop_lease("scheduler", "a")
    assert await broker.hold_lease("scheduler", "b", 30.0) is not None


async def test_two_clients_see_one_holder(make_broker: MakeBroker, backend: Target) -> None:
    one = await make_broker()
    two = one if backend.broker.startswith("memory") else await make_broker()
    results = await asyncio.gather(
        *(b.hold_lease("race", name, 30.0) for b, name in [(one, "a"), (two, "b")] * 5)
    )
    winners = {name for got, name in zip(results, ["a", "b"] * 5, strict=True) if got is not None}
    assert len(winners) == 1
