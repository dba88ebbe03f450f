"""FastStream's side of the event benchmark (run by ``bench/.venvs/faststream``).

The worker is this module run as a script: ``python faststream_events.py`` (cwd
``bench/peers``), which runs the app with FastStream's programmatic runner, ``await
app.run()``: the ``faststream run`` CLI needs the extra ``faststream[cli]`` (typer), which the
benchmark's virtualenv does not install. ``bench/events_bench.py`` imports the publishing side
below into its child process. The handler is the same as dromos's in ``bench/events_app.py``:
the data as ``dict[str, int]`` (pydantic, through FastStream's typed parameter), then one
``INCR bench:count`` on the private Redis (``_counter.py``); in the latency phase
(``BENCH_EVENTS_LATENCY=1``) first an ``RPUSH`` of the receive time.

Settings, from FastStream's documentation (0.7):

- One stream (``bench-events``) and a consumer group: ``StreamSub(stream, group="bench",
  consumer="bench-1")``, the "Redis Stream Consumer Groups" page. ``last_id="0"`` creates the
  group at the start of the stream (the consume phase publishes before the worker starts; the
  server is flushed before each phase, so there is nothing older); dromos's group starts at
  the ``earliest`` event alike. Acknowledgement: the default policy, one ``XACK`` per message
  after its handler returned (at least once, as dromos).
- ``faststream``: ``max_workers=32``, the "Concurrency" page: "the number of concurrent handler
  invocations a single subscriber may run", the same as dromos's ``-c 32``. That page says that
  for Redis "only max_workers applies; there is no broker-side prefetch equivalent";
  ``max_records`` stays at its default (``XREADGROUP`` without ``COUNT``: all that is there).
- ``faststream-batch``: ``StreamSub(..., batch=True, max_records=32)``, the batch subscriber
  (the docs present batches as the way to "optimize the processing of high volumes of data"):
  the handler gets a list of up to 32 messages and counts each (32 ``INCR`` at once, as 32
  concurrent handlers would), and the batch is acknowledged with one ``XACK``.
  ``max_workers`` does not apply to a batch subscriber.
- ``RedisBroker(..., log_level=logging.DEBUG)``: at the default (INFO) the broker logs two
  lines per message; the "Logging" page gives this setting to keep them out ("lower the level
  of logs that the broker publishes itself"), while warnings and errors are still logged, as
  dromos's worker does at ``--log-level warning``.
- The event loop: asyncio's. ``faststream run`` would take uvloop if it were installed, but
  the benchmark's virtualenv has ``faststream[redis]`` and ``hiredis`` only (dromos runs on
  uvloop, its extra ``fast``; the ``dromos-redis-asyncio`` variant takes it away, for a
  like-for-like consume figure).

Publishing: ``await broker.publish(data, stream=...)`` one at a time (its documented producer;
one ``XADD`` each). Bulk: ``broker.publish_batch`` is for lists only ("Redis List is the only
data structure supporting publishing in batches"), so the bulk figure is its Redis pipeline
("Redis Pipeline" page: ``publish(..., pipeline=pipe)`` then ``pipe.execute()``), 1,000 per
pipeline, made as its ``Pipeline`` dependency makes it (``redis.pipeline()``: ``MULTI`` /
``EXEC``, all or none, as dromos's ``publish_many``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from _counter import aincr_counter, private_port
from faststream import FastStream
from faststream.redis import RedisBroker, StreamSub

STREAM = "bench-events"
GROUP = "bench"
CONSUMER = "bench-1"
CONCURRENCY = 32  # max_workers, as dromos's -c 32
BATCH = 32  # max_records of the batch variant
RECEIVED = "bench:events:received"
LATENCY = os.environ.get("BENCH_EVENTS_LATENCY") == "1"
VARIANT = os.environ.get("BENCH_FASTSTREAM_VARIANT", "faststream")
VARIANTS = ("faststream", "faststream-batch")


def _url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


_clients: dict[int, Any] = {}


async def record_receipt(order: int) -> None:
    """Push this event's receive time (the latency phase only); as in events_app.py."""
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


# -- the worker's app (``python faststream_events.py``) ----------------------------------------
broker = RedisBroker(_url(private_port()), log_level=logging.DEBUG)
app = FastStream(broker)

if VARIANT == "faststream-batch":

    @broker.subscriber(
        stream=StreamSub(STREAM, group=GROUP, consumer=CONSUMER, last_id="0", batch=True,
                         max_records=BATCH),
    )  # fmt: skip
    async def on_orders(data: list[dict[str, int]]) -> None:
        await asyncio.gather(*(handle(d) for d in data))

else:

    @broker.subscriber(
        stream=StreamSub(STREAM, group=GROUP, consumer=CONSUMER, last_id="0"),
        max_workers=CONCURRENCY,
    )
    async def on_order(data: dict[str, int]) -> None:
        await handle(data)


# -- the publishing side (run in the benchmark's child process) -------------------------------
class Publisher:
    """FastStream's producer on its own broker object (connected only: it subscribes nothing)."""

    def __init__(self, port: int) -> None:
        self.broker = RedisBroker(_url(port))

    async def __aenter__(self) -> Publisher:
        await self.broker.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.broker.stop()

    async def publish(self, data: dict[str, int]) -> None:
        await self.broker.publish(data, stream=STREAM)

    async def publish_pipelined(self, batch: list[dict[str, int]]) -> None:
        client = await self.broker.connect()
        async with client.pipeline() as pipe:
            for data in batch:
                await self.broker.publish(data, stream=STREAM, pipeline=pipe)
            await pipe.execute()


if __name__ == "__main__":
    asyncio.run(app.run())  # until SIGTERM or SIGINT, which it handles (a graceful stop)
