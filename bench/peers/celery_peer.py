"""Celery through the shared driver (run by ``bench/.venvs/celery``'s python).

Redis is both the broker and the result backend (``redis://127.0.0.1:<port>/0``). Two variants,
differing in the worker's execution pool:

- ``celery-threads``: ``celery worker --pool threads -c 32``, the concurrency dromos runs with.
  Celery has no option for several processes of a threads pool, so ``procs=2`` is two worker
  nodes (``-n bench1@%h``, ``-n bench2@%h``) started by one ``sh`` in the driver's process group
  (Celery's own ``celery multi`` daemonizes, which the driver cannot supervise).
- ``celery-prefork``: the default prefork pool; ``procs`` is its ``-c`` (the number of child
  processes that run tasks, each one task at a time), which is Celery's own option for several
  processes. The parent process, which talks to the broker, counts in the RSS.

Settings and why:

- ``worker_prefetch_multiplier=64`` (default 4): the Celery guide "Optimizing", Prefetch
  Limits: "If you have many short-running tasks, and throughput/round trip latency is important
  to you, this number should be large ... Say 64, or 128." The reservation is multiplier x
  concurrency: 2048 messages for 32 threads, 64 per prefork child.
- The prefork pool keeps its default scheduling (``-O fair`` is the default since Celery 4; the
  ``-O`` choices documented by ``celery worker --help`` are ``default|fair`` only).
- ``task_ignore_result`` for the drain (``results=False``); the round trip keeps results.
- Logging at WARNING (Celery's worker default), as dromos runs with ``--log-level warning``;
  ``celery -q`` drops the start-up banner. The worker's stdout goes to stderr: Celery prints
  "worker: Warm shutdown (MainProcess)" to stdout on SIGTERM, which would otherwise land next to
  the driver's JSON line.
- Round trip: ``count.delay(i).get(timeout=...)`` -- ``AsyncResult.get`` with the Redis result
  backend waits on a pub/sub message (Celery subscribes to the task's channel before it sends
  the task), so no polling interval to tune.

What may look unfair:

- No bulk enqueue: ``group(...).apply_async()`` sends one message per task through the same
  producer (``group._apply_tasks`` calls ``apply_async`` per signature), with no pipelining, so
  it is not a bulk API and ``enqueue_bulk`` returns None.
- ``enqueue``: ``count.delay(i)`` with the result backend configured and results on (the app the
  round trip uses). With the Redis backend, Celery subscribes to each task's result channel as it
  sends it, and unsubscribes when the ``AsyncResult`` is dropped: two extra Redis commands per
  call. ``enqueue_ignore_result`` (the ``extra`` figure) is the same loop with
  ``ignore_result=True``, which skips them -- the figure for an app that does not want results.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from _driver import main

THREADS = 32
PREFETCH = 64  # worker_prefetch_multiplier, see the module docstring


def _tasks(port: int) -> Any:
    os.environ["BENCH_REDIS_PORT"] = str(port)
    os.environ["BENCH_CELERY_RESULTS"] = "1"
    import celery_tasks

    return celery_tasks


def _sh(commands: list[list[str]]) -> list[str]:
    """One ``sh`` running ``commands``, each with its stdout sent to stderr.

    A single command is ``exec``-ed (no extra process); several run in the background and the
    shell waits. The driver starts it in its own process group and stops the whole group."""
    quoted = [shlex.join(c) + " 1>&2" for c in commands]
    if len(quoted) == 1:
        return ["sh", "-c", "exec " + quoted[0]]
    return ["sh", "-c", " & ".join(quoted) + " & wait"]


class _Celery:
    name = ""
    module = "celery_tasks"  # the task module the worker runs (``celery -A <module>``)

    def _tasks(self, port: int) -> Any:
        return _tasks(port)

    def enqueue_single(self, port: int, n: int) -> float:
        task = self._tasks(port).count
        task.delay(-1)
        t0 = time.perf_counter()
        for i in range(n):
            task.delay(i)
        return time.perf_counter() - t0

    def enqueue_bulk(self, port: int, n: int, batch: int) -> float | None:
        return None  # group().apply_async() sends one message per task: not a bulk API

    def fill(self, port: int, n: int) -> None:
        """``apply_async`` in a loop on one producer, results off (only the drain fills)."""
        mod = self._tasks(port)
        with mod.app.producer_or_acquire() as producer:
            for i in range(n):
                mod.count.apply_async((i,), producer=producer, ignore_result=True)

    def extra(self, port: int, n: int) -> dict[str, float]:
        """Celery only: the ``enqueue`` loop with ``ignore_result=True`` (no result channel)."""
        task = self._tasks(port).count
        task.apply_async((-1,), ignore_result=True)
        t0 = time.perf_counter()
        for i in range(n):
            task.apply_async((i,), ignore_result=True)
        return {"enqueue_ignore_result": n / (time.perf_counter() - t0)}

    def _celery(self) -> list[str]:
        return [str(Path(sys.executable).parent / "celery"), "-q", "-A", self.module, "worker"]

    def _env(self, port: int, results: bool) -> dict[str, str]:
        return {
            "BENCH_REDIS_PORT": str(port),
            "BENCH_CELERY_RESULTS": "1" if results else "0",
            "BENCH_CELERY_PREFETCH": str(PREFETCH),
        }

    def round_trip(self, port: int, samples: int) -> list[float]:
        task = self._tasks(port).count
        self._warm_up(task, port)
        time.sleep(0.5)
        out = []
        for i in range(samples):
            t0 = time.perf_counter()
            value = task.delay(i).get(timeout=60)
            out.append((time.perf_counter() - t0) * 1000)
            if value != i:
                raise RuntimeError(f"celery: result {value!r} for {i}")
        return out

    @staticmethod
    def _warm_up(task: Any, port: int) -> None:
        """One untimed round trip while the worker starts: 3 tries of 40 s, each reported.

        Before the driver waited for a stopped worker's whole process group to go, the warm-up
        task was lost now and then (2 runs in ~15): a killed node of the previous phase, not yet
        gone, still had its blocking pop pending and took the message. Should that happen again,
        the note on stderr says whether the task ran and stored its result, and a new warm-up
        is sent rather than failing the run (the same 120 s in all as one long wait).
        """
        from celery.exceptions import TimeoutError as CeleryTimeout

        for attempt in range(3):
            result = task.delay(-1)
            try:
                if result.get(timeout=40) != -1:
                    raise RuntimeError("celery: wrong warm-up result")
                return
            except CeleryTimeout:
                import redis

                client = redis.Redis(host="127.0.0.1", port=port)
                key = f"celery-task-meta-{result.id}"
                print(
                    f"celery: warm-up {attempt + 1} timed out: ran={client.get('bench:count')!r}"
                    f" stored={client.exists(key)} queued={client.llen('celery')}"
                    f" subscribers={client.pubsub_numsub(key)}",
                    file=sys.stderr,
                )
                client.close()
        raise RuntimeError("celery: no warm-up result")


class CeleryThreads(_Celery):
    name = "celery-threads"

    def worker(self, port: int, procs: int, results: bool) -> tuple[list[str], dict[str, str]]:
        nodes = [
            [
                *self._celery(),
                "--pool",
                "threads",
                "-c",
                str(THREADS),
                "-l",
                "WARNING",
                "-n",
                f"bench{k + 1}@%h",
            ]
            for k in range(procs)
        ]
        return _sh(nodes), self._env(port, results)


class CeleryPrefork(_Celery):
    name = "celery-prefork"

    def worker(self, port: int, procs: int, results: bool) -> tuple[list[str], dict[str, str]]:
        argv = [*self._celery(), "--pool", "prefork", "-c", str(procs), "-l", "WARNING",
                "-n", "bench1@%h"]  # fmt: skip
        return _sh([argv]), self._env(port, results)


if __name__ == "__main__":
    main(CeleryThreads(), CeleryPrefork())
