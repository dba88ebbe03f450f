"""taskiq's side of the shared benchmark task: INCR the counter, return the int.

The broker is read from the environment when the module is imported, so the worker process
(``taskiq worker taskiq_tasks:broker``) and the peer's client build the same one:

- ``BENCH_REDIS_PORT``: the private Redis (never the shared 6379);
- ``BENCH_TASKIQ_BROKER``: ``stream`` (``RedisStreamBroker``, the default) or ``list``
  (``ListQueueBroker``);
- ``BENCH_TASKIQ_RESULTS``: ``1`` (the default) attaches ``RedisAsyncResultBackend``; ``0``
  leaves taskiq's ``DummyResultBackend``, which stores nothing (results off, for the drain).
"""

from __future__ import annotations

import os

from _counter import aincr_counter, private_port
from taskiq import AsyncBroker
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

PORT = private_port()  # read when the module is imported, in the process that runs it

URL = f"redis://127.0.0.1:{PORT}/0"
QUEUE = "bench:taskiq"
# taskiq-redis's README: "It is highly recommended to use expire time in
# RedisAsyncResultBackend"; an hour outlives every run.
RESULT_EX_TIME = 3600


def _broker() -> AsyncBroker:
    kind = os.environ.get("BENCH_TASKIQ_BROKER", "stream")
    new: AsyncBroker
    if kind == "stream":
        new = RedisStreamBroker(url=URL, queue_name=QUEUE)
    elif kind == "list":
        new = ListQueueBroker(url=URL, queue_name=QUEUE)
    else:
        raise ValueError(f"BENCH_TASKIQ_BROKER: {kind!r}")
    if os.environ.get("BENCH_TASKIQ_RESULTS", "1") == "1":
        new = new.with_result_backend(
            RedisAsyncResultBackend(redis_url=URL, result_ex_time=RESULT_EX_TIME)
        )
    return new


broker = _broker()


@broker.task(task_name="bench.noop")
async def noop(i: int) -> int:
    """The benchmark's task: count the completion on the private Redis."""
    await aincr_counter()
    return i
