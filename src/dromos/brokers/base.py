"""The broker contract: the small async interface every backend implements.

The docstrings here are the specification; ``memory.py`` is its executable reference and the
conformance suite in ``tests/backends/`` checks every backend against it. The public API
never branches on the broker.

The model, in one paragraph. A job is inserted by :meth:`Broker.enqueue` (in batches). A
worker :meth:`Broker.claim`\\ s up to N ready jobs at once; each claim increments the job's
``attempt`` and grants a *lease* until a time on the broker's clock. The attempt number is
the *fencing token*: every later write about that run (:meth:`~Broker.settle`,
:meth:`~Broker.progress`, :meth:`~Broker.extend`, :meth:`~Broker.release`) names
``(job_id, attempt)`` and is ignored unless the job is still ``running`` at that attempt, so
a worker that lost its lease can never overwrite the run that replaced it. A live worker
extends its leases; a dead one stops, the lease expires, and the next claim hands the job out
again with ``attempt + 1`` (a *recovery*). Jobs leave the store only after they ended, and
only once their retention time has passed.

Every method may be called from any event loop and any thread's loop (the app calls it from
its blocking portal and from the user's loop); a backend keeps loop-bound resources per loop.
Batch methods take and return sequences so that one round trip serves many jobs.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from dromos.batch import BatchStatus
from dromos.errors import ConfigurationError
from dromos.job import JobError, JobState, JobStatus, WebhookAttempt

if TYPE_CHECKING:
    from dromos.message import Message

__all__ = [
    "DEPENDS_ON_HEADER",
    "SUMMARY_PLACEHOLDER",
    "BatchRecord",
    "Broker",
    "BrokerOptions",
    "Delivery",
    "EnqueueRequest",
    "EventDeadLetter",
    "EventDelivery",
    "EventOutcome",
    "EventRecord",
    "EventsDue",
    "Gone",
    "GroupStats",
    "HeartbeatReply",
    "Lease",
    "Missing",
    "Outcome",
    "Parked",
    "ProgressUpdate",
    "QueueStats",
    "Recorded",
    "RelayBatch",
    "RelayJob",
    "Waited",
    "WebhookDue",
    "dead_letter_from_row",
    "dependencies",
    "dependency_error",
    "due_at",
    "event_seq",
    "fill_summary",
    "job_filters",
    "job_status",
    "shown",
    "shown_state",
    "stored_eta",
    "waiting_message",
    "webhook_attempt_json",
    "webhook_attempts",
]


# What Broker.wait_blocking returns: the ended job's status, None (timed out, or no such
# job), or False (not served in this thread).
Waited = JobStatus | Literal[False] | None


class BrokerOptions(msgspec.Struct, frozen=True):
    """Retention and recovery settings the app hands to its broker."""

    result_ttl: float = 7 * 86400.0
    """Seconds a succeeded or cancelled job (and its result) is kept after it ended."""
    dead_letter_ttl: float = 30 * 86400.0
    """Seconds a dead-lettered job is kept for inspection and replay."""
    max_recoveries: int = 3
    """Lease expiries (worker lost mid-run) tolerated before a job is dead-lettered as poison."""
    event_retention: float = 7 * 86400.0
    """Seconds an event stays on the bus after it was published (a new group that starts from
    the beginning sees this far back; an event left retrying longer is lost)."""
    relay: bool = False
    """Relay mode: the store keeps the jobs of a broker that delivers them itself (RabbitMQ,
    docs/design/rabbitmq.md); its ready jobs carry a "sent" mark for the relay primitives,
    and its own :meth:`Broker.claim` is not used for delivery."""


class EnqueueRequest(msgspec.Struct, frozen=True):
    """One job to insert: its envelope plus what the broker must index."""

    message: Message
    """The envelope (id, task, queue, eta, priority, headers ...)."""
    payload: bytes
    """The envelope already encoded: the broker stores these bytes as they are."""
    idempotency_window: float = 0.0
    """Seconds the ``idempotency_key`` header (if any) keeps naming this job."""
    delay: float | None = None
    """A ``delay=``: the job is due this many seconds after the broker stores it, by the
    broker's clock (:func:`due_at`). It decides over ``message.eta``, which holds the same
    moment by the producer's clock (for the envelope's readers): a producer whose clock is
    off delays its jobs by no more than it asked."""


#: The first argument of a batch's callback as submitted (JSON text, in its envelope): the
#: broker replaces these bytes with the batch's summary (``dromos.batch.summary_json``) in the
#: write that ends the batch's last job.
SUMMARY_PLACEHOLDER = b'"__dromos_batch_summary__"'


class BatchRecord(msgspec.Struct, frozen=True):
    """A batch to create with its jobs (:meth:`Broker.enqueue_batch`)."""

    id: str
    total: int
    """How many jobs the batch has: the count its jobs' ends bring down to zero."""
    callback: EnqueueRequest | None = None
    """The job to insert when the last job ended; its payload holds
    :data:`SUMMARY_PLACEHOLDER` as its first argument."""


class Recorded(msgspec.Struct, frozen=True):
    """One job an ``enqueue_unsent`` stored (or found, for a known idempotency key)."""

    job_id: str
    publish: bool
    """True for a job this call inserted ``queued``: the caller publishes it (it holds it)."""
    next_due: float | None = None
    """The eta of a job stored ``scheduled`` (the relay publishes it then)."""


class RelayJob(msgspec.Struct, frozen=True):
    """A ready job the relay is to publish."""

    job_id: str
    queue: str
    priority: int
    payload: bytes


class RelayBatch(msgspec.Struct, frozen=True):
    """What :meth:`Broker.relay_due` leased to the relay, and when to come back."""

    jobs: list[RelayJob]
    next_due: float | None
    """The store's earliest time ahead at which a job may become ready (an eta, a lease's
    end, a relay hold's end); None for none known."""
    now: float
    """The store's clock when it answered: the relay sleeps ``next_due - now``."""


class Gone(msgspec.Struct, frozen=True):
    """``claim_ids``: the job is not claimable (running under a live lease, not due, waiting
    for dependencies, ended); its message is a duplicate or stale and is dropped."""

    job_id: str
    state: JobState


class Missing(msgspec.Struct, frozen=True):
    """``claim_ids``: the store has no such job (a foreign producer's message, or purged)."""

    job_id: str


def fill_summary(payload: bytes, summary: bytes) -> bytes:
    """The callback's envelope with the summary in place of the placeholder."""
    return payload.replace(SUMMARY_PLACEHOLDER, summary)


#: The header naming a job's dependencies: their ids joined by commas. It is the wire format
#: (a producer without Python writes it too), so the brokers read it from the envelope.
DEPENDS_ON_HEADER = "depends_on"


def dependencies(message: Message) -> list[str]:
    """The ids of the message's ``depends_on`` header, in order, each once ([] for none)."""
    header = message.headers.get(DEPENDS_ON_HEADER)
    if not header:
        return []
    return list(dict.fromkeys(i for part in header.split(",") if (i := part.strip())))


def due_at(now: float, eta: float | None, delay: float | None) -> float:
    """When a retry is due on a broker whose clock says ``now``: ``delay`` seconds on, else
    ``eta``, else now (see :attr:`Outcome.delay`)."""
    if delay is not None:
        return now + delay
    return now if eta is None else eta


def stored_eta(now: float, request: EnqueueRequest) -> float | None:
    """When a job being stored is due, on a broker whose clock says ``now``: as
    :func:`due_at` says, or None (at once) for a job with neither a delay nor an eta."""
    eta = request.message.eta
    if request.delay is None and eta is None:
        return None
    return due_at(now, None if eta is None else eta.timestamp(), request.delay)


def waiting_message(count: int) -> str:
    """The status message of a dependent waiting for ``count`` dependencies (the SQL and Lua
    backends write the same text)."""
    return f"waiting for {count} job(s)"


def dependency_error(dependency: str, state: JobState, attempt: int) -> JobError:
    """Why a dependent ended without running: ``dependency`` ended ``state`` (failed or
    cancelled). The SQL and Lua backends write the same entry."""
    kind = "DependencyFailed" if state is JobState.FAILED else "DependencyCancelled"
    return JobError(type=kind, message=f"dependency {dependency} ended {state}", attempt=attempt)


class Delivery(msgspec.Struct, frozen=True):
    """A claimed job, leased to the claiming worker until ``lease_until``."""

    job_id: str
    """The job's id, known even when the payload cannot be decoded."""
    attempt: int
    """This run's attempt number (1 for the first run): the fencing token."""
    failures: int
    """Failed attempts so far (since the last replay): the retry budget already used."""
    payload: bytes
    """The stored envelope bytes; the worker decodes them (and dead-letters garbage)."""


class Lease(msgspec.Struct, frozen=True):
    """The fencing pair that names one run of one job."""

    job_id: str
    attempt: int


class Outcome(msgspec.Struct, frozen=True):
    """How one run ended, as the worker reports it to :meth:`Broker.settle`.

    ``state`` is one of ``succeeded``, ``retrying`` (then ``eta`` is when to run again),
    ``failed`` (dead-lettered) or ``cancelled``.
    """

    job_id: str
    attempt: int
    state: JobState
    result: bytes | None = None
    """The JSON-encoded result, for ``succeeded``."""
    error: JobError | None = None
    """Why the run failed, for ``retrying`` and ``failed`` (and ``cancelled``, optionally)."""
    eta: float | None = None
    """Unix time of the next attempt, for ``retrying`` (when no ``delay`` is given)."""
    delay: float | None = None
    """Seconds from now to the next attempt, for ``retrying``, counted on the broker's clock:
    what a worker reports, so that a worker whose clock is off moves no retry (RELIABILITY
    #13). Given, it decides, not ``eta``."""


class ProgressUpdate(msgspec.Struct, frozen=True):
    """The latest progress a running task reported (later updates replace earlier ones)."""

    job_id: str
    attempt: int
    progress: float
    message: str | None = None


class HeartbeatReply(msgspec.Struct, frozen=True):
    """What :meth:`Broker.extend` learned about the leases it was given."""

    lost: frozenset[str] = frozenset()
    """Jobs this worker no longer holds (lease expired and re-claimed, or ended elsewhere)."""
    cancel: frozenset[str] = frozenset()
    """Jobs whose cancellation was requested while they ran: stop them."""


class QueueStats(msgspec.Struct, frozen=True):
    """How many jobs one queue holds in each state."""

    queue: str
    counts: dict[str, int] = msgspec.field(default_factory=dict)


class WebhookDue(msgspec.Struct, frozen=True):
    """A completion webhook to attempt now, leased to the deliverer that asked for it."""

    job_id: str
    url: str
    """The job's ``callback_url``."""
    since: float
    """When the job ended (its ``finished_at``): retries stop some time after it."""
    attempts: int
    """Attempts made so far."""


_webhooks = msgspec.json.Decoder(list[WebhookAttempt])
_webhook = msgspec.json.Encoder()


class EventRecord(msgspec.Struct, frozen=True):
    """One event to append to the bus: its topic, its id and its encoded envelope."""

    topic: str
    id: str
    payload: bytes


class EventDelivery(msgspec.Struct, frozen=True):
    """One event leased to a consumer of a group."""

    key: str
    """The event's position on the bus (an SQLite row, a Redis stream id), opaque: what a
    settle names."""
    topic: str
    payload: bytes
    attempt: int
    """Deliveries of this event to this group so far, this one included: the fencing token.
    A replay does not restart it, so that a settle by a holder from before the replay cannot
    pass for the replayed delivery's."""
    tries: int
    """Deliveries since the last replay, this one included (``attempt`` when never replayed):
    the retry budget used, as a job's ``failures`` is."""


class EventOutcome(msgspec.Struct, frozen=True):
    """How a group's handling of one delivered event ended."""

    key: str
    attempt: int
    error: JobError | None = None
    """None: handled (acknowledged). Else why it failed: then ``retry_at`` decides."""
    retry_at: float | None = None
    """For a failure: when to deliver it again; None dead-letters it."""
    retry_in: float | None = None
    """With ``retry_at``: the same as seconds from now on the broker's clock, which decides
    (a worker's clock may be off: see :attr:`Outcome.delay`)."""


class GroupStats(msgspec.Struct, frozen=True):
    """One consumer group, as ``dromos events groups`` shows it."""

    group: str
    patterns: tuple[str, ...]
    lag: int
    """Events published after the group's position (some may not match its patterns)."""
    running: int
    retrying: int
    dead: int


class EventDeadLetter(msgspec.Struct, frozen=True):
    """An event a group gave up on, with every error, kept for replay."""

    group: str
    key: str
    topic: str
    payload: bytes
    attempts: int
    errors: list[JobError]
    failed_at: datetime | None


class Parked(msgspec.Struct, frozen=True):
    """An event a group's consumer gave up on for now, kept by the state store of a broker
    that carries events itself (RabbitMQ, docs/design/rabbitmq.md §9): its message was acked,
    so the store is the only place it lives until the relay republishes it (or forever, dead,
    until a replay or the group's end)."""

    key: str
    """The event's key for the group (its id): unique per group, a key parked again replaces
    its entry."""
    topic: str
    payload: bytes
    attempt: int
    """Deliveries to the group so far (the next one is ``attempt + 1``)."""
    errors: list[JobError]
    """Every failed delivery's error, oldest first."""
    due: float | None
    """When to deliver it again (retrying); None: dead-lettered."""
    due_in: float | None = None
    """With ``due``: the same as seconds from now on the store's clock, which decides."""
    base: int = 0
    """Its ``attempt`` when it was last replayed (0: never): the deliveries since, its retry
    budget used, are ``attempt - base``."""


class EventsDue(msgspec.Struct, frozen=True):
    """What :meth:`Broker.events_due` leased to the relay, and when to come back."""

    entries: list[tuple[str, Parked]]
    """(group, entry) pairs, oldest due first."""
    next_due: float | None
    """The earliest ``due`` still ahead (a retry's time, a lease's end); None for none."""
    now: float
    """The store's clock when it answered."""


def event_seq(key: str) -> int | None:
    """The sequence number an event key names on a bus numbered by one (memory, SQLite,
    PostgreSQL); None for a key that is not one, which names no event."""
    return int(key) if key.isdigit() else None


_WAITING = "state IN ('scheduled', 'retrying')"


def shown(state: JobState, eta: float | None, now: float) -> JobState:
    """The state a job's status shows: a delayed or retrying job whose eta passed is
    ``queued`` (the next claim readies it). A dependent waiting for its dependencies is
    scheduled without an eta: it stays so. :func:`shown_state` is the same in SQL."""
    if state in (JobState.SCHEDULED, JobState.RETRYING) and eta is not None and eta <= now:
        return JobState.QUEUED
    return state


def shown_state(mark: str) -> str:
    """SQL for the state a job's status shows (:func:`status_of`), given ``now`` as the
    parameter ``mark``: a delayed or retrying job whose eta passed is ``queued``. For counts
    per state that agree with the statuses and with :func:`job_filters`."""
    return f"CASE WHEN {_WAITING} AND eta <= {mark} THEN 'queued' ELSE state END"


def job_filters(
    mark: str,
    state: JobState | None,
    task: str | None,
    queue: str | None,
    before: str | None,
    now: float,
) -> tuple[str, list[Any]]:
    """The ``WHERE`` clause (or "") and its parameters of :meth:`Broker.jobs` for an SQL
    backend whose driver writes parameters as ``mark`` (``?``, ``%s``).

    ``state`` filters by the state a job's status shows (:func:`status_of`): a delayed or
    retrying job whose eta passed (``now``) is listed as ``queued``, not under its stored
    state, so that every job listed under a state says that state.
    """
    where: list[str] = []
    params: list[Any] = []
    waiting = _WAITING
    if state is JobState.QUEUED:
        where.append(f"(state = 'queued' OR ({waiting} AND eta <= {mark}))")
        params.append(now)
    elif state in (JobState.SCHEDULED, JobState.RETRYING):
        where.append(f"state = {mark} AND (eta IS NULL OR eta > {mark})")
        params += [str(state), now]
    elif state is not None:
        where.append(f"state = {mark}")
        params.append(str(state))
    for column, value in (("task", task), ("queue", queue)):
        if value is not None:
            where.append(f"{column} = {mark}")
            params.append(value)
    if before is not None:
        where.append(f"id < {mark}")
        params.append(before)
    return (" WHERE " + " AND ".join(where) if where else ""), params


_event_errors = msgspec.json.Decoder(list[JobError])


def dead_letter_from_row(group: str, row: Sequence[Any]) -> EventDeadLetter:
    """A dead letter from the row an SQL bus keeps: ``(seq, topic, payload, attempt,
    errors as a JSON array or NULL, failed_at as Unix seconds or NULL)``."""
    seq, topic, payload, attempt, errors, failed = row
    return EventDeadLetter(
        group=group, key=str(seq), topic=topic, payload=bytes(payload), attempts=attempt,
        errors=_event_errors.decode(errors) if errors else [],
        failed_at=None if failed is None else datetime.fromtimestamp(failed, UTC),
    )  # fmt: skip


def webhook_attempts(stored: bytes | str | None) -> list[WebhookAttempt]:
    """The attempts as brokers store them: a JSON array, appended to as text."""
    return _webhooks.decode(stored) if stored else []


def webhook_attempt_json(attempt: WebhookAttempt) -> str:
    """One attempt as the JSON text a broker appends to its stored array."""
    return _webhook.encode(attempt).decode()


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def job_status(
    *,
    job_id: str,
    task: str,
    queue: str,
    state: JobState,
    progress: float,
    message: str | None,
    attempts: int,
    priority: int,
    result: bytes | None,
    errors: list[JobError],
    created_at: float | None,
    eta: float | None,
    started_at: float | None,
    finished_at: float | None,
    cancel_requested: bool,
    webhooks: list[WebhookAttempt] | bytes | str | None = None,
) -> JobStatus:
    """A job's status from what a broker stores (times in Unix seconds, result as JSON bytes).

    One place for what every broker derives, so that they report alike: a delayed or retrying
    job whose time has come reads ``queued`` (the next claim readies it) and shows no eta;
    ``error`` is the last entry of the history unless the job succeeded.
    """
    state = shown(state, eta, time.time())
    decoded: Any = None if result is None else msgspec.json.decode(result)
    return JobStatus(
        id=job_id,
        task=task,
        queue=queue,
        state=state,
        progress=progress,
        message=message,
        attempts=attempts,
        priority=priority,
        result=decoded,
        error=errors[-1] if errors and state is not JobState.SUCCEEDED else None,
        errors=errors,
        created_at=_ts(created_at),
        eta=_ts(eta) if state in (JobState.SCHEDULED, JobState.RETRYING) else None,
        started_at=_ts(started_at),
        finished_at=_ts(finished_at),
        cancel_requested=cancel_requested,
        webhooks=webhooks if isinstance(webhooks, list) else webhook_attempts(webhooks),
    )


class Broker(abc.ABC):
    """Where jobs wait, how workers lease them, and where their status and results live.

    Times are Unix seconds. Unless a method says otherwise, an unknown job id is not an
    error: the call does nothing for it.
    """

    #: The URL scheme(s) this backend serves, e.g. ``("sqlite",)``.
    schemes: tuple[str, ...] = ()

    #: A backend that keeps no status (e.g. RabbitMQ) is paired with a result backend; the
    #: ones here keep status and results themselves.
    keeps_status: bool = True

    def __init__(self, options: BrokerOptions | None = None) -> None:
        self.options = options or BrokerOptions()

    # -- life cycle ---------------------------------------------------------------------
    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect and create what the backend needs (tables, scripts). Idempotent."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. The broker may be opened again afterwards."""

    # -- producing ------------------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue(self, requests: Sequence[EnqueueRequest]) -> list[str]:
        """Store jobs durably, all or none, and return their ids in the same order.

        A job whose ``eta`` is in the future is ``scheduled``, otherwise ``queued``. A job
        whose ``idempotency_key`` header names a job of the same queue enqueued within that
        job's window is not stored: the existing job's id is returned in its place, also when
        many callers race with the same key. Keys are scoped to a queue, so that a broker can
        keep a key beside its queue's jobs (one Redis Cluster slot per queue). When this
        returns, the jobs survive a crash of the caller (and, on a durable backend, of the
        broker). All or none holds per queue on a Redis Cluster, whose queues live in
        different slots.

        A job whose ``depends_on`` header names other jobs (see "dependencies" below) waits
        for them; one naming a job the broker does not know refuses the whole call with
        :class:`~dromos.errors.DependencyNotFound`, storing nothing.
        """

    async def enqueue_in(self, connection: Any, requests: Sequence[EnqueueRequest]) -> list[str]:
        """Optional: :meth:`enqueue` inside the caller's own open transaction on
        ``connection`` (no commit): the jobs exist only if the caller commits it (the
        transactional outbox). Only a broker that lives in the caller's database can."""
        raise ConfigurationError(
            f"{type(self).__name__} cannot enqueue inside your transaction (connection=): "
            "that needs the PostgreSQL broker"
        )

    def enqueue_in_blocking(self, connection: Any, requests: Sequence[EnqueueRequest]) -> list[str]:
        """Optional: :meth:`enqueue_in` with the caller's blocking connection, in its thread."""
        raise ConfigurationError(
            f"{type(self).__name__} cannot enqueue inside your transaction (connection=): "
            "that needs the PostgreSQL broker"
        )

    def enqueue_blocking(self, requests: Sequence[EnqueueRequest]) -> list[str] | None:
        """Optional: :meth:`enqueue` done in the calling thread, blocking it; ``None`` if not.

        The blocking API (``task.enqueue()`` from plain code) tries this first and otherwise
        awaits :meth:`enqueue` on its portal. A backend whose client can block cheaply (an
        embedded database) implements it with exactly :meth:`enqueue`'s contract, including
        its in-process wake-ups; it may be called from any thread at once, and returns
        ``None`` (storing nothing) whenever it cannot serve the call, e.g. before
        :meth:`open`. The default always returns ``None``.
        """
        return None

    def wait_blocking(self, job_id: str, timeout: float | None) -> Waited:
        """Optional: :meth:`wait` done in the calling thread, blocking it; ``False`` if not.

        The blocking ``job.result()`` tries this first and otherwise awaits :meth:`wait` on
        its portal. It returns the ended job's status, or ``None`` on timeout or when there is
        no such job (the caller then tells which), and ``False`` whenever it cannot serve
        the call, e.g. before :meth:`open`. The default always returns ``False``.
        """
        return False

    # -- dependencies ---------------------------------------------------------------------
    # A job enqueued with the ``depends_on`` header (ids joined by commas, see
    # :func:`dependencies`) is looked at in the write that stores it: a dependency already
    # failed or cancelled ends it at once (see below); one already succeeded counts as done;
    # when every one succeeded, the job is stored as any other. Otherwise it is stored
    # ``scheduled`` without an eta, its message :func:`waiting_message` (how many are left),
    # and no claim readies it: the write that ends its last unfinished dependency with
    # ``succeeded`` queues it (and wakes the workers of its queue), exactly once when two
    # dependencies end at the same moment. A dependency that ends ``failed`` (dead-lettered)
    # or ``cancelled`` ends each dependent waiting for it in the same state, in the same
    # write, with the entry :func:`dependency_error`, and so on down a chain of dependents
    # (a dependent reached through two of its dependencies in that write names either);
    # such an end is like any other (counted in its batch, its webhook's outbox entry, its
    # done wake-up). A ``retrying`` dependency has not ended. Cancelling a waiting dependent
    # ends it at once; a dead-lettered dependent replayed runs without looking at its
    # dependencies again. Every dependency must exist when the dependent is enqueued.

    # -- batches --------------------------------------------------------------------------
    # Every job of a batch is counted ONCE, at its first end (succeeded, failed = dead-lettered,
    # cancelled), in the same write, transaction or script that ends it: a settle, the cancel
    # of a waiting job, a claim that dead-letters a poison job, any other terminal write. The
    # write that brings the batch's count to zero also inserts its callback job (queued,
    # waking workers as an enqueue does) with the summary in place of the placeholder. A
    # retried job has not ended; a dead letter replayed and ending again is not counted again.
    # Not abstract: a backend without batches raises NotImplementedError.

    async def enqueue_batch(
        self, batch: BatchRecord, requests: Sequence[EnqueueRequest]
    ) -> list[str]:
        """Store the batch record and its jobs (each with the ``batch_id`` header), all or
        none, and return the jobs' ids in order. The requests carry no idempotency key (the
        app refuses them in a batch: a deduplicated job would not belong to it)."""
        raise NotImplementedError(f"{type(self).__name__} has no batches yet")

    async def batch_status(self, batch_id: str) -> BatchStatus | None:
        """The batch's counts, or ``None`` if the broker has no such batch (its record is
        kept as long as its jobs' results are)."""
        raise NotImplementedError(f"{type(self).__name__} has no batches yet")

    async def batch_jobs(self, batch_id: str) -> list[str] | None:
        """The ids of the batch's jobs in submission order (``app.get_batch``), or ``None``
        if the broker has no such batch."""
        raise NotImplementedError(f"{type(self).__name__} has no batches yet")

    # -- consuming ------------------------------------------------------------------------
    @abc.abstractmethod
    async def claim(
        self, queues: Sequence[str], limit: int, lease: float, worker: str = ""
    ) -> list[Delivery]:
        """Lease up to ``limit`` ready jobs from ``queues`` to this worker.

        Before choosing, due ``scheduled``/``retrying`` jobs become ready, and ``running``
        jobs whose lease expired are recovered: they count a recovery, get a ``WorkerLost``
        entry in their error history, and are handed out again (or dead-lettered as poison
        after ``max_recoveries``). Ready jobs are chosen by priority (higher first) and then in
        enqueue order within a queue; between jobs of equal priority in different queues the
        order is not specified (Redis counts enqueue order per queue, one Cluster slot each).
        Each claimed job becomes ``running`` with ``attempt + 1`` and a lease
        until now + ``lease`` seconds. Never returns a job to two claimers at once. Where a
        retried, released or replayed job stands among the ready jobs of its priority is not
        specified (SQLite keeps its first place; a list-based broker may put it last).
        """

    @abc.abstractmethod
    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a claim on ``queues`` may find work, or after ``timeout`` seconds.

        Spurious returns are allowed; spinning is not: an idle worker must cost next to
        nothing. Backends without a push channel poll something cheap.
        """

    async def stop_claiming(self, queues: Sequence[str], worker: str) -> None:  # noqa: B027
        """``worker`` claims no more from ``queues``: called once when it starts to stop.

        A broker that hands new jobs straight to idle workers (Redis) stops handing them to
        this one here, and releases what it handed that no claim took yet. The default does
        nothing: every job a worker holds came from a claim it made.
        """

    @abc.abstractmethod
    async def settle(self, outcomes: Sequence[Outcome]) -> int:
        """Record how runs ended, fenced by ``(job_id, attempt)``; return how many applied.

        ``succeeded`` stores the result and keeps the job for the result retention time;
        ``retrying`` schedules the next attempt at ``eta`` and counts a failure; ``failed``
        moves the job to the dead-letter list keeping every attempt's error; ``cancelled``
        ends it. An outcome for a run that no longer holds the job is ignored.
        """

    @abc.abstractmethod
    async def extend(self, leases: Sequence[Lease], lease: float) -> HeartbeatReply:
        """Extend the leases still held to now + ``lease`` seconds (the heartbeat).

        Report the jobs this worker lost and the ones whose cancellation was requested.
        """

    @abc.abstractmethod
    async def release(
        self, leases: Sequence[Lease], eta: float | None = None, *, delay: float | None = None
    ) -> None:
        """Hand held jobs back to their queue at once, without counting a failure.

        Used by a worker that shuts down with jobs it will not finish. The job keeps its
        place (priority and enqueue order). With ``eta`` (Unix time) or ``delay`` (seconds
        from now on the broker's clock, which decides when both are given) the jobs wait in
        ``scheduled`` until then instead: a worker defers a job whose turn under a rate limit
        is further off than it will hold a job for.
        """

    @abc.abstractmethod
    async def progress(self, updates: Sequence[ProgressUpdate]) -> None:
        """Store the progress and message of running jobs, fenced by attempt."""

    # -- status and control -------------------------------------------------------------
    @abc.abstractmethod
    async def status(self, job_id: str) -> JobStatus | None:
        """The job's status, or ``None`` if the broker has no such job."""

    @abc.abstractmethod
    async def wait(self, job_id: str, timeout: float | None) -> JobStatus | None:
        """Wait until the job is in a terminal state and return its status.

        Return ``None`` on timeout or when there is no such job. Must not spin: push where
        the broker can, poll with backoff where it cannot.
        """

    @abc.abstractmethod
    async def cancel(self, job_id: str) -> JobState | None:
        """Cancel a job; return the state it is left in, or ``None`` if there is no such job.

        A waiting job (scheduled, queued, retrying) becomes ``cancelled`` at once. A running
        one is flagged: ``running`` is returned and the holder learns of it at its next
        heartbeat. A job in a terminal state is left as it is.
        """

    @abc.abstractmethod
    async def jobs(
        self,
        *,
        state: JobState | None = None,
        task: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[JobStatus]:
        """List jobs, newest first, optionally filtered; ``before`` is a job id cursor."""

    @abc.abstractmethod
    async def queues(self) -> list[QueueStats]:
        """Counts per state for every queue that holds jobs."""

    @abc.abstractmethod
    async def replay(self, job_ids: Sequence[str] | None = None) -> list[str]:
        """Move dead-lettered jobs back to their queue; return the ids that moved.

        ``None`` replays every dead letter. The failure count starts again from zero while
        the error history is kept. Replaying a job twice at once moves it once.
        """

    # -- completion webhooks ----------------------------------------------------------------
    # A job enqueued with a ``callback_url`` header gets an outbox entry in the same write
    # that ends it (succeeded, failed, cancelled; also dead-lettered by a claim): a delivery
    # is stored before anybody attempts it, and a deliverer that dies loses none.

    @abc.abstractmethod
    async def webhooks_due(self, limit: int, lease: float) -> list[WebhookDue]:
        """Lease up to ``limit`` deliveries whose time has come, oldest first.

        A leased delivery is not due again for ``lease`` seconds: if its deliverer dies, it
        comes due again then. Two deliverers never get the same delivery at once (unless a
        lease ran out).
        """

    @abc.abstractmethod
    async def webhook_attempted(
        self,
        job_id: str,
        attempt: WebhookAttempt,
        retry_at: float | None,
        *,
        retry_in: float | None = None,
    ) -> None:
        """Record an attempt on the job; due again at ``retry_at``, or done when ``None``.

        ``retry_in`` (seconds on the broker's clock), when given with ``retry_at``, decides
        instead: a worker's clock may be off (see :attr:`Outcome.delay`)."""

    # -- the event bus ------------------------------------------------------------------
    # One ordered log of events per broker; a consumer *group* has a position on it and
    # patterns (see ``dromos.events.topics``). Every group gets every matching event; the
    # consumers of one group share them: a claim leases events (as jobs are leased), the
    # settle acknowledges, retries later or dead-letters them, fenced by the attempt.
    # Events not matching a group's patterns are passed over by its claims. These methods
    # are not abstract: a backend without a bus yet raises ``NotImplementedError``.

    async def publish(self, events: Sequence[EventRecord]) -> None:
        """Append events to the bus durably, all or none, in this order."""
        raise NotImplementedError(f"{type(self).__name__} has no event bus yet")

    def publish_blocking(self, events: Sequence[EventRecord]) -> bool:
        """Optional: :meth:`publish` done in the calling thread, blocking it, as
        :meth:`enqueue_blocking` is for jobs; False (storing nothing) when it cannot serve
        the call, and the blocking API then awaits :meth:`publish` on its portal."""
        return False

    async def join_group(self, group: str, patterns: Sequence[str], start: str | float) -> None:
        """Create the group if it does not exist, positioned at ``start``: ``"latest"`` (only
        events published from now on), ``"earliest"`` (everything the bus still keeps) or a
        Unix time. An existing group keeps its position and takes ``patterns`` as its own."""
        raise NotImplementedError(f"{type(self).__name__} has no event bus yet")

    async def leave_group(self, group: str) -> None:
        """Delete the group: its position, its events in flight and its dead letters (a
        short-lived consumer such as ``dromos events tail`` leaves nothing behind)."""
        raise NotImplementedError(f"{type(self).__name__} has no event bus yet")

    async def claim_events(self, group: str, limit: int, lease: float) -> list[EventDelivery]:
        """Lease up to ``limit`` events of ``group``: first retries that are due and events
        whose lease ran out (a consumer died; after ``max_recoveries`` such expiries an event
        is dead-lettered as poison), then events after the group's position that match its
        patterns, oldest first. Each delivery increments the event's attempt for the group."""
        raise NotImplementedError(f"{type(self).__name__} has no event bus yet")

    async def settle_events(self, group: str, outcomes: Sequence[EventOutcome]) -> int:
        """Apply outcomes of deliveries still held (same attempt, lease not handed on);
        ignore the others. Return how many applied."""
        raise NotImplementedError(f"{type(self).__name__} has no event bus yet")

    async def settle_and_claim_events(
        self, group: str, outcomes: Sequence[EventOutcome], limit: int, lease: float
    ) -> list[EventDelivery]:
        """:meth:`settle_events` then :meth:`claim_events`: what a consumer does when it has
        finished some events and has room for more. Not abstract: a broker that can do both
        in one round trip (Redis: one script) overrides it. If it raises, the outcomes may or
        may not be applied; settling them again is harmless (a settled delivery is no longer
        held, so its outcome is ignored)."""
        if outcomes:
            await self.settle_events(group, outcomes)
        return await self.claim_events(group, limit, lease)

    async def wait_for_events(self, groups: Sequence[str], timeout: float) -> None:
        """Return when a claim of one of ``groups`` may find events (spurious returns
        allowed), or after ``timeout``; as :meth:`wait_for_work`, an idle consumer costs next
        to nothing. Only ``groups`` count: a backlog of another group (one this consumer
        does not run) must not wake it again and again."""
        raise NotImplementedError(f"{type(self).__name__} has no event bus yet")

    async def event_groups(self) -> list[GroupStats]:
        """Every group with its lag and its events in flight, by name."""
        raise NotImplementedError(f"{type(self).__name__} has no event bus yet")

    async def event_dead_letters(self, group: str, limit: int = 100) -> list[EventDeadLetter]:
        """The group's dead-lettered events, oldest first: in publishing order on a bus that
        keeps its events (memory, SQLite, Redis, PostgreSQL), in the order they were
        dead-lettered on RabbitMQ, whose store keeps only the events it parked."""
        raise NotImplementedError(f"{type(self).__name__} has no event bus yet")

    async def replay_events(self, group: str, keys: Sequence[str] | None = None) -> int:
        """Deliver dead-lettered events of the group again (all when ``keys`` is None), as
        new: attempts start over. Return how many."""
        raise NotImplementedError(f"{type(self).__name__} has no event bus yet")

    # -- named leases -------------------------------------------------------------------
    # One holder at a time for a name, by the broker's clock: the scheduler of periodic tasks
    # runs in every worker and fires only in the one holding "its" lease. Not abstract: a
    # backend without them raises NotImplementedError.

    async def hold_lease(self, name: str, holder: str, ttl: float) -> float | None:
        """Take the lease ``name`` for ``holder`` for ``ttl`` seconds, or renew it if
        ``holder`` has it. None if another holds it; else when the lease was last taken or
        renewed before this call, by anyone (Unix time; 0.0 if never): a new holder learns
        how long nobody held it. Free when never taken, dropped, or when its holder let it
        run out; the time it was last held outlives it."""
        raise NotImplementedError(f"{type(self).__name__} has no named leases yet")

    async def drop_lease(self, name: str, holder: str) -> None:
        """Give the lease up, if ``holder`` holds it (another may take it at once)."""
        raise NotImplementedError(f"{type(self).__name__} has no named leases yet")

    @abc.abstractmethod
    async def purge(self) -> int:
        """Delete ended jobs whose retention time has passed; return how many."""

    # -- rate limits ----------------------------------------------------------------------
    # Task rate limits (dromos.rate) are one sliding-window log per key, kept by the broker so
    # that every worker shares it, and timed by the broker's clock where it has one.

    async def throttle(
        self, key: str, limit: int, period: float, hold: float = float("inf")
    ) -> float:
        """Reserve the next start that keeps ``key`` at ``limit`` starts per ``period``
        seconds (``dromos.rate.next_start``) and record it; return the seconds until it
        (0.0: start now). A reservation is kept whether or not the caller starts. A start
        more than ``hold`` seconds away is not reserved: the wait is only reported."""
        raise NotImplementedError(f"{type(self).__name__} has no rate limits yet")

    # -- relay mode (a store under the RabbitMQ broker, docs/design/rabbitmq.md §3) ------------
    # RabbitMQ carries "job X is ready now"; the store keeps the job. A store in relay mode
    # marks its ready jobs unsent until the relay (or the enqueuer) published them; these
    # primitives are the whole contract between the two. Times are the store's clock.

    async def enqueue_unsent(
        self, requests: Sequence[EnqueueRequest], hold: float
    ) -> list[Recorded]:
        """:meth:`enqueue`'s contract (all or none, idempotency, dependencies); a job this call
        inserted ``queued`` is held for the caller for ``hold`` seconds (the relay leaves it
        alone meanwhile): the caller publishes it, then :meth:`mark_sent`."""
        raise NotImplementedError(f"{type(self).__name__} has no relay mode yet")

    async def mark_sent(self, job_ids: Sequence[str]) -> None:
        """Those jobs still ``queued`` and held (for the enqueuer or a relay pass) were
        published: the relay never takes them again (until they become ready anew: a release,
        a replay, a recovery ...). Others, a job claimed and readied again since included:
        nothing (a late mark must not hide a new readiness)."""
        raise NotImplementedError(f"{type(self).__name__} has no relay mode yet")

    async def relay_due(self, limit: int, hold: float) -> RelayBatch:
        """What a claim does first (due delayed and retrying jobs become ``queued``; lost
        leases are recovered, ``WorkerLost`` or ``Poison``), then lease up to ``limit`` ready
        jobs not sent (nor held) to the caller for ``hold`` seconds, highest priority first,
        then in enqueue order."""
        raise NotImplementedError(f"{type(self).__name__} has no relay mode yet")

    async def claim_ids(
        self, job_ids: Sequence[str], lease: float, worker: str = ""
    ) -> list[Delivery | Gone | Missing]:
        """Claim these jobs, in one write, one answer per id in order: a ``queued`` job (or a
        ``scheduled``/``retrying`` one whose eta passed, or a ``running`` one whose lease
        ended, recovered first) is leased as :meth:`claim` leases (``attempt + 1``: the
        fencing token); anything else is :class:`Gone`; an unknown id :class:`Missing`."""
        raise NotImplementedError(f"{type(self).__name__} has no relay mode yet")

    async def withdraw(self, job_ids: Sequence[str], reason: str) -> None:
        """Undo an enqueue whose publish failed: those jobs still ``queued`` and not sent end
        ``cancelled`` with an ``EnqueueFailed`` error saying ``reason``, and free their
        idempotency keys. Others: nothing."""
        raise NotImplementedError(f"{type(self).__name__} has no relay mode yet")

    # -- event parking (a store under the RabbitMQ broker, docs/design/rabbitmq.md §3, §9) -----
    # RabbitMQ carries the events; a delivered event lives on its group's queue only until it
    # is acked. An event to retry later or dead-lettered is acked once the store holds it
    # ("parked"): the relay republishes the retries when due, a replay the dead ones. Beside
    # them, the registry of what the RabbitMQ broker declared: groups with their patterns
    # (which a claim must know without declaring anything) and names to delete at teardown.
    # Times are the store's clock.

    async def names_add(self, kind: str, names: Mapping[str, Sequence[str]]) -> None:
        """Register ``names`` of ``kind`` (``group``, ``queue``, ``exchange``), each with its
        patterns (a group's; ``()`` for the others). A name registered again takes the new
        patterns: joining again replaces a group's patterns."""
        raise NotImplementedError(f"{type(self).__name__} has no event parking yet")

    async def names_list(self, kind: str) -> dict[str, tuple[str, ...]]:
        """Every registered name of ``kind`` with its patterns, in no particular order."""
        raise NotImplementedError(f"{type(self).__name__} has no event parking yet")

    async def names_drop(self, kind: str, names: Sequence[str]) -> None:
        """Forget these names of ``kind`` (an unknown one is no error)."""
        raise NotImplementedError(f"{type(self).__name__} has no event parking yet")

    async def park_events(self, group: str, parked: Sequence[Parked]) -> None:
        """Store these entries for ``group``, all or none: one with ``due`` is *retrying*
        (the relay takes it once ``due`` passed), one without is *dead*, with ``failed_at`` =
        now. An entry whose key the group has parked already replaces it (a retry that failed
        again, a replayed event dead again)."""
        raise NotImplementedError(f"{type(self).__name__} has no event parking yet")

    async def events_due(self, limit: int, hold: float) -> EventsDue:
        """Lease up to ``limit`` retrying entries (of any group) whose ``due`` passed, oldest
        due first, to the caller: their ``due`` becomes now + ``hold``, so that another relay
        takes them only if this one dies before :meth:`unpark` (they are returned with that
        ``due``). Dead entries never come."""
        raise NotImplementedError(f"{type(self).__name__} has no event parking yet")

    async def unpark(self, group: str, keys: Sequence[str]) -> None:
        """Delete these entries of ``group``, retrying or dead (they were republished);
        unknown keys are no error."""
        raise NotImplementedError(f"{type(self).__name__} has no event parking yet")

    async def parked_counts(self) -> dict[str, tuple[int, int]]:
        """Per group with parked entries: (retrying, dead)."""
        raise NotImplementedError(f"{type(self).__name__} has no event parking yet")

    async def parked_dead(self, group: str, limit: int) -> list[EventDeadLetter]:
        """Up to ``limit`` dead entries of ``group``, oldest ``failed_at`` first (ties by
        key), as dead letters (``attempts`` = the entry's attempt)."""
        raise NotImplementedError(f"{type(self).__name__} has no event parking yet")

    async def drop_group(self, group: str) -> None:
        """Delete the group's registry entry and every entry it parked."""
        raise NotImplementedError(f"{type(self).__name__} has no event parking yet")
