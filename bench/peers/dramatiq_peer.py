"""Dramatiq through the shared driver (run by ``bench/.venvs/dramatiq``'s python).

Settings and why:

- ``RedisBroker`` on the private server, the broker the brief names; default middleware
  (no Prometheus in Dramatiq 2.x's defaults).
- Worker: ``dramatiq dramatiq_tasks -p 1 -t 32`` (``-p 2`` for two processes: Dramatiq's
  own option, one master plus N forked worker processes). Dramatiq's default is 8 threads
  per process and its docs give no recommendation for more or fewer; 32 matches dromos's
  ``-c 32``; on this task 32 threads drained no slower than the default 8 (measured).
- Prefetch: Dramatiq's default, twice the worker threads per queue (``dramatiq_queue_prefetch``
  unset). The worker's idle timeout (``dramatiq_worker_timeout``, 1 s, the longest idle
  back-off of its Redis consumer) stays at its default.
- Results: the ``Results`` middleware with ``RedisBackend``, the recommended backend ("This
  is the recommended result backend as waiting for a result is resource efficient",
  ``RedisBackend`` docstring). The drain's worker runs with ``store_results=False`` (the
  middleware's default: nothing is stored); the round trip's with ``store_results=True``,
  waiting with ``message.get_result(block=True)``: a BRPOPLPUSH on the result key, pushed
  rather than polled. Dramatiq warns once per message whose actor returns a value it does
  not store; the drain silences that one logger (``dramatiq_tasks``). The middleware has no
  enqueue hook, so the producer (which always has it) enqueues exactly as without it.

What is unfair, if anything: Dramatiq has no bulk enqueue (``group(...).run()`` sends one
message per call), so there is no ``enqueue_many`` figure and ``fill`` is a loop of
``send``. Its Redis consumer polls with an exponential back-off (5 ms doubling up to the 1 s
worker timeout) instead of blocking: the first round trip after the idle half second pays
that back-off (``latency_max``), the later ones, back to back, hardly any.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from _driver import main

BIN = Path(sys.executable).parent
# A result wait blocks in one BRPOPLPUSH of whole seconds, which must end before redis-py's
# socket timeout (5 s by default since redis-py 8) or the read fails instead.
WAIT_MS = 4000


class Dramatiq:
    name = "dramatiq"
    threads = 32
    tasks = "dramatiq_tasks"  # the task module (dramatiq_rmq_peer.py: RabbitMQ's)

    def _mod(self, port: int) -> Any:
        """The task module, configured for the private Redis (with the result middleware)."""
        os.environ["BENCH_REDIS_PORT"] = str(port)
        os.environ["BENCH_RESULTS"] = "1"
        return importlib.import_module(self.tasks)

    def enqueue_single(self, port: int, n: int) -> float:
        mod = self._mod(port)
        mod.noop.send(-1)
        t0 = time.perf_counter()
        for i in range(n):
            mod.noop.send(i)
        return time.perf_counter() - t0

    def enqueue_bulk(self, port: int, n: int, batch: int) -> float | None:
        return None  # no bulk API: group().run() enqueues one message at a time

    def fill(self, port: int, n: int) -> None:
        mod = self._mod(port)
        for i in range(n):
            mod.noop.send(i)

    def worker(self, port: int, procs: int, results: bool) -> tuple[list[str], dict[str, str]]:
        argv = [str(BIN / "dramatiq"), self.tasks, "-p", str(procs),
                "-t", str(self.threads)]  # fmt: skip
        env = {"BENCH_REDIS_PORT": str(port), "BENCH_RESULTS": "1" if results else "0"}
        return argv, env

    def round_trip(self, port: int, samples: int) -> list[float]:
        import redis
        from dramatiq.results import ResultTimeout

        mod = self._mod(port)
        # The worker may still be starting: warm-up trips until one returns, for up to a
        # minute, each a short wait (see WAIT_MS).
        deadline = time.monotonic() + 60
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
    main(Dramatiq())
