"""``current_job()``: what a running task knows about its own job, through a context variable.

No global state: the worker sets a :class:`JobContext` in the context of each run (asyncio
tasks and worker threads each get their own), and ``current_job()`` reads it.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Generator
from typing import Any

from dromos.errors import DromosError

__all__ = ["JobContext", "current_job"]

#: Reports progress to whoever runs the job; the worker's writes are batched and fenced.
Reporter = Callable[["JobContext", float, "str | None"], None]


class _Reported:
    """What ``progress()`` returns: done already, and awaitable so async tasks can ``await`` it.

    The update is handed to the worker at once (it is written with the next batch); awaiting
    only yields to the loop, so a tight async loop that reports progress stays responsive.
    """

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        yield None


class JobContext:
    """The running job, as seen from inside its task."""

    __slots__ = ("_cancelled", "_report", "attempt", "headers", "id", "queue", "task")

    def __init__(
        self,
        job_id: str,
        task: str,
        *,
        queue: str = "default",
        attempt: int = 1,
        headers: dict[str, str] | None = None,
        report: Reporter | None = None,
    ) -> None:
        self.id = job_id
        self.task = task
        self.queue = queue
        self.attempt = attempt
        self.headers = headers or {}
        self._report = report
        # A plain flag: set by the worker's thread, read by the task's; a bool assignment is
        # atomic, and nothing waits on it (an Event per job cost more than the job).
        self._cancelled = False

    def __repr__(self) -> str:
        return f"<JobContext {self.task} {self.id} attempt={self.attempt}>"

    def progress(self, fraction: float, message: str | None = None) -> _Reported:
        """Report progress in 0..1 with an optional message; ``await`` it or not.

        Progress is visible in ``job.status()`` shortly after (updates are batched, and only
        the latest one of a job is written).
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress must be between 0 and 1, got {fraction!r}")
        if self._report is not None:
            self._report(self, float(fraction), message)
        return _Reported()

    @property
    def cancelled(self) -> bool:
        """True once cancellation was asked for or the time limit passed.

        Plain (non-async) tasks cannot be interrupted from outside: a long one should check
        this now and then and return early.
        """
        return self._cancelled

    def _cancel(self) -> None:
        self._cancelled = True


_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("dromos_current_job")


def current_job() -> JobContext:
    """The job the calling task is running as; raise :class:`DromosError` outside a task."""
    try:
        return _current.get()
    except LookupError:
        raise DromosError(
            "current_job() was called outside a running task; call it from inside a function "
            "decorated with @app.task"
        ) from None


def refuse_blocking_wait(call: str, instead: str) -> None:
    """Raise if a blocking wait for other jobs is made from an async task on its worker's
    event loop: the loop, and with it every job and heartbeat of that worker, would stop for
    the whole wait, and the job waited for may need that very worker. (Plain tasks run in
    threads of their own, where waiting is fine; so is any other code with a running loop,
    such as a notebook.)"""
    if _current.get(None) is None:
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # a plain task's thread
    raise DromosError(
        f"{call} was called inside an async task: it would block the worker's event loop "
        f"(every job of that worker, and the job waited for if it needs this worker); "
        f"use {instead}"
    )


def run_as(ctx: JobContext, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call ``func`` with ``ctx`` as the current job (used for plain tasks in threads)."""
    token = _current.set(ctx)
    try:
        return func(*args, **kwargs)
    finally:
        _current.reset(token)


def set_current(ctx: JobContext) -> contextvars.Token[JobContext]:
    """Make ``ctx`` the current job in this context (an asyncio task's own copy)."""
    return _current.set(ctx)


def reset_current(token: contextvars.Token[JobContext]) -> None:
    """Undo :func:`set_current`."""
    _current.reset(token)
