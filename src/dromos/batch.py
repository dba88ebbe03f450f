"""Batches: many jobs submitted together, counted as they end, with one callback at the end.

``task.map(items, on_complete=report)`` queues every job of the batch in one broker write
(all or none) together with a batch record. Every job carries the header ``batch_id``; the
broker counts each job's *first* end (succeeded, dead-lettered or cancelled) in the very write
that ends it, and the write that ends the last one inserts the ``on_complete`` job. Counting
inside the broker's own write, not in the worker, is what makes the callback run exactly once
when the last jobs end at the same moment on different workers, or when a worker dies between
ending a job and reporting it.

A :class:`Batch` is, like a :class:`~dromos.Job`, only ids and a way back to the app:
``app.get_batch(id)`` in another process is as good as the handle ``map`` returned.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import msgspec

from dromos.context import refuse_blocking_wait
from dromos.errors import JobFailed, JobNotFound

if TYPE_CHECKING:
    from dromos.app import App
    from dromos.job import Job

__all__ = ["Batch", "BatchStatus", "summary_json"]

R = TypeVar("R")


class BatchStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one batch's counts, as a broker reports it."""

    id: str
    """The batch id (every job of the batch carries it as its ``batch_id`` header)."""
    total: int
    """Jobs in the batch."""
    succeeded: int = 0
    failed: int = 0
    """Jobs dead-lettered (retries exhausted, poison, undeliverable)."""
    cancelled: int = 0
    callback_id: str | None = None
    """The ``on_complete`` job's id (it exists once the batch is done), if there is one."""
    finished_at: datetime | None = None
    """When the last job of the batch ended."""

    @property
    def ended(self) -> int:
        """Jobs that ended, each counted once (at its first end: a replay does not count)."""
        return self.succeeded + self.failed + self.cancelled

    @property
    def progress(self) -> float:
        """``ended / total``, 0..1."""
        return self.ended / self.total if self.total else 1.0

    @property
    def done(self) -> bool:
        """True once every job ended (and the callback, if any, was queued)."""
        return self.ended >= self.total


def summary_json(batch_id: str, total: int, succeeded: int, failed: int, cancelled: int) -> bytes:
    """The summary the callback receives, as the exact bytes every broker writes (SQLite's
    ``json_object`` and redis.lua build the same text: keys in this order, no spaces)."""
    return (
        f'{{"batch_id":"{batch_id}","total":{total},"succeeded":{succeeded},'
        f'"failed":{failed},"cancelled":{cancelled}}}'
    ).encode()


class Batch(Generic[R]):
    """A handle on a submitted batch: its id, its jobs in order, its counts and results."""

    __slots__ = ("_app", "id", "jobs")

    def __init__(self, app: App, batch_id: str, jobs: list[Job[R]]) -> None:
        self._app = app
        self.id = batch_id
        self.jobs = jobs

    def __repr__(self) -> str:
        return f"<Batch {self.id} jobs={len(self.jobs)}>"

    def __len__(self) -> int:
        return len(self.jobs)

    # -- asyncio flavour ----------------------------------------------------------------
    async def astatus(self) -> BatchStatus:
        """The batch's counts now; raise :class:`JobNotFound` if the broker has no such
        batch (a wrong id, or its retention time passed)."""
        status = await (await self._app.abroker()).batch_status(self.id)
        if status is None:
            raise JobNotFound(self.id)
        return status

    @overload
    async def aresults(
        self, timeout: float | None = None, *, return_exceptions: Literal[False] = False
    ) -> list[R]: ...
    @overload
    async def aresults(
        self, timeout: float | None = None, *, return_exceptions: bool
    ) -> list[R | JobFailed]: ...
    async def aresults(
        self, timeout: float | None = None, *, return_exceptions: bool = False
    ) -> list[R] | list[R | JobFailed]:
        """Wait until every job ended; return their results in the jobs' order.

        As ``job.result()``: the first job (in order) that failed or was cancelled raises its
        :class:`JobFailed` / :class:`JobCancelled`, unless ``return_exceptions``, which puts
        that error in its place. :class:`ResultTimeout` if the whole batch has not ended
        within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        out: list[R | JobFailed] = []
        for job in self.jobs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                out.append(await job.aresult(left))
            except JobFailed as exc:  # JobCancelled too
                if not return_exceptions:
                    raise
                out.append(exc)
        return out

    # -- blocking flavour ---------------------------------------------------------------
    def status(self) -> BatchStatus:
        """Blocking twin of :meth:`astatus`."""
        return self._app.portal.call(self.astatus)

    @overload
    def results(
        self, timeout: float | None = None, *, return_exceptions: Literal[False] = False
    ) -> list[R]: ...
    @overload
    def results(
        self, timeout: float | None = None, *, return_exceptions: bool
    ) -> list[R | JobFailed]: ...
    def results(
        self, timeout: float | None = None, *, return_exceptions: bool = False
    ) -> list[R] | list[R | JobFailed]:
        """Blocking twin of :meth:`aresults`; a ``timeout`` is strongly advised."""
        refuse_blocking_wait("batch.results()", "await batch.aresults()")
        return self._app.portal.call(self._aresults, timeout, return_exceptions)

    async def _aresults(self, timeout: float | None, return_exceptions: bool) -> list[Any]:
        return await self.aresults(timeout, return_exceptions=return_exceptions)
