"""Exceptions raised by dromos, and the control signal a task may raise.

Every error dromos raises derives from one base, so ``except dromos.DromosError`` catches
them all; each message says what to do next. The tree is kept shallow::

    DromosError
     ├── ConfigurationError      bad URL, unknown broker, duplicate task name, bad option
     ├── ValidationError         arguments that do not fit a task's signature (nothing queued)
     ├── UnknownTaskError        a task name the app does not know
     ├── JobNotFound             no job with that id (never existed, or its retention ended)
     │    └── DependencyNotFound a job named in depends_on= (nothing was queued)
     ├── JobFailed               the job ended in ``failed``; ``.status`` tells why
     │    └── JobCancelled       the job ended in ``cancelled``
     ├── ResultTimeout           waiting for a result took longer than asked (a TimeoutError)
     └── BrokerError             the broker could not be reached or refused an operation

``Retry`` is not an error: a task raises it to ask for another attempt later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dromos.job import JobStatus

__all__ = [
    "BrokerError",
    "ConfigurationError",
    "DependencyNotFound",
    "DromosError",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "ResultTimeout",
    "Retry",
    "UnknownTaskError",
    "ValidationError",
]


class DromosError(Exception):
    """The base of every exception dromos raises."""


class ConfigurationError(DromosError):
    """The app, a task or a URL is configured in a way that cannot work."""


class ValidationError(DromosError, ValueError):
    """Arguments do not fit the task's signature; the job was not queued.

    ``errors`` lists one entry per problem, each with ``loc`` (the parameter), ``msg`` and
    ``type``, in the shape pydantic reports them, so that an HTTP gateway can answer 422 with
    the same details.
    """

    def __init__(self, task: str, errors: list[dict[str, Any]]) -> None:
        self.task = task
        self.errors = errors
        details = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or '(arguments)'}: {e.get('msg')}"
            for e in errors
        )
        super().__init__(f"invalid arguments for task {task!r}: {details}")


class UnknownTaskError(DromosError, LookupError):
    """No task of that name is registered with the app."""

    def __init__(self, name: str, known: list[str] | None = None) -> None:
        self.name = name
        hint = f"; known tasks: {', '.join(sorted(known))}" if known else ""
        super().__init__(f"unknown task {name!r}: register it with @app.task{hint}")


class JobNotFound(DromosError, LookupError):
    """No job with this id exists (or its retention time has passed)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id!r}: check the id, or it outlived its retention")


class DependencyNotFound(JobNotFound):
    """A job named in ``depends_on=`` is not known to the broker; nothing of the call was
    queued."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.args = (
            f"depends_on names no job {job_id!r} (never enqueued, or its retention ended): "
            "nothing was queued; drop it, or enqueue that job first",
        )


class JobFailed(DromosError):
    """The job ended without a result; ``status.error`` says why."""

    def __init__(self, status: JobStatus) -> None:
        self.status = status
        err = status.error
        why = f"{err.type}: {err.message}" if err else status.state
        super().__init__(
            f"job {status.id} ({status.task}) {status.state} after {status.attempts} "
            f"attempt(s): {why}"
        )


class JobCancelled(JobFailed):
    """The job was cancelled before it produced a result."""


class ResultTimeout(DromosError, TimeoutError):
    """The job did not finish within the time the caller was willing to wait.

    The job itself goes on; wait again or check ``job.status()`` later.
    """

    def __init__(self, job_id: str, timeout: float) -> None:
        self.job_id = job_id
        super().__init__(
            f"job {job_id} did not finish within {timeout:g}s; it is still running or queued"
        )


class BrokerError(DromosError, ConnectionError):
    """The broker could not be reached, or it refused an operation."""


class Retry(Exception):  # a control signal, not an error: hence no "Error" suffix
    """Raised by a task to ask for another attempt after ``delay`` seconds.

    It counts as one of the task's attempts, so a task cannot retry forever; when the
    attempts are exhausted the job is dead-lettered with the reason given here.
    """

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        self.delay = delay
        self.reason = reason
        super().__init__(reason if delay is None else f"{reason} (in {delay:g}s)")
