"""huey through the shared driver (run by ``bench/.venvs/huey``'s python).

Settings and why:

- ``RedisHuey`` (not ``PriorityRedisHuey``: the docs require it only for task priorities,
  which the benchmark does not use). Its Redis storage blocks on BRPOP by default
  (``blocking=True``), so the consumer's polling options (``-d``/``-m``/``-b``) do not apply.
- Worker: ``huey_consumer huey_tasks.huey -k thread -w 32 -q -n``. Thread workers are the
  docs' choice for anything not CPU-heavy or socket-heavy ("Anything else: use 'thread' ...
  A safe choice and the default", consumer docs on ``-k``); the docs name no worker count
  beyond "some applications may want to increase this number for greater throughput", so 32
  matches dromos's ``-c 32``. ``-q`` logs warnings and errors only (huey's default INFO logs
  two lines per task; dromos runs at warning level too); ``-n`` skips the periodic-task
  check ("feel free to use this option to save a few CPU cycles"; there are none).
- Two processes: huey's consumer runs threads *or* processes, not both, so ``huey`` runs two
  such consumers side by side (``sh -c "trap wait TERM; consumer & consumer & wait"``, one
  process group), the docs' way of running several consumers on one queue (``-n`` on all
  but one, they advise; here on all, as there are no periodic tasks). The ``huey-process``
  variant uses the consumer's own process workers instead (``-k process -w N``: one worker
  per process, N = 1 or 2, plus the master).
- Results: off for the drain (``results=False``); on for the round trip with
  ``notify_result=True``, huey 3's "option for low-latency result fetching" (3.0.0
  changelog): ``result.get(blocking=True)`` then waits on a pushed notification (BLPOP)
  instead of polling the result hash with its back-off.

What is unfair, if anything: huey has no bulk enqueue (``task.map()`` enqueues one task per
call), so there is no ``enqueue_many`` figure and ``fill`` is a loop. huey's SIGTERM stops
the consumer at once ("stop immediately, interrupting running tasks"), which does not touch
the figures: the driver stops the worker only after the drain or the last round trip.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from _driver import main

BIN = Path(sys.executable).parent
WORKERS = 32
# A result wait is one BLPOP, which must end before redis-py's socket timeout (5 s by default
# since redis-py 8): huey turns that read error into a plain timeout.
WAIT_S = 4


def _side_by_side(argv: list[str], procs: int) -> list[str]:
    """A shell running ``procs`` copies of ``argv`` in its process group.

    The driver's SIGTERM reaches every copy; the trap makes the shell wait for them to exit
    before it does, so that no dying consumer still holds a BRPOP when the next phase
    enqueues: huey's BRPOP takes a job off the list for good, so one handed to a consumer on
    its way out can be lost (seen as a lost warm-up round trip before the trap was added).
    """
    cmd = shlex.join(argv)
    return ["sh", "-c", "trap wait TERM; " + " & ".join([cmd] * procs) + " & wait"]


def _mod(port: int) -> Any:
    """The task module, configured for the private Redis (results on: huey's default)."""
    os.environ["BENCH_REDIS_PORT"] = str(port)
    import huey_tasks

    return huey_tasks


class Huey:
    name = "huey"

    def enqueue_single(self, port: int, n: int) -> float:
        mod = _mod(port)
        mod.noop(-1)
        t0 = time.perf_counter()
        for i in range(n):
            mod.noop(i)
        return time.perf_counter() - t0

    def enqueue_bulk(self, port: int, n: int, batch: int) -> float | None:
        return None  # no bulk API: task.map() enqueues one task per call

    def fill(self, port: int, n: int) -> None:
        mod = _mod(port)
        for i in range(n):
            mod.noop(i)

    def _consumer(self) -> list[str]:
        return [str(BIN / "huey_consumer"), "huey_tasks.huey", "-q", "-n",
                "-k", "thread", "-w", str(WORKERS)]  # fmt: skip

    def worker(self, port: int, procs: int, results: bool) -> tuple[list[str], dict[str, str]]:
        env = {"BENCH_REDIS_PORT": str(port), "BENCH_RESULTS": "1" if results else "0"}
        if procs == 1:
            return self._consumer(), env
        return _side_by_side(self._consumer(), procs), env

    def round_trip(self, port: int, samples: int) -> list[float]:
        from huey.exceptions import ResultTimeout

        mod = _mod(port)
        # The consumer may still be starting: warm-up trips until one returns, for up to a
        # minute, each a short wait (see WAIT_S).
        deadline = time.monotonic() + 60
        while True:
            try:
                mod.noop(-1).get(blocking=True, timeout=2)
                break
            except ResultTimeout:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.5)
        out = []
        for i in range(samples):
            t0 = time.perf_counter()
            mod.noop(i).get(blocking=True, timeout=WAIT_S)
            out.append((time.perf_counter() - t0) * 1000)
        return out


class HueyProcess(Huey):
    """huey's own process workers: ``-k process -w N``, one worker per process."""

    name = "huey-process"

    def worker(self, port: int, procs: int, results: bool) -> tuple[list[str], dict[str, str]]:
        env = {"BENCH_REDIS_PORT": str(port), "BENCH_RESULTS": "1" if results else "0"}
        return [str(BIN / "huey_consumer"), "huey_tasks.huey", "-q", "-n",
                "-k", "process", "-w", str(procs)], env  # fmt: skip


if __name__ == "__main__":
    main(Huey(), HueyProcess())
