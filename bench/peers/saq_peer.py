"""SAQ (Redis queue) through the shared driver (run by ``bench/.venvs/saq``).

Worker: ``saq saq_tasks.settings --workers N`` with ``concurrency=32`` in the settings.

- ``--workers``: SAQ's own option for worker processes (the first process works too, so
  ``--workers 2`` is two processes).
- ``concurrency=32``: the same concurrency per process as dromos's ``-c 32`` (SAQ's default
  is 10, its README example uses 10; the docs give no throughput advice beyond that).
  Each of the 32 process loops waits on its own blocking ``BLMOVE``, so no poll interval is
  involved (the README: "Avoids polling by leveraging BLMOVE ... and NOTIFY").
- Log level: the CLI's default (warning), so no line per job.
- Results: SAQ always keeps each job's state and result in Redis (a job record ``SET`` at
  enqueue, updated when it starts and when it finishes, with a ``PUBLISH`` each time), like
  dromos; there is no worker-side switch to turn that off, so ``results=False`` changes
  nothing. (The per-job ``ttl=-1`` would only swap the final ``SETEX`` for a ``DEL`` in the
  same pipeline.) Jobs keep SAQ's defaults (``timeout=10``, ``retries=1``, ``ttl=600``).

Enqueue: ``await queue.enqueue("noop", i=i)``, one at a time (one Lua script call each).
SAQ has no bulk enqueue: ``Queue.map`` enqueues with ``asyncio.gather`` over ``enqueue`` (one
script call per job, at most 20 in flight, the queue's ``max_concurrent_ops``) and then waits
for every result, and ``Queue.batch`` only groups jobs for abort-on-error. So
``enqueue_many`` is not reported; ``fill`` does what ``map`` and SAQ's own benchmark do:
``enqueue`` under ``asyncio.gather``.

Round trip: ``job = await queue.enqueue(...)`` then ``await job.refresh(until_complete=...)``,
the README's way of waiting for a job ("wait 1 second for the job to complete"). It reads the
job and, if it is not done, waits for the completion message on SAQ's pub/sub channel (no
polling). ``Queue.apply`` is not used: in this version it polls the job every
``poll_interval`` seconds (default 0.5; the README shows 0.1 "to check status more
frequently"), which measures the poll interval rather than the queue.

The wait is the README's one second (``TRIP_WAIT``), repeated until the job is done.
A caveat of ``refresh(until_complete)``: it subscribes only after reading the job, so a job that
finishes between the two has its completion message missed and the wait runs its full second
(about 0.3 % of trips here, on a loaded two-core machine). Such a trip is counted at its full
length, as SAQ gives it, and the count is reported on stderr.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from _driver import main

QUEUE = "bench"  # as saq_tasks.QUEUE
TRIP_WAIT = 1.0  # refresh(until_complete=...): the README's "wait 1 second for the job"
FILL_CHUNK = 1000  # jobs per asyncio.gather in fill (the queue itself allows 20 in flight)


def _queue(port: int) -> Any:
    from saq import Queue

    return Queue.from_url(f"redis://127.0.0.1:{port}/0", name=QUEUE)


def _run(port: int, body: Any) -> Any:
    """Run ``body(queue)`` in a fresh event loop with a connected queue."""

    async def run() -> Any:
        queue = _queue(port)
        await queue.connect()
        try:
            return await body(queue)
        finally:
            await queue.disconnect()

    return asyncio.run(run())


class Saq:
    name = "saq"

    def enqueue_single(self, port: int, n: int) -> float:
        async def body(queue: Any) -> float:
            await queue.enqueue("noop", i=-1)
            t0 = time.perf_counter()
            for i in range(n):
                await queue.enqueue("noop", i=i)
            return time.perf_counter() - t0

        return float(_run(port, body))

    def enqueue_bulk(self, port: int, n: int, batch: int) -> float | None:
        return None  # SAQ has no bulk enqueue (see the module docstring)

    def fill(self, port: int, n: int) -> None:
        async def body(queue: Any) -> None:
            for start in range(0, n, FILL_CHUNK):
                stop = min(n, start + FILL_CHUNK)
                await asyncio.gather(*(queue.enqueue("noop", i=i) for i in range(start, stop)))

        _run(port, body)

    def worker(self, port: int, procs: int, results: bool) -> tuple[list[str], dict[str, str]]:
        argv = [str(Path(sys.executable).parent / "saq"), "saq_tasks.settings",
                "--workers", str(procs)]  # fmt: skip
        return argv, {"BENCH_REDIS_PORT": str(port)}

    def round_trip(self, port: int, samples: int) -> list[float]:
        from saq.job import Status

        missed = 0

        async def trip(queue: Any, i: int) -> None:
            nonlocal missed
            job = await queue.enqueue("noop", i=i)
            while True:
                try:
                    await job.refresh(until_complete=TRIP_WAIT)
                    break
                except TimeoutError:  # what asyncio.TimeoutError is on 3.11+
                    await job.refresh()
                    if job.completed:  # done, but its completion message was missed
                        missed += 1
                        break
            if job.status != Status.COMPLETE or job.result != i:
                raise RuntimeError(f"saq: job failed or bad result: {job!r}")

        async def body(queue: Any) -> list[float]:
            nonlocal missed
            await trip(queue, -1)  # the worker is up
            await asyncio.sleep(0.5)
            missed = 0  # count the timed trips only
            out = []
            for i in range(samples):
                t0 = time.perf_counter()
                await trip(queue, i)
                out.append((time.perf_counter() - t0) * 1000)
            return out

        trips = list(_run(port, body))
        if missed:
            print(f"saq: {missed} round trip(s) missed the completion message", file=sys.stderr)
        return trips


if __name__ == "__main__":
    main(Saq())
