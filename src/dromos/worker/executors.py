"""Where plain (non-async) task functions run: a thread pool, or a process pool on request.

A thread cannot be stopped from outside. When a plain task overruns its time limit or is
cancelled, the worker *abandons* its thread: the pool is replaced by a fresh one so the
worker keeps its full concurrency, and the old thread finishes on its own (its result is
ignored; it can see ``current_job().cancelled`` and return early).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from dromos.context import JobContext, run_as

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from dromos.task import Task

__all__ = ["Executors"]


def _call_in_process(module: str, qualname: str, args: Any, kwargs: Any) -> Any:
    """Runs in the pool process: find the task by its import path and call its function."""
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return getattr(target, "func", target)(*args, **kwargs)


class Executors:
    """The pools of one worker."""

    def __init__(self, threads: int) -> None:
        self._size = threads
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="dromos-task")
        self._processes: ProcessPoolExecutor | None = None
        self.abandoned = 0

    def submit(
        self, task: Task[Any, Any], ctx: JobContext, args: list[Any], kwargs: dict[str, Any]
    ) -> asyncio.Future[Any]:
        """Start the plain function ``task`` on its pool; await the returned future."""
        loop = asyncio.get_running_loop()
        if task.executor == "process":
            func = task.func
            call = functools.partial(
                _call_in_process, func.__module__, func.__qualname__, args, kwargs
            )
            future = loop.run_in_executor(self._process_pool(), call)
            future.add_done_callback(self._check_pool)
            return future
        return loop.run_in_executor(
            self._threads, functools.partial(run_as, ctx, task.func, *args, **kwargs)
        )

    def _process_pool(self) -> Executor:
        if self._processes is None:
            # Imported here: multiprocessing and the process pool weigh ~1 MiB that a worker
            # without process tasks should not carry.
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: the worker has threads (portal, broker I/O) that fork would copy
            # in whatever state they were in.
            self._processes = ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn"))
        return self._processes

    def _check_pool(self, future: asyncio.Future[Any]) -> None:
        # A child that died (os._exit, a segfault) breaks the whole pool: start a new one for
        # the next job; the job that broke it fails and is retried like any failure.
        from concurrent.futures.process import BrokenProcessPool  # loaded with the pool

        if not future.cancelled() and isinstance(future.exception(), BrokenProcessPool):
            broken, self._processes = self._processes, None
            if broken is not None:
                broken.shutdown(wait=False, cancel_futures=True)

    def abandon_thread(self) -> None:
        """Replace the thread pool, leaving a stuck thread to finish alone."""
        old = self._threads
        self._threads = ThreadPoolExecutor(self._size, thread_name_prefix="dromos-task")
        old.shutdown(wait=False)
        self.abandoned += 1

    def shutdown(self) -> None:
        """Stop accepting work; running threads finish on their own."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            self._processes.shutdown(wait=False, cancel_futures=True)
