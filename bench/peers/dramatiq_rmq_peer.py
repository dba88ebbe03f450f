"""Dramatiq on RabbitMQ through the shared driver (``--store rabbitmq``; run by
``bench/.venvs/dramatiq-rabbitmq``'s python).

Settings and why:

- ``RabbitmqBroker`` on the private node (``dramatiq_rmq_tasks.py``), its defaults: durable
  classic queues, persistent messages, ``confirm_delivery=False``; default middleware.
- Worker: ``dramatiq dramatiq_rmq_tasks -p 1 -t 32`` (``-p 2``), as on Redis (Dramatiq's
  default is 8 threads; 32 matches dromos's ``-c 32``).
- Prefetch: Dramatiq's default for RabbitMQ, twice the worker threads per queue
  (``dramatiq_queue_prefetch`` unset: ``basic.qos`` of 64 per process); the consumer is pushed
  its messages (``basic.consume``), no polling.
- Results: the ``Results`` middleware with ``RedisBackend`` on the private Redis (RabbitMQ has
  no result store; Dramatiq's other backends are Memcached and an in-memory stub). The drain
  runs with ``store_results=False``; the round trip with ``store_results=True``, waiting with
  ``message.get_result(block=True)``: a BRPOPLPUSH on the result key, pushed, not polled.
- Extra: ``enqueue_confirmed``, the same ``send`` loop through a second
  ``RabbitmqBroker(confirm_delivery=True)`` (each publish waits for its confirm), which is
  what dromos does on every enqueue.

What is unfair, if anything: no bulk enqueue (``group(...).run()`` sends one message per
call), so no ``enqueue_many``, and ``fill`` is a loop of ``send``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from _driver import main

BIN = Path(sys.executable).parent
WAIT_MS = 4000  # see dramatiq_peer.py: below redis-py's socket timeout


def _mod(port: int) -> Any:
    """The task module, configured for the private node and Redis (with results)."""
    os.environ["BENCH_REDIS_PORT"] = str(port)
    os.environ["BENCH_RESULTS"] = "1"
    import dramatiq_rmq_tasks

    return dramatiq_rmq_tasks


class DramatiqRabbitMQ:
    name = "dramatiq"
    threads = 32

    def enqueue_single(self, port: int, n: int) -> float:
        mod = _mod(port)
        mod.noop.send(-1)
        t0 = time.perf_counter()
        for i in range(n):
            mod.noop.send(i)
        return time.perf_counter() - t0

    def enqueue_bulk(self, port: int, n: int, batch: int) -> float | None:
        return None  # no bulk API: group().run() enqueues one message at a time

    def fill(self, port: int, n: int) -> None:
        mod = _mod(port)
        for i in range(n):
            mod.noop.send(i)

    def extra(self, port: int, n: int) -> dict[str, float]:
        """Dramatiq only: the ``send`` loop with publisher confirms on."""
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        mod = _mod(port)
        confirmed = RabbitmqBroker(url=mod.AMQP_URL, confirm_delivery=True)
        confirmed.enqueue(mod.noop.message(-1))
        t0 = time.perf_counter()
        for i in range(n):
            confirmed.enqueue(mod.noop.message(i))
        rate = n / (time.perf_counter() - t0)
        confirmed.close()
        return {"enqueue_confirmed": rate}

    def worker(self, port: int, procs: int, results: bool) -> tuple[list[str], dict[str, str]]:
        argv = [str(BIN / "dramatiq"), "dramatiq_rmq_tasks", "-p", str(procs),
                "-t", str(self.threads)]  # fmt: skip
        env = {"BENCH_REDIS_PORT": str(port), "BENCH_RESULTS": "1" if results else "0"}
        return argv, env

    def round_trip(self, port: int, samples: int) -> list[float]:
        import redis
        from dramatiq.results import ResultTimeout

        mod = _mod(port)
        deadline = time.monotonic() + 60  # the worker may still be starting
        while True:
            try:
                mod.noop.send(-1).get_result(block=True, timeout=2000)
                break
            except (ResultTimeout, redis.exceptions.TimeoutError):
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.5)
        out = []
        for i in range(samples):
            t0 = time.perf_counter()
            mod.noop.send(i).get_result(block=True, timeout=WAIT_MS)
            out.append((time.perf_counter() - t0) * 1000)
        return out


if __name__ == "__main__":
    main(DramatiqRabbitMQ())
