"""A Redis store's parked events: an entry parked before the replay base was kept (four
values) still reads, as never replayed."""

from __future__ import annotations

import msgspec

from dromos.brokers.base import Parked
from dromos.brokers.redis_parking import _entry, _parked
from dromos.job import JobError


def test_an_entry_round_trips_with_its_base() -> None:
    error = JobError(type="RuntimeError", message="boom", attempt=4)
    parked = Parked("k", "orders.created", b"{}", 4, [error], 12.0, base=2)
    assert _parked("k", _entry(parked), 12.0) == parked


def test_an_entry_of_four_values_reads_with_base_zero() -> None:
    old = msgspec.msgpack.encode(["orders.created", b"{}", 3, "[]"])
    assert _parked("k", old, None) == Parked("k", "orders.created", b"{}", 3, [], None, base=0)
