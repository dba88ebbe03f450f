"""Job states, the status snapshot, and the ``Job`` handle a caller keeps.

A ``Job`` is only an id and a way back to the app: every method asks the broker, so a handle
made in one process (``app.job(id)``) is as good as the one ``enqueue`` returned.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from dromos.context import refuse_blocking_wait
from dromos.errors import JobCancelled, JobFailed, JobNotFound, ResultTimeout

if TYPE_CHECKING:
    from dromos.app import App
    from dromos.brokers.base import Broker

__all__ = ["Job", "JobError", "JobState", "JobStatus", "WebhookAttempt"]

R = TypeVar("R")


class JobState(enum.StrEnum):
    """Where a job is in its life. The values are the strings used in status, HTTP and events."""

    SCHEDULED = "scheduled"  # waiting for its eta (a delayed job)
    QUEUED = "queued"  # ready; the next free worker takes it
    RUNNING = "running"  # a worker holds its lease and runs it
    RETRYING = "retrying"  # an attempt failed; waiting for the backoff before the next
    SUCCEEDED = "succeeded"  # finished with a result (terminal)
    FAILED = "failed"  # attempts exhausted or undeliverable: in the dead-letter list (terminal)
    CANCELLED = "cancelled"  # cancelled before it finished (terminal)

    @property
    def terminal(self) -> bool:
        """True for the states a job never leaves on its own."""
        return self in _TERMINAL


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

#: States in which a job waits for a worker (it can still be cancelled without one).
PENDING_STATES = frozenset({JobState.SCHEDULED, JobState.QUEUED, JobState.RETRYING})


class JobError(msgspec.Struct, frozen=True, kw_only=True):
    """Why an attempt failed."""

    type: str
    """The exception's class name, or a dromos reason such as ``UnknownTask``."""
    message: str
    """``str()`` of the exception: what went wrong, in words."""
    traceback: str | None = None
    """The formatted traceback from the worker, when there was one."""
    attempt: int = 0
    """Which attempt raised it (1 for the first)."""


class WebhookAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt to deliver a job's completion webhook (``callback_url``)."""

    at: datetime
    """When the attempt was made."""
    status: int | None = None
    """The receiver's HTTP status code; ``None`` when no answer came (refused, timed out)."""
    error: str | None = None
    """Why it did not count as delivered, in words; ``None`` when it did."""
    delivered: bool = False
    """True for a 2xx answer: no more attempts follow."""
    last: bool = False
    """True when no more attempts follow (delivered, or retries given up)."""


class JobStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one job, as a broker reports it."""

    id: str
    """The job id."""
    task: str
    """The task name (empty when an undecodable message had none)."""
    queue: str
    """The queue the job waits or ran in."""
    state: JobState
    """Where the job is in its life."""
    progress: float = 0.0
    """0..1 as last reported by the task (1.0 once succeeded)."""
    message: str | None = None
    """The task's last progress message."""
    attempts: int = 0
    """Times the job was handed to a worker, counting runs lost with a dead worker."""
    priority: int = 0
    """Higher runs first within a queue."""
    result: Any = None
    """The JSON result once succeeded; ``Job.result()`` turns it back into the return type."""
    error: JobError | None = None
    """The last attempt's error, if it failed."""
    errors: list[JobError] = []
    """Every failed attempt's error, oldest first (the dead-letter history)."""
    created_at: datetime | None = None
    """When it was enqueued."""
    eta: datetime | None = None
    """When it may (or may next) run, for scheduled and retrying jobs."""
    started_at: datetime | None = None
    """When the latest attempt started."""
    finished_at: datetime | None = None
    """When it reached a terminal state."""
    cancel_requested: bool = False
    """A cancel was asked for while it ran; the worker is stopping it."""
    webhooks: list[WebhookAttempt] = []
    """Delivery attempts of the completion webhook (jobs enqueued with a ``callback_url``)."""


class Job(Generic[R]):
    """A handle on an enqueued job; typed by the task's return type."""

    __slots__ = ("_app", "_convert", "id")

    def __init__(self, app: App, job_id: str, convert: Callable[[Any], R] | None = None) -> None:
        self._app = app
        self._convert = convert
        self.id = job_id

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- asyncio flavour ----------------------------------------------------------------
    async def astatus(self) -> JobStatus:
        """The job's current status; raise :class:`JobNotFound` if there is none."""
        status = await (await self._app.abroker()).status(self.id)
        if status is None:
            raise JobNotFound(self.id)
        return status

    async def aresult(self, timeout: float | None = None) -> R:
        """Wait until the job ends and return its result.

        Raise :class:`JobFailed` (or :class:`JobCancelled`) if it did not succeed, and
        :class:`ResultTimeout` if it has not ended within ``timeout`` seconds. Waiting is
        pushed by the broker where it can, and polls with backoff where it cannot.
        """
        broker = await self._app.abroker()
        status = await broker.wait(self.id, timeout)
        if status is None:
            return await self._missing_or_late(timeout)
        return self._outcome(status)

    async def acancel(self) -> JobState:
        """Ask for cancellation; return the state it left the job in.

        A waiting job is cancelled at once; a running one is asked to stop (``running`` is
        returned and the worker ends it in ``cancelled``); an ended one is left as it is.
        """
        broker = await self._app.abroker()
        state = await broker.cancel(self.id)
        if state is None:
            raise JobNotFound(self.id)
        if state is JobState.CANCELLED and (
            self._app.job_events or any(t.events for t in self._app.tasks.values())
        ):
            await self._announce_cancel(broker)
        return state

    async def _announce_cancel(self, broker: Broker) -> None:
        """``dromos.job.cancelled`` for a job cancelled before it ran (a worker announces the
        end of a running one)."""
        from dromos.events.lifecycle import job_event

        status = await broker.status(self.id)
        task = self._app.tasks.get(status.task) if status is not None else None
        if status is None or not (task.events if task is not None else self._app.job_events):
            return
        await broker.publish([job_event(
            self._app.event_source, "cancelled", job_id=self.id, task=status.task,
            queue=status.queue, attempt=status.attempts,
        )])  # fmt: skip

    # -- blocking flavour ---------------------------------------------------------------
    def status(self) -> JobStatus:
        """Blocking twin of :meth:`astatus`."""
        return self._app.portal.call(self.astatus)

    def result(self, timeout: float | None = None) -> R:
        """Blocking twin of :meth:`aresult`; a ``timeout`` is strongly advised."""
        refuse_blocking_wait("job.result()", "await job.aresult()")
        status = self._app._wait_blocking(self.id, timeout)
        if status is False:  # not served in this thread
            return self._app.portal.call(self.aresult, timeout)
        if status is None:
            return self._app.portal.call(self._missing_or_late, timeout)
        return self._outcome(status)

    async def _missing_or_late(self, timeout: float | None) -> R:
        """After a wait came back empty: the job's outcome if it ended just now, else
        :class:`JobNotFound` or :class:`ResultTimeout`."""
        broker = await self._app.abroker()
        status = await broker.status(self.id)
        if status is None:
            raise JobNotFound(self.id)
        if status.state.terminal:
            return self._outcome(status)
        raise ResultTimeout(self.id, timeout if timeout is not None else 0.0)

    def cancel(self) -> JobState:
        """Blocking twin of :meth:`acancel`."""
        return self._app.portal.call(self.acancel)

    def _outcome(self, status: JobStatus) -> R:
        if status.state is JobState.SUCCEEDED:
            return self._convert(status.result) if self._convert else status.result
        if status.state is JobState.CANCELLED:
            raise JobCancelled(status)
        raise JobFailed(status)
