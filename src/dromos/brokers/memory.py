"""``memory://``: the executable reference of the broker contract, for unit tests.

Everything lives in this process's memory behind one lock: nothing survives the process, and
other processes cannot see it. Its value is that it is small and obviously right, so the
conformance suite can hold every other backend to what it does.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dromos.batch import BatchStatus, summary_json
from dromos.brokers._notify import Notifier
from dromos.brokers.base import (
    BatchRecord,
    Broker,
    BrokerOptions,
    Delivery,
    EnqueueRequest,
    Gone,
    HeartbeatReply,
    Lease,
    Missing,
    Outcome,
    ProgressUpdate,
    QueueStats,
    Recorded,
    RelayBatch,
    RelayJob,
    WebhookDue,
    dependencies,
    dependency_error,
    due_at,
    fill_summary,
    job_status,
    shown,
    stored_eta,
    waiting_message,
)
from dromos.brokers.memory_events import MemoryEventBus
from dromos.brokers.memory_parking import MemoryParking
from dromos.errors import DependencyNotFound
from dromos.job import PENDING_STATES, JobError, JobState, JobStatus, WebhookAttempt
from dromos.rate import next_start

__all__ = ["MemoryBroker"]

_S = JobState


@dataclass(slots=True)
class _Row:
    """One job, with the same columns the SQL backends keep."""

    seq: int
    id: str
    task: str
    queue: str
    priority: int
    payload: bytes
    state: JobState
    eta: float | None
    created_at: float
    idempotency_key: str | None = None
    idempotency_until: float = 0.0
    attempt: int = 0
    failures: int = 0
    recoveries: int = 0
    lease_until: float | None = None
    progress: float = 0.0
    message: str | None = None
    result: bytes | None = None
    errors: list[JobError] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    cancel_requested: bool = False
    callback_url: str | None = None
    webhooks: list[WebhookAttempt] = field(default_factory=list)
    hook_due: float | None = None  # the outbox: when its webhook delivery is due next
    batch_id: str | None = None
    batch_counted: bool = False  # its first end was counted in its batch (a replay's is not)
    waiting: int = 0  # dependencies not ended yet; > 0 only while it is scheduled for them

    def to_status(self) -> JobStatus:
        return job_status(
            job_id=self.id, task=self.task, queue=self.queue, state=self.state,
            progress=self.progress, message=self.message, attempts=self.attempt,
            priority=self.priority, result=self.result, errors=list(self.errors),
            created_at=self.created_at, eta=self.eta, started_at=self.started_at,
            finished_at=self.finished_at, cancel_requested=self.cancel_requested,
            webhooks=list(self.webhooks),
        )  # fmt: skip


@dataclass(slots=True)
class _Batch:
    """One batch: its counts, and the callback to insert when ``remaining`` reaches zero."""

    record: BatchRecord
    job_ids: list[str]
    remaining: int
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    finished_at: float | None = None

    def to_status(self) -> BatchStatus:
        callback = self.record.callback
        return BatchStatus(
            id=self.record.id, total=self.record.total, succeeded=self.succeeded,
            failed=self.failed, cancelled=self.cancelled,
            callback_id=None if callback is None else callback.message.id,
            finished_at=_ts(self.finished_at),
        )  # fmt: skip


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


class MemoryBroker(MemoryEventBus, MemoryParking, Broker):
    """In-process broker: a dict of rows, a heap per queue, one lock."""

    schemes = ("memory",)

    def __init__(self, options: BrokerOptions | None = None) -> None:
        super().__init__(options)
        self._lock = threading.Lock()
        self._rows: dict[str, _Row] = {}
        self._ready: dict[str, list[tuple[int, int, str]]] = {}  # queue -> (-prio, seq, id)
        self._delayed: list[tuple[float, int, str]] = []  # (eta, seq, id)
        self._idem: dict[tuple[str, str], str] = {}  # (queue, idempotency key) -> job id
        self._batches: dict[str, _Batch] = {}
        # dependency id -> the dependents enqueued while it had not ended (see _release)
        self._dependents: dict[str, list[str]] = {}
        self._seq = 0
        self._work = Notifier()  # keyed by queue
        self._done = Notifier()  # keyed by job id
        self._init_bus()
        self._init_parking()
        self._leases: dict[str, tuple[str, float, float]] = {}  # name -> holder, until, renewed
        # rate-limit key -> its period, and its starts oldest first
        self._starts: dict[str, tuple[float, list[float]]] = {}
        # Relay mode: ready job id -> until when it counts as sent (inf: published; absent:
        # not sent). Every path that makes a job ready goes through _place, which clears it.
        self._sent: dict[str, float] = {}

    # -- producing ------------------------------------------------------------------------
    async def enqueue(self, requests: Sequence[EnqueueRequest]) -> list[str]:
        now = time.time()
        with self._lock:
            self._check_dependencies(requests)
            ids = [self._insert(req, now) for req in requests]
        self._work.notify({r.message.queue for r in requests})
        return ids

    def _check_dependencies(self, requests: Sequence[EnqueueRequest]) -> None:
        """Refuse the call (before anything is stored) if a job names an unknown dependency."""
        for req in requests:
            for dep in dependencies(req.message):
                if dep not in self._rows:
                    raise DependencyNotFound(dep)

    def _insert(
        self, req: EnqueueRequest, now: float, batch_id: str | None = None, payload: bytes = b""
    ) -> str:
        """Store one job (caller holds the lock); return its id, or the existing job's for a
        known idempotency key."""
        msg = req.message
        key = msg.headers.get("idempotency_key")
        if key is not None:
            existing = self._rows.get(self._idem.get((msg.queue, key), ""))
            if existing is not None and existing.idempotency_until > now:
                return existing.id
        self._seq += 1
        eta = stored_eta(now, req)
        row = _Row(
            seq=self._seq,
            id=msg.id,
            task=msg.task,
            queue=msg.queue,
            priority=msg.priority,
            payload=payload or req.payload,
            state=_S.SCHEDULED if eta is not None and eta > now else _S.QUEUED,
            eta=eta,
            created_at=msg.created_at.timestamp(),
            callback_url=msg.headers.get("callback_url"),
            batch_id=batch_id,
        )
        if key is not None:
            row.idempotency_key = key
            row.idempotency_until = now + req.idempotency_window
            self._idem[(msg.queue, key)] = row.id
        self._rows[row.id] = row
        deps = dependencies(msg)
        if deps:
            self._wait_for(row, deps, now)
        else:
            self._place(row)
        return row.id

    def _wait_for(self, row: _Row, deps: list[str], now: float) -> None:
        """Place a new dependent: ended at once if a dependency failed or was cancelled,
        waiting for the ones not ended yet, else as any job (caller holds the lock)."""
        pending = []
        for dep_id in deps:
            dep = self._rows[dep_id]
            if dep.state in (_S.FAILED, _S.CANCELLED):
                self._end_for(row, dep, now)
                return
            if dep.state is not _S.SUCCEEDED:
                pending.append(dep_id)
        if not pending:
            self._place(row)
            return
        row.state, row.eta = _S.SCHEDULED, None
        row.waiting, row.message = len(pending), waiting_message(len(pending))
        for dep_id in pending:
            self._dependents.setdefault(dep_id, []).append(row.id)

    async def enqueue_batch(
        self, batch: BatchRecord, requests: Sequence[EnqueueRequest]
    ) -> list[str]:
        now = time.time()
        with self._lock:
            self._check_dependencies(requests)
            ids = [r.message.id for r in requests]
            self._batches[batch.id] = _Batch(batch, ids, remaining=batch.total)
            for req in requests:
                self._insert(req, now, batch.id)
        self._work.notify({r.message.queue for r in requests})
        return ids

    async def batch_status(self, batch_id: str) -> BatchStatus | None:
        with self._lock:
            found = self._batches.get(batch_id)
            return None if found is None else found.to_status()

    async def batch_jobs(self, batch_id: str) -> list[str] | None:
        with self._lock:
            found = self._batches.get(batch_id)
            return None if found is None else list(found.job_ids)

    def _place(self, row: _Row) -> None:
        """Put a waiting row where claim will find it (caller holds the lock)."""
        if row.state is _S.QUEUED:
            self._sent.pop(row.id, None)  # ready anew: the relay publishes it
            heapq.heappush(self._ready.setdefault(row.queue, []), (-row.priority, row.seq, row.id))
        else:
            assert row.eta is not None
            heapq.heappush(self._delayed, (row.eta, row.seq, row.id))

    # -- consuming ------------------------------------------------------------------------
    async def claim(
        self, queues: Sequence[str], limit: int, lease: float, worker: str = ""
    ) -> list[Delivery]:
        now = time.time()
        out: list[Delivery] = []
        with self._lock:
            self._recover(now)
            self._promote(now)
            while len(out) < limit:
                best: tuple[int, int, str] | None = None
                best_queue = ""
                for q in queues:
                    heap = self._ready.get(q)
                    while heap and self._rows.get(heap[0][2]) is None:
                        heapq.heappop(heap)  # purged
                    if heap and (best is None or heap[0] < best):
                        best, best_queue = heap[0], q
                if best is None:
                    break
                heapq.heappop(self._ready[best_queue])
                row = self._rows[best[2]]
                if row.state is not _S.QUEUED or row.seq != best[1]:
                    continue  # stale heap entry (cancelled, or re-placed)
                row.state = _S.RUNNING
                row.attempt += 1
                row.lease_until = now + lease
                row.started_at = now
                out.append(Delivery(row.id, row.attempt, row.failures, row.payload))
        return out

    def _promote(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, seq, job_id = heapq.heappop(self._delayed)
            row = self._rows.get(job_id)
            if row is not None and row.seq == seq and row.state in (_S.SCHEDULED, _S.RETRYING):
                row.state = _S.QUEUED
                self._place(row)

    def _recover(self, now: float) -> None:
        for row in list(self._rows.values()):  # a batch's end may insert its callback
            if row.state is _S.RUNNING and row.lease_until is not None and row.lease_until < now:
                row.recoveries += 1
                row.errors.append(
                    JobError(
                        type="WorkerLost",
                        message="the worker holding this job stopped renewing its lease",
                        attempt=row.attempt,
                    )
                )
                row.lease_until = None
                if row.recoveries > self.options.max_recoveries:
                    self._end(row, _S.FAILED, now)
                    row.errors.append(
                        JobError(
                            type="Poison",
                            message=f"the job's worker was lost {row.recoveries} times",
                            attempt=row.attempt,
                        )
                    )
                else:
                    row.state = _S.QUEUED
                    self._place(row)

    def _end(self, row: _Row, state: JobState, now: float) -> None:
        row.state = state
        row.finished_at = now
        row.lease_until = None
        if row.waiting:  # a dependent that ended waiting (cancelled, or its dependency did)
            row.waiting, row.message = 0, None
        ttl = self.options.dead_letter_ttl if state is _S.FAILED else self.options.result_ttl
        row.expires_at = now + ttl
        if row.callback_url is not None:  # the outbox entry, in the same step as the end
            row.hook_due = now
        if row.batch_id is not None and not row.batch_counted:
            self._count(row, state, now)
        self._done.notify((row.id,))
        self._release(row, state, now)

    def _release(self, row: _Row, state: JobState, now: float) -> None:
        """The dependents waiting for ``row``, which just ended ``state``: one dependency
        fewer (the last one queues the dependent), or ended as it did, down their chain."""
        for dependent_id in self._dependents.pop(row.id, ()):
            dependent = self._rows.get(dependent_id)
            if dependent is None or dependent.state is not _S.SCHEDULED or not dependent.waiting:
                continue  # ended meanwhile (cancelled, or another dependency failed)
            if state is not _S.SUCCEEDED:
                self._end_for(dependent, row, now)
                continue
            dependent.waiting -= 1
            dependent.message = waiting_message(dependent.waiting) if dependent.waiting else None
            if not dependent.waiting:
                dependent.state = _S.QUEUED
                self._place(dependent)
                self._work.notify((dependent.queue,))

    def _end_for(self, row: _Row, dependency: _Row, now: float) -> None:
        """End ``row`` as its ``dependency`` ended (failed or cancelled), saying why."""
        row.errors.append(dependency_error(dependency.id, dependency.state, row.attempt))
        self._end(row, dependency.state, now)

    def _count(self, row: _Row, state: JobState, now: float) -> None:
        """Count the first end of a batch's job; the last one queues the callback."""
        row.batch_counted = True
        batch = self._batches.get(row.batch_id or "")
        if batch is None:
            return
        if state is _S.SUCCEEDED:
            batch.succeeded += 1
        elif state is _S.FAILED:
            batch.failed += 1
        else:
            batch.cancelled += 1
        batch.remaining -= 1
        callback = batch.record.callback
        if batch.remaining != 0:
            return
        batch.finished_at = now
        if callback is not None:
            summary = summary_json(
                batch.record.id, batch.record.total, batch.succeeded, batch.failed,
                batch.cancelled,
            )  # fmt: skip
            self._insert(callback, now, payload=fill_summary(callback.payload, summary))
            self._rows[callback.message.id].created_at = now
            self._work.notify((callback.message.queue,))

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        with self._work.listen(queues) as listener:
            with self._lock:
                # Work enqueued between the caller's empty claim and this wait sent its
                # wake-up to nobody: look before sleeping, or it would wait the whole timeout.
                if any(self._has_ready(q) for q in queues):
                    return
                soon = self._delayed[0][0] - time.time() if self._delayed else timeout
            await listener.wait(max(0.0, min(timeout, soon)))

    def _has_ready(self, queue: str) -> bool:
        """True if ``queue`` has a claimable job; drops stale heap tops (caller holds the lock)."""
        heap = self._ready.get(queue)
        while heap:
            row = self._rows.get(heap[0][2])
            if row is not None and row.state is _S.QUEUED and row.seq == heap[0][1]:
                return True
            heapq.heappop(heap)
        return False

    def _held(self, job_id: str, attempt: int) -> _Row | None:
        row = self._rows.get(job_id)
        if row is None or row.state is not _S.RUNNING or row.attempt != attempt:
            return None
        return row

    async def settle(self, outcomes: Sequence[Outcome]) -> int:
        now = time.time()
        applied = 0
        retried: set[str] = set()  # idle claimers re-read the next eta
        with self._lock:
            for out in outcomes:
                row = self._held(out.job_id, out.attempt)
                if row is None:
                    continue
                applied += 1
                if out.error is not None:
                    row.errors.append(out.error)
                if out.state is _S.SUCCEEDED:
                    row.result = out.result
                    row.progress = 1.0
                    self._end(row, _S.SUCCEEDED, now)
                elif out.state is _S.RETRYING:
                    row.failures += 1
                    row.state = _S.RETRYING
                    row.lease_until = None
                    row.eta = due_at(now, out.eta, out.delay)
                    self._seq += 1
                    row.seq = self._seq
                    heapq.heappush(self._delayed, (row.eta, row.seq, row.id))
                    retried.add(row.queue)
                else:
                    if out.state is _S.FAILED:
                        row.failures += 1
                    self._end(row, out.state, now)
        self._work.notify(retried)
        return applied

    async def extend(self, leases: Sequence[Lease], lease: float) -> HeartbeatReply:
        until = time.time() + lease
        lost: set[str] = set()
        cancel: set[str] = set()
        with self._lock:
            for held in leases:
                row = self._held(held.job_id, held.attempt)
                if row is None:
                    lost.add(held.job_id)
                    continue
                row.lease_until = until
                if row.cancel_requested:
                    cancel.add(row.id)
        return HeartbeatReply(frozenset(lost), frozenset(cancel))

    async def release(
        self, leases: Sequence[Lease], eta: float | None = None, *, delay: float | None = None
    ) -> None:
        if delay is not None:
            eta = time.time() + delay
        woken: set[str] = set()
        with self._lock:
            for held in leases:
                row = self._held(held.job_id, held.attempt)
                if row is None:
                    continue
                row.state = _S.QUEUED if eta is None else _S.SCHEDULED
                row.eta = row.eta if eta is None else eta
                row.lease_until = None
                self._place(row)
                woken.add(row.queue)
        self._work.notify(woken)

    async def progress(self, updates: Sequence[ProgressUpdate]) -> None:
        with self._lock:
            for upd in updates:
                row = self._held(upd.job_id, upd.attempt)
                if row is not None:
                    row.progress = upd.progress
                    row.message = upd.message

    # -- status and control ---------------------------------------------------------------
    async def status(self, job_id: str) -> JobStatus | None:
        with self._lock:
            row = self._rows.get(job_id)
            return None if row is None else row.to_status()

    async def wait(self, job_id: str, timeout: float | None) -> JobStatus | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done.listen((job_id,)) as listener:  # before the check: no lost wake-up
            while True:
                status = await self.status(job_id)
                if status is None:
                    return None
                if status.state.terminal:
                    return status
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                await listener.wait(left)

    async def cancel(self, job_id: str) -> JobState | None:
        now = time.time()
        with self._lock:
            row = self._rows.get(job_id)
            if row is None:
                return None
            if row.state in PENDING_STATES:
                self._end(row, _S.CANCELLED, now)
            elif row.state is _S.RUNNING:
                row.cancel_requested = True
            return row.state

    async def jobs(
        self,
        *,
        state: JobState | None = None,
        task: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[JobStatus]:
        with self._lock:
            rows = sorted(self._rows.values(), key=lambda r: r.id, reverse=True)
            out = []
            for row in rows:
                if before is not None and row.id >= before:
                    continue
                if (task is not None and row.task != task) or (
                    queue is not None and row.queue != queue
                ):
                    continue
                status = row.to_status()  # its state as shown: an eta passed reads queued
                if state is not None and status.state is not state:
                    continue
                out.append(status)
                if len(out) >= limit:
                    break
            return out

    async def queues(self) -> list[QueueStats]:
        counts: dict[str, dict[str, int]] = {}
        with self._lock:
            now = time.time()
            for row in self._rows.values():
                per = counts.setdefault(row.queue, {})
                state = shown(row.state, row.eta, now).value  # as its status shows it
                per[state] = per.get(state, 0) + 1
        return [QueueStats(q, c) for q, c in sorted(counts.items())]

    async def replay(self, job_ids: Sequence[str] | None = None) -> list[str]:
        moved: list[str] = []
        with self._lock:
            rows: Any = (
                self._rows.values()
                if job_ids is None
                else [r for i in job_ids if (r := self._rows.get(i)) is not None]
            )
            for row in list(rows):
                if row.state is not _S.FAILED:
                    continue
                row.state = _S.QUEUED
                row.failures = 0
                row.recoveries = 0
                row.finished_at = row.expires_at = None
                row.progress, row.message = 0.0, None
                self._place(row)
                moved.append(row.id)
        self._work.notify({self._rows[i].queue for i in moved})
        return moved

    async def webhooks_due(self, limit: int, lease: float) -> list[WebhookDue]:
        now = time.time()
        with self._lock:
            due = sorted(
                (r for r in self._rows.values() if r.hook_due is not None and r.hook_due <= now),
                key=lambda r: r.hook_due or 0.0,
            )[:limit]
            for row in due:
                row.hook_due = now + lease
            return [
                WebhookDue(r.id, r.callback_url or "", r.finished_at or now, len(r.webhooks))
                for r in due
            ]

    async def webhook_attempted(
        self,
        job_id: str,
        attempt: WebhookAttempt,
        retry_at: float | None,
        *,
        retry_in: float | None = None,
    ) -> None:
        due = None if retry_at is None else due_at(time.time(), retry_at, retry_in)
        with self._lock:
            row = self._rows.get(job_id)
            if row is not None:
                row.webhooks.append(attempt)
                row.hook_due = due

    async def hold_lease(self, name: str, holder: str, ttl: float) -> float | None:
        now = time.time()
        with self._lock:
            current = self._leases.get(name)
            if current is not None and current[0] != holder and current[1] > now:
                return None
            self._leases[name] = (holder, now + ttl, now)
            return 0.0 if current is None else current[2]

    async def drop_lease(self, name: str, holder: str) -> None:
        with self._lock:
            current = self._leases.get(name)
            if current is not None and current[0] == holder:
                self._leases[name] = ("", 0.0, current[2])  # free; when it was held stays

    async def throttle(
        self, key: str, limit: int, period: float, hold: float = float("inf")
    ) -> float:
        now = time.time()
        with self._lock:
            _, known = self._starts.get(key, (period, []))
            starts = [t for t in known if t > now - period]
            at = next_start(now, starts, limit, period)
            if at - now <= hold:
                starts.append(at)
            self._starts[key] = (period, starts)
        return at - now

    # -- relay mode (docs/design/rabbitmq.md §3): the reference implementation ---------------
    async def enqueue_unsent(
        self, requests: Sequence[EnqueueRequest], hold: float
    ) -> list[Recorded]:
        now = time.time()
        out = []
        with self._lock:
            self._check_dependencies(requests)
            for req in requests:
                job_id = self._insert(req, now)
                row = self._rows[job_id]
                inserted = job_id == req.message.id
                if inserted and row.state is _S.QUEUED:
                    self._sent[job_id] = now + hold
                due = row.eta if row.state is _S.SCHEDULED else None
                out.append(Recorded(job_id, inserted and row.state is _S.QUEUED, due))
        return out

    async def mark_sent(self, job_ids: Sequence[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                row = self._rows.get(job_id)
                held = self._sent.get(job_id, math.inf) < math.inf
                if row is not None and row.state is _S.QUEUED and held:  # not readied since
                    self._sent[job_id] = math.inf

    async def relay_due(self, limit: int, hold: float) -> RelayBatch:
        now = time.time()
        with self._lock:
            self._recover(now)
            self._promote(now)
            ready = sorted(
                (r for r in self._rows.values() if r.state is _S.QUEUED),
                key=lambda r: (-r.priority, r.seq),
            )
            jobs: list[RelayJob] = []
            later = [t for t in (self._sent.get(r.id) for r in ready) if t is not None]
            for row in ready:
                if len(jobs) >= limit:
                    break
                if self._sent.get(row.id, 0.0) <= now:
                    self._sent[row.id] = now + hold
                    jobs.append(RelayJob(row.id, row.queue, row.priority, row.payload))
            # The next moment something may become ready: an eta, a lease's end, a hold's end.
            ahead = [t for t in later if now < t < math.inf]
            ahead += [e for e, _, _ in self._delayed]
            ahead += [
                r.lease_until for r in self._rows.values()
                if r.state is _S.RUNNING and r.lease_until is not None
            ]  # fmt: skip
            if jobs:
                ahead.append(now + hold)  # their hold ends: taken again if still not sent
            if len(jobs) >= limit:
                ahead.append(now)  # more to take at once
        return RelayBatch(jobs, min(ahead) if ahead else None, now)

    async def claim_ids(
        self, job_ids: Sequence[str], lease: float, worker: str = ""
    ) -> list[Delivery | Gone | Missing]:
        now = time.time()
        out: list[Delivery | Gone | Missing] = []
        with self._lock:
            self._recover(now)  # a lost lease's job is queued again, or dead (Poison)
            self._promote(now)
            for job_id in job_ids:
                row = self._rows.get(job_id)
                if row is None:
                    out.append(Missing(job_id))
                elif row.state is not _S.QUEUED:
                    out.append(Gone(job_id, row.state))
                else:
                    self._sent.pop(job_id, None)
                    row.state = _S.RUNNING
                    row.attempt += 1
                    row.lease_until = now + lease
                    row.started_at = now
                    out.append(Delivery(row.id, row.attempt, row.failures, row.payload))
        return out

    async def withdraw(self, job_ids: Sequence[str], reason: str) -> None:
        now = time.time()
        with self._lock:
            for job_id in job_ids:
                row = self._rows.get(job_id)
                if row is None or row.state is not _S.QUEUED:
                    continue
                if self._sent.get(job_id) == math.inf:
                    continue  # published after all: it runs
                self._sent.pop(job_id, None)
                row.errors.append(JobError(type="EnqueueFailed", message=reason, attempt=0))
                slot = (row.queue, row.idempotency_key or "")
                if row.idempotency_key and self._idem.get(slot) == row.id:
                    del self._idem[slot]
                self._end(row, _S.CANCELLED, now)

    async def purge(self) -> int:
        now = time.time()
        with self._lock:
            for key, (period, starts) in list(self._starts.items()):
                if starts[-1] <= now - period:  # its window is empty: forget the key
                    del self._starts[key]
            gone = [r for r in self._rows.values() if (r.expires_at or now) < now]
            for row in gone:
                del self._rows[row.id]
                self._dependents.pop(row.id, None)
                slot = (row.queue, row.idempotency_key or "")
                if row.idempotency_key and self._idem.get(slot) == row.id:
                    del self._idem[slot]
            kept = now - self.options.result_ttl  # a batch's record lives as its results do
            for batch_id, batch in list(self._batches.items()):
                if batch.finished_at is not None and batch.finished_at < kept:
                    del self._batches[batch_id]
            for job_id in list(self._sent):  # relay marks of jobs no longer ready
                held = self._rows.get(job_id)
                if held is None or held.state is not _S.QUEUED:
                    del self._sent[job_id]
        return len(gone)
