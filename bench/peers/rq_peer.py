"""RQ through the shared driver (run by ``bench/.venvs/rq``'s python).

Two variants, differing only in the worker class:

- ``rq-simple``: ``rq.worker.SimpleWorker``, which runs each job in the worker process.
- ``rq-fork``: ``rq.worker.Worker``, RQ's default, which forks a "work horse" per job.

Settings and why:

- One job at a time per worker process: that is RQ's model ("Each worker will process a single
  job at a time. Within a worker, there is no concurrent processing going on. If you want to
  perform jobs concurrently, simply start more workers." -- RQ docs, Workers). So RQ has no
  concurrency knob to match dromos's 32; ``procs`` is the number of RQ workers.
- ``procs=2``: ``rq worker-pool -n 2`` (RQ's own command for several workers, docs "Worker
  Pool", new in 1.14, still marked beta there). Note that the pool starts its workers
  ``with_scheduler=True``; ``rq worker`` (``procs=1``) runs without the scheduler.
- ``SimpleWorker`` vs ``Worker``: RQ's performance notes say SimpleWorker is faster because it
  skips the fork per job, and recommend it in production only for very short, trusted jobs
  ("Your jobs are extremely short-lived (single digit milliseconds)") -- which describes this
  benchmark's task, hence both variants.
- Logging at WARNING (``--quiet``), as dromos runs with ``--log-level warning``: RQ logs two
  INFO lines per job otherwise.
- Results off for the drain: ``result_ttl=0`` on the jobs ``fill`` enqueues (RQ docs, Results:
  "result gets deleted immediately"), plus ``--results-ttl 0`` on ``rq worker``.
  ``worker-pool`` has no ``--results-ttl`` option, so the per-job setting is what holds for
  both; ``fill`` only ever feeds the drain.
- Round trip: ``job.latest_result(timeout=...)``, RQ's documented way to block for a result
  (new in 1.16); it is a blocking ``XREAD`` on the job's result stream, so no polling interval
  to tune.

Enqueue is ``Queue.enqueue(count, i)``; the bulk API is ``Queue.enqueue_many`` with
``Queue.prepare_data`` (one pipeline per batch). The default pickle serializer and job timeout
(180 s, enforced with a SIGALRM per job) are kept.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from _driver import HERE, main

QUEUE = "default"


def _queue(port: int) -> Any:
    os.environ["BENCH_REDIS_PORT"] = str(port)
    from redis import Redis
    from rq import Queue

    return Queue(QUEUE, connection=Redis(host="127.0.0.1", port=port))


def _count() -> Any:
    import rq_tasks

    return rq_tasks.count


class _Rq:
    name = ""
    worker_class = ""

    def enqueue_single(self, port: int, n: int) -> float:
        q, fn = _queue(port), _count()
        q.enqueue(fn, -1)
        t0 = time.perf_counter()
        for i in range(n):
            q.enqueue(fn, i)
        return time.perf_counter() - t0

    def _many(self, port: int, n: int, batch: int, **options: Any) -> float:
        from rq import Queue

        q, fn = _queue(port), _count()
        q.enqueue(fn, -1, **options)
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            q.enqueue_many(
                [
                    Queue.prepare_data(fn, (i,), **options)
                    for i in range(start, min(n, start + batch))
                ]
            )
        return time.perf_counter() - t0

    def enqueue_bulk(self, port: int, n: int, batch: int) -> float | None:
        return self._many(port, n, batch)

    def fill(self, port: int, n: int) -> None:
        """``n`` jobs through ``enqueue_many``, with results off (only the drain fills).

        The warm-up job of ``_many`` makes ``n + 1`` on the queue; the counter check of the
        driver stops at ``n``, so the extra job does not matter."""
        self._many(port, n, 1000, result_ttl=0)

    def worker(self, port: int, procs: int, results: bool) -> tuple[list[str], dict[str, str]]:
        rq = str(Path(sys.executable).parent / "rq")
        common = ["-u", f"redis://127.0.0.1:{port}/0", "-w", self.worker_class, "-P", str(HERE)]
        if procs > 1:
            argv = [rq, "worker-pool", *common, "-n", str(procs), "--quiet", QUEUE]
        else:
            argv = [rq, "worker", *common, "--quiet", QUEUE]
            if not results:
                argv[2:2] = ["--results-ttl", "0"]
        return argv, {"BENCH_REDIS_PORT": str(port)}

    def round_trip(self, port: int, samples: int) -> list[float]:
        q, fn = _queue(port), _count()
        self._result(q.enqueue(fn, -1), -1, timeout=120)  # the worker is up
        time.sleep(0.5)
        out = []
        for i in range(samples):
            t0 = time.perf_counter()
            self._result(q.enqueue(fn, i), i, timeout=60)
            out.append((time.perf_counter() - t0) * 1000)
        return out

    @staticmethod
    def _result(job: Any, expected: int, timeout: int) -> None:
        result = job.latest_result(timeout=timeout)
        if result is None or result.return_value != expected:
            raise RuntimeError(f"rq: no result for job {job.id} ({result!r})")


class RqSimple(_Rq):
    name = "rq-simple"
    worker_class = "rq.worker.SimpleWorker"


class RqFork(_Rq):
    name = "rq-fork"
    worker_class = "rq.worker.Worker"


if __name__ == "__main__":
    main(RqSimple(), RqFork())
