"""taskiq (with taskiq-redis) through the shared driver (run by ``bench/.venvs/taskiq``).

Variants:

- ``taskiq``: ``RedisStreamBroker``. taskiq-redis's README uses it in its usage example ("Or
  ListQueueBroker if you don't want acknowledges") and says of the stream brokers that they
  support acknowledgements "and therefore [are] fine to use in cases when data durability is
  required", while the list and pub/sub brokers carry the warning that a message is lost if the
  worker is killed while processing it. Acknowledged delivery is what dromos gives, so this is
  the comparable configuration. Messages are read with ``XREADGROUP`` in batches
  (``xread_count=100``, the default) and acknowledged with one ``XACK`` each.
- ``taskiq-list``: ``ListQueueBroker`` (``LPUSH`` / ``BRPOP``, no acknowledgement), for
  reference only: it is the cheaper, lossy design; not comparable to dromos on reliability.

Worker: ``taskiq worker taskiq_tasks:broker --workers N --max-async-tasks 32 --max-prefetch
32 --log-level WARNING``.

- ``--workers``: taskiq's own option for worker processes. Note that taskiq always runs a
  supervising parent process too (``--workers 1`` is two processes); the RSS figure counts
  both, as the driver sums the process tree.
- ``--max-async-tasks 32``: the same concurrency per process as dromos's ``-c 32`` (taskiq's
  default is 100; its docs give no recommendation beyond describing the option).
- ``--max-prefetch 32``: taskiq's CLI docs describe it as "Useful for systems with high
  message rates, but brokers should support acknowledgements"; the stream broker does. For
  ``taskiq-list`` (no acknowledgements) it stays at the default 0, as the docs imply.
- ``--log-level WARNING``: at the default INFO the worker logs one line per task ("Executing
  task ..."); dromos runs at warning too.
- ``--ack-type`` stays at the default ``when_saved`` (acknowledge once the result is stored).
- Results off for the drain (``results=False``): no result backend, i.e. taskiq's
  ``DummyResultBackend``, which stores nothing. For the round trip the worker has
  ``RedisAsyncResultBackend`` with ``result_ex_time=3600`` (the README "highly recommends" an
  expiry).

Enqueue: ``await noop.kiq(i)``, one at a time. taskiq has no bulk enqueue API (each ``kiq``
is one ``XADD``/``LPUSH``), so ``enqueue_many`` is not reported; ``fill`` runs ``kiq`` from 32
concurrent coroutines, which is the fastest the API allows.

Round trip: ``await (await noop.kiq(i)).wait_result(timeout=...)``. ``wait_result`` polls the
result backend (``EXISTS``, then ``GET``) every ``check_interval`` seconds; the default, 0.2 s,
is used, since neither taskiq's nor taskiq-redis's docs suggest another value (their examples
call ``wait_result()`` or ``wait_result(timeout=2)``). So the latency is mostly that poll
interval: what taskiq's result API gives as documented, not its transport.

Known quirk (taskiq 0.13.0, taskiq-redis 1.2.4, redis-py 8.1): a ``RedisStreamBroker`` worker
does not exit on SIGTERM or SIGINT. The child logs "Stopping prefetching messages..." but its
cancelled ``XREADGROUP`` read keeps looping, so the driver kills it after its 20 s grace.
Nothing measured is affected (the rate and RSS are taken before the stop); each drain and the
latency phase just take 20 s longer. The ``ListQueueBroker`` worker stops in about 2 s.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from _driver import main

CONCURRENCY = 32  # --max-async-tasks: as dromos's -c 32
PREFETCH = 32  # --max-prefetch, for the broker that acknowledges
FILL_CALLERS = 32  # concurrent kiq() coroutines in fill (the pool allows 50 connections)


def _env(port: int, broker: str, results: bool) -> dict[str, str]:
    return {
        "BENCH_REDIS_PORT": str(port),
        "BENCH_TASKIQ_BROKER": broker,
        "BENCH_TASKIQ_RESULTS": "1" if results else "0",
    }


class Taskiq:
    name = "taskiq"
    broker = "stream"
    prefetch = PREFETCH

    def _mod(self, port: int) -> Any:
        # the client always has the result backend (the round trip needs it; kiq ignores it)
        os.environ.update(_env(port, self.broker, results=True))
        import taskiq_tasks

        return taskiq_tasks

    def _run(self, port: int, body: Any) -> Any:
        """Run ``body(module)`` in a fresh event loop between broker startup and shutdown.

        ``startup`` also (re)creates the stream's consumer group (the driver flushes the
        server between phases): the group starts at the stream's end ("$"), so it must exist
        before ``fill`` adds the jobs the worker is to read."""
        mod = self._mod(port)

        async def run() -> Any:
            await mod.broker.startup()
            try:
                return await body(mod)
            finally:
                await mod.broker.shutdown()

        return asyncio.run(run())

    def enqueue_single(self, port: int, n: int) -> float:
        async def body(mod: Any) -> float:
            await mod.noop.kiq(-1)
            t0 = time.perf_counter()
            for i in range(n):
                await mod.noop.kiq(i)
            return time.perf_counter() - t0

        return float(self._run(port, body))

    def enqueue_bulk(self, port: int, n: int, batch: int) -> float | None:
        return None  # taskiq has no bulk enqueue

    def fill(self, port: int, n: int) -> None:
        async def body(mod: Any) -> None:
            async def caller(k: int) -> None:
                for i in range(k, n, FILL_CALLERS):
                    await mod.noop.kiq(i)

            await asyncio.gather(*(caller(k) for k in range(FILL_CALLERS)))

        self._run(port, body)

    def worker(self, port: int, procs: int, results: bool) -> tuple[list[str], dict[str, str]]:
        argv = [str(Path(sys.executable).parent / "taskiq"), "worker", "taskiq_tasks:broker",
                "--workers", str(procs), "--max-async-tasks", str(CONCURRENCY),
                "--max-prefetch", str(self.prefetch), "--log-level", "WARNING"]  # fmt: skip
        return argv, _env(port, self.broker, results)

    def round_trip(self, port: int, samples: int) -> list[float]:
        async def trip(mod: Any, i: int, timeout: float) -> None:
            result = await (await mod.noop.kiq(i)).wait_result(timeout=timeout)
            if result.is_err or result.return_value != i:
                raise RuntimeError(f"taskiq: bad result {result!r}")

        async def body(mod: Any) -> list[float]:
            await trip(mod, -1, 60)  # the worker is up
            await asyncio.sleep(0.5)
            out = []
            for i in range(samples):
                t0 = time.perf_counter()
                await trip(mod, i, 60)
                out.append((time.perf_counter() - t0) * 1000)
            return out

        return list(self._run(port, body))


class TaskiqList(Taskiq):
    """``ListQueueBroker``: no acknowledgements, so no prefetch (see the module docstring)."""

    name = "taskiq-list"
    broker = "list"
    prefetch = 0


if __name__ == "__main__":
    main(Taskiq(), TaskiqList())
