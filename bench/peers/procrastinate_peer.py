"""procrastinate (PostgreSQL) through the shared driver (``bench/.venvs/procrastinate``).

Settings and why (procrastinate's docs, "How to" pages):

- Worker: ``python -m procrastinate --app=procrastinate_tasks.app --log-level warning worker
  --concurrency 32 --queues default --listen-notify``. ``--concurrency`` is the docs' way to
  more throughput in one process for asynchronous tasks ("Execute multiple jobs at the same
  time": ``procrastinate worker --concurrency=30``); 32 matches dromos's ``-c 32``.
  ``--listen-notify`` (the default, said explicitly): the worker ``LISTEN``s for the
  ``job_inserted`` notification that the insert trigger sends, and fetches as soon as one
  arrives; ``fetch_job_polling_interval`` (5 s) is only the fallback. ``--log-level warning``:
  the default INFO logs two lines per job (dromos runs at warning too).
- Two processes: the docs' other way ("launch multiple workers, each using their own
  process"): two such workers side by side (``sh -c "trap wait TERM; w & w & wait"``, one
  process group; the same as huey's two consumers in the Redis benchmark).
- Status: procrastinate keeps each job's row with its status (``delete_jobs`` at its default,
  ``never``), plus one ``procrastinate_events`` row per change of status (its triggers), so
  status tracking is on, as for dromos. It keeps no result: a task's return value is logged,
  not stored.
- Pool: ``PsycopgConnector(min_size=1, max_size=10)``, the same bound as dromos's broker
  (``procrastinate_tasks.py``).

Enqueue: ``noop.defer(i=i)`` one at a time (the synchronous API, from plain code, as dromos's
blocking ``enqueue``); bulk: ``noop.batch_defer(*[{"i": i}, ...])`` of 1,000 (the docs' "Batch
defer multiple jobs": one query for the batch). Extras: ``await noop.defer_async(i=i)`` one at
a time and from 64 coroutines at once, in ``async with app.open_async()``.

Round trip (unfair to procrastinate): it has no result API and no notification when a job
ends (its triggers ``NOTIFY`` only insertions and abort requests), so the caller defers the
job and then polls ``app.job_manager.get_job_status(job_id)`` (its public job manager, one
``SELECT`` each) every ``POLL_S`` (1 ms) until the status is ``succeeded``: on average about
half the interval plus one query is the poll's, not the queue's. dromos's ``result()`` waits
on a ``NOTIFY`` instead. Now and then a round trip takes 5 s: the worker clears its "new job"
event after each fetch, so a ``NOTIFY`` that arrives while a fetch that found nothing is still
running is lost until the next ``fetch_job_polling_interval`` (procrastinate's own behaviour,
at its defaults; the driver counts round trips of 100 ms or more).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from typing import Any

from _driver import main

CONCURRENCY = 32
POLL_S = 0.001  # seconds between two status reads of a round trip
_opened = False


def _side_by_side(argv: list[str], procs: int) -> list[str]:
    """A shell running ``procs`` copies of ``argv`` in its process group; the trap makes it
    wait for them on SIGTERM, so that none is still fetching when the next phase starts."""
    cmd = shlex.join(argv)
    return ["sh", "-c", "trap wait TERM; " + " & ".join([cmd] * procs) + " & wait"]


def _mod(port: int) -> Any:
    """The task module on the private cluster, its app opened for synchronous defers."""
    global _opened
    os.environ["BENCH_PG_PORT"] = str(port)
    import procrastinate_tasks

    if not _opened:
        procrastinate_tasks.app.open()
        _opened = True
    return procrastinate_tasks


class Procrastinate:
    name = "procrastinate"

    def prepare(self, port: int) -> None:
        """Install procrastinate's schema once (``procrastinate schema --apply``'s call)."""
        mod = _mod(port)
        if not mod.app.job_manager.check_connection():
            mod.app.schema_manager.apply_schema()

    def enqueue_single(self, port: int, n: int) -> float:
        mod = _mod(port)
        mod.noop.defer(i=-1)
        t0 = time.perf_counter()
        for i in range(n):
            mod.noop.defer(i=i)
        return time.perf_counter() - t0

    def enqueue_bulk(self, port: int, n: int, batch: int) -> float | None:
        mod = _mod(port)
        mod.noop.defer(i=-1)
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            mod.noop.batch_defer(*[{"i": i} for i in range(start, min(n, start + batch))])
        return time.perf_counter() - t0

    def fill(self, port: int, n: int) -> None:
        mod = _mod(port)
        for start in range(0, n, 1000):
            mod.noop.batch_defer(*[{"i": i} for i in range(start, min(n, start + 1000))])

    def worker(self, port: int, procs: int, results: bool) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-m", "procrastinate", "--app=procrastinate_tasks.app",
                "--log-level", "warning", "worker", "--concurrency", str(CONCURRENCY),
                "--queues", "default", "--listen-notify"]  # fmt: skip
        env = {"BENCH_PG_PORT": str(port)}
        return (argv if procs == 1 else _side_by_side(argv, procs)), env

    def _trip(self, mod: Any, i: int, timeout: float) -> None:
        from procrastinate.jobs import Status

        job_id = mod.noop.defer(i=i)
        deadline = time.monotonic() + timeout
        while True:
            status = mod.app.job_manager.get_job_status(job_id)
            if status == Status.SUCCEEDED:
                return
            if status not in (Status.TODO, Status.DOING):
                raise RuntimeError(f"procrastinate job {job_id} ended {status}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"procrastinate job {job_id} still {status}")
            time.sleep(POLL_S)

    def round_trip(self, port: int, samples: int) -> list[float]:
        mod = _mod(port)
        self._trip(mod, -1, 60)  # the worker is up
        time.sleep(0.5)
        out = []
        for i in range(samples):
            t0 = time.perf_counter()
            self._trip(mod, i, 60)
            out.append((time.perf_counter() - t0) * 1000)
        return out

    def extra(self, port: int, n: int) -> dict[str, float]:
        """``await defer_async`` one at a time, and from 64 coroutines at once."""
        mod = _mod(port)

        async def run() -> dict[str, float]:
            async with mod.app.open_async():
                await mod.noop.defer_async(i=-1)
                t0 = time.perf_counter()
                for i in range(n):
                    await mod.noop.defer_async(i=i)
                single = n / (time.perf_counter() - t0)

                async def caller(k: int) -> None:
                    for i in range(k, n, 64):
                        await mod.noop.defer_async(i=i)

                t0 = time.perf_counter()
                await asyncio.gather(*(caller(k) for k in range(64)))
                return {"aenqueue": single, "aenqueue_64": n / (time.perf_counter() - t0)}

        global _opened
        _opened = False  # open_async closed the synchronous connector: reopen on next use
        return asyncio.run(run())


if __name__ == "__main__":
    main(Procrastinate())
