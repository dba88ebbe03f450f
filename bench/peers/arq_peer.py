"""arq through the shared driver (run by ``bench/.venvs/arq``'s python; redis-py < 6).

Settings and why:

- Worker: ``arq arq_tasks.WorkerSettings --custom-log-dict arq_tasks.LOG_CONFIG`` with
  ``max_jobs=32`` (arq's default is 10; its docs give no recommendation, so 32 matches
  dromos's ``-c 32``) and ``poll_delay=0.01`` s. arq polls its queue (a sorted set) every
  ``poll_delay`` ("duration between polling the queue for new jobs", 0.5 s by default),
  reading at most ``queue_read_limit`` job ids per poll (``max(max_jobs * 5, 100)`` = 160),
  and sleeps out the rest of ``poll_delay`` after each batch: with the defaults a worker can
  never start more than 160 / 0.5 = 320 jobs/s however fast it runs them. The maintainer's
  view (python-arq/arq#210: "It won't make any difference ... every new query gets extra
  jobs") holds for slow jobs, not for a benchmark of short ones, so the ``arq`` variant polls
  at 10 ms; the docs warn against no value. ``arq-default-poll`` keeps the 0.5 s default
  (worker and result wait alike), for the record.
- Logging: arq's own default log config at WARNING instead of INFO (through the CLI's
  ``--custom-log-dict``), as dromos runs at warning level: at INFO arq logs two lines a job.
- Results: ``keep_result=0`` for the drain ("if 0 the result is not kept"), arq's default of
  an hour for the round trip, which waits with ``await job.result(poll_delay=...)``: arq
  has no pushed completion, ``job.result`` polls the result key at the same 10 ms.
- Two processes: arq has no multi-process option, so ``procs=2`` is ``sh -c "trap wait
  TERM; arq ... & arq ... & wait"``, two workers on one queue in one process group (the
  shell outlives them on SIGTERM). Both read the same head of the queue (offset 0) and race
  for each job (a WATCH on its in-progress key), arq's design for several workers; with
  short jobs that costs more than the second process brings (measured: 2p below 1p).

What is unfair, if anything: arq has no bulk enqueue, so there is no ``enqueue_many`` figure
and ``fill`` is a loop of ``enqueue_job``. Both the pick-up and the result wait are polls, so
the round trip includes up to two 10 ms intervals that a pushed design does not pay.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from _driver import main

BIN = Path(sys.executable).parent


async def _pool(port: int) -> Any:
    from arq import create_pool
    from arq.connections import RedisSettings

    return await create_pool(RedisSettings(host="127.0.0.1", port=port))


class Arq:
    name = "arq"
    max_jobs = 32
    poll_delay = 0.01  # worker, and the client's job.result()

    def enqueue_single(self, port: int, n: int) -> float:
        async def run() -> float:
            pool = await _pool(port)
            await pool.enqueue_job("noop", -1)
            t0 = time.perf_counter()
            for i in range(n):
                await pool.enqueue_job("noop", i)
            took = time.perf_counter() - t0
            await pool.aclose()
            return took

        return asyncio.run(run())

    def enqueue_bulk(self, port: int, n: int, batch: int) -> float | None:
        return None

    def fill(self, port: int, n: int) -> None:
        async def run() -> None:
            pool = await _pool(port)
            for i in range(n):
                await pool.enqueue_job("noop", i)
            await pool.aclose()

        asyncio.run(run())

    def worker(self, port: int, procs: int, results: bool) -> tuple[list[str], dict[str, str]]:
        env = {
            "BENCH_REDIS_PORT": str(port),
            "BENCH_RESULTS": "1" if results else "0",
            "BENCH_ARQ_MAX_JOBS": str(self.max_jobs),
            "BENCH_ARQ_POLL_DELAY": str(self.poll_delay),
        }
        one = [str(BIN / "arq"), "arq_tasks.WorkerSettings",
               "--custom-log-dict", "arq_tasks.LOG_CONFIG"]  # fmt: skip
        if procs == 1:
            return one, env
        # The driver's SIGTERM reaches both workers (one process group); the trap makes the
        # shell wait for them to exit before it does, so none outlives the phase.
        cmd = shlex.join(one)
        return ["sh", "-c", "trap wait TERM; " + " & ".join([cmd] * procs) + " & wait"], env

    def round_trip(self, port: int, samples: int) -> list[float]:
        async def run() -> list[float]:
            pool = await _pool(port)
            # The worker may still be starting: warm-up trips until one returns, for up to
            # a minute, each a short wait.
            deadline = time.monotonic() + 60
            while True:
                job = await pool.enqueue_job("noop", -1)
                try:
                    await job.result(timeout=2, poll_delay=self.poll_delay)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise
            await asyncio.sleep(0.5)
            out = []
            for i in range(samples):
                t0 = time.perf_counter()
                job = await pool.enqueue_job("noop", i)
                await job.result(timeout=60, poll_delay=self.poll_delay)
                out.append((time.perf_counter() - t0) * 1000)
            await pool.aclose()
            return out

        return asyncio.run(run())


class ArqDefaultPoll(Arq):
    name = "arq-default-poll"
    poll_delay = 0.5


if __name__ == "__main__":
    main(Arq(), ArqDefaultPoll())
