"""dromos: asynchronous communication for Python services.

Background jobs with status, progress and results; retries, delays, priorities, time limits,
cancellation, idempotency keys and a dead-letter list; an embedded durable broker (SQLite)
by default. Start with :class:`App` and ``@app.task``.
"""

from dromos.app import App
from dromos.batch import Batch
from dromos.brokers.base import Broker
from dromos.chain import Chain, ChainHandle
from dromos.context import JobContext, current_job
from dromos.errors import (
    BrokerError,
    ConfigurationError,
    DromosError,
    JobCancelled,
    JobFailed,
    JobNotFound,
    ResultTimeout,
    Retry,
    UnknownTaskError,
    ValidationError,
)
from dromos.events import Event, Subscriber
from dromos.job import Job, JobError, JobState, JobStatus, WebhookAttempt
from dromos.task import Call, Task
from dromos.worker.runtime import Worker

__version__ = "0.1.0"

__all__ = [
    "App",
    "Batch",
    "Broker",
    "BrokerError",
    "Call",
    "Chain",
    "ChainHandle",
    "ConfigurationError",
    "DromosError",
    "Event",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobError",
    "JobFailed",
    "JobNotFound",
    "JobState",
    "JobStatus",
    "ResultTimeout",
    "Retry",
    "Subscriber",
    "Task",
    "UnknownTaskError",
    "ValidationError",
    "WebhookAttempt",
    "Worker",
    "__version__",
    "current_job",
]
