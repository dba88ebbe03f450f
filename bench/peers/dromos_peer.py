"""dromos through the shared driver (on Redis run by ``bench/.venvs/dromos``'s python).

Status tracking is on for every figure: dromos always keeps each job's state and result.
Worker: ``dromos worker -c 32`` (``-p 2`` for two processes); enqueue through ``enqueue`` /
``enqueue_many``; the round trip is ``enqueue(i).result()``, which waits on a pushed
completion message, not by polling.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import time
from typing import Any

from _driver import main

CONCURRENCY = 32


class Dromos:
    name = "dromos"
    tasks = "dromos_tasks"  # the task module the worker runs (``<tasks>:app``)
    port_env = "BENCH_REDIS_PORT"  # how the tasks find the counter's server

    def _url(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}/0?prefix=bench"

    def _env(self, port: int) -> dict[str, str]:
        return {"DROMOS_BROKER": self._url(port), self.port_env: str(port)}

    def _app(self, port: int) -> Any:
        os.environ.update(self._env(port))
        return importlib.import_module(self.tasks)

    def enqueue_single(self, port: int, n: int) -> float:
        mod = self._app(port)
        mod.noop.enqueue(-1)
        t0 = time.perf_counter()
        for i in range(n):
            mod.noop.enqueue(i)
        return time.perf_counter() - t0

    def enqueue_bulk(self, port: int, n: int, batch: int) -> float | None:
        mod = self._app(port)
        mod.noop.enqueue(-1)
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            mod.noop.enqueue_many([(i,) for i in range(start, min(n, start + batch))])
        return time.perf_counter() - t0

    def fill(self, port: int, n: int) -> None:
        self.enqueue_bulk(port, n, 1000)

    def worker(self, port: int, procs: int, results: bool) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-m", "dromos", "worker", f"{self.tasks}:app", "-c",
                str(CONCURRENCY), "-q", "default", "--log-level", "warning"]  # fmt: skip
        if procs > 1:
            argv += ["-p", str(procs)]
        return argv, self._env(port)

    def round_trip(self, port: int, samples: int) -> list[float]:
        mod = self._app(port)
        mod.noop.enqueue(-1).result(timeout=60)  # the worker is up
        time.sleep(0.5)
        out = []
        for i in range(samples):
            t0 = time.perf_counter()
            mod.noop.enqueue(i).result(timeout=60)
            out.append((time.perf_counter() - t0) * 1000)
        return out

    def extra(self, port: int, n: int) -> dict[str, float]:
        """dromos only: ``await aenqueue`` one at a time, and 64 coroutines at once."""
        mod = self._app(port)

        async def run() -> dict[str, float]:
            await mod.noop.aenqueue(-1)
            t0 = time.perf_counter()
            for i in range(n):
                await mod.noop.aenqueue(i)
            single = n / (time.perf_counter() - t0)

            async def caller(k: int) -> None:
                for i in range(k, n, 64):
                    await mod.noop.aenqueue(i)

            t0 = time.perf_counter()
            await asyncio.gather(*(caller(k) for k in range(64)))
            return {"aenqueue": single, "aenqueue_64": n / (time.perf_counter() - t0)}

        return asyncio.run(run())


if __name__ == "__main__":
    main(Dromos())
