"""The dromos app the event benchmark's workers run (``dromos worker events_app:app -c 32``).

One subscriber, consumer group ``bench``, topic ``orders.created``. The handler is the same as
FastStream's in ``peers/faststream_events.py``, line for line: it takes the event's data as
``dict[str, int]`` (converted and checked by pydantic, as FastStream does with its typed
parameter), then reports the event on the private Redis with one ``INCR bench:count``
(``peers/_counter.py``, the counter every benchmark counts completions with). With
``BENCH_EVENTS_LATENCY=1`` (the latency phase) it first pushes ``"<order> <monotonic time>"``
onto ``bench:events:received``: the receive time, on the clock the publisher reads
(``CLOCK_MONOTONIC`` is one clock for the whole machine on Linux).

The broker is ``$DROMOS_BROKER``: a fresh SQLite file, or the private Redis. The group starts
at the ``earliest`` event: the consume phase publishes its events before the worker starts,
on an empty store.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from _counter import aincr_counter, private_port  # bench/peers/_counter.py

import dromos

TOPIC = "orders.created"
GROUP = "bench"
RECEIVED = "bench:events:received"
LATENCY = os.environ.get("BENCH_EVENTS_LATENCY") == "1"

app = dromos.App("bench-events", os.environ.get("DROMOS_BROKER"))

_clients: dict[int, Any] = {}


async def record_receipt(order: int) -> None:
    """Push this event's receive time (the latency phase only)."""
    now = time.monotonic()
    pid = os.getpid()
    if pid not in _clients:
        import redis.asyncio as aioredis

        _clients[pid] = aioredis.Redis(host="127.0.0.1", port=private_port())
    await _clients[pid].rpush(RECEIVED, f"{order} {now!r}")


async def handle(data: dict[str, int]) -> None:
    """The benchmark's handler: count the event on the private Redis."""
    if LATENCY:
        await record_receipt(data["order"])
    await aincr_counter()


BATCH = int(os.environ.get("BENCH_EVENTS_BATCH", "0"))  # dromos-redis-batch: 32

if BATCH:

    @app.subscriber(TOPIC, group=GROUP, start="earliest", batch=BATCH)
    async def on_orders(data: list[dict[str, int]]) -> None:
        """The batch variant, as FastStream's: each event counted, the batch at once."""
        await asyncio.gather(*(handle(d) for d in data))

else:

    @app.subscriber(TOPIC, group=GROUP, start="earliest")
    async def on_order(data: dict[str, int]) -> None:
        await handle(data)
