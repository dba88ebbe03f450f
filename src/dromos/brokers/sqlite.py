"""``sqlite:///path``: the embedded, durable default broker.

One file holds jobs, status and results (schema in ``sqlite_schema.sql``). It is safe for
several worker processes on one machine: SQLite's WAL lets readers run beside the one writer,
and every state change is a short ``BEGIN IMMEDIATE`` transaction, so two claimers can never
take the same row. All calls run on one thread per broker instance that owns the connection,
so the event loop never blocks on disk and the broker can serve any loop.

Durability: ``synchronous=FULL`` by default, so an enqueue that returned survives a power cut;
``?synchronous=normal`` trades that for speed (it still survives a crash of any process).
Leases are timed by the machine's clock, which all processes on one machine share.

Idle workers do not spin: they wait on an in-process wake-up, and otherwise read
``PRAGMA data_version`` (which changes when another connection commits) every few ms, and
wake for the next delayed job's eta or lease expiry.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import msgspec

from dromos._portal import in_portal
from dromos.batch import BatchStatus
from dromos.brokers._notify import Notifier
from dromos.brokers.base import (
    SUMMARY_PLACEHOLDER,
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
    job_filters,
    job_status,
    shown_state,
    stored_eta,
    waiting_message,
    webhook_attempt_json,
)
from dromos.brokers.sqlite_events import SQLiteEventBus
from dromos.brokers.sqlite_parking import SQLiteParking
from dromos.brokers.sqlite_waiting import EAGER, FIRST_POLL, IDLE_POLL, EndWatch
from dromos.errors import BrokerError, ConfigurationError, DependencyNotFound
from dromos.job import JobError, JobState, JobStatus, WebhookAttempt

__all__ = ["SQLiteBroker"]

T = TypeVar("T")
_S = JobState
_CHUNK = 500  # parameters per IN (...) list, well under SQLite's limit
# How often an idle worker looks for other processes' commits: the pickup latency when idle,
# against ~1% of a core spent looking.
_errors_decoder = msgspec.json.Decoder(list[JobError])
_json = msgspec.json.Encoder()

_STATUS_COLUMNS = (
    "id, task, queue, state, progress, message, attempt, priority, result, errors, "
    "created_at, eta, started_at, finished_at, cancel_requested, webhooks"
)
_INSERT = (
    "INSERT OR IGNORE INTO dromos_jobs (id, task, queue, state, priority, eta, payload, "
    "created_at, idempotency_key, idempotency_until, callback_url) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Jobs without an idempotency key go in as multi-row INSERTs of up to _ROWS rows: one statement
# step per row costs more than binding, and the key columns stay NULL without being bound.
_ROWS = 100  # 8 parameters a row: under the 999 of old SQLite builds
_INSERT_PLAIN = (
    "INSERT OR IGNORE INTO dromos_jobs (id, task, queue, state, priority, eta, payload, "
    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_MORE_PLAIN = ", (?, ?, ?, ?, ?, ?, ?, ?)"
# Two parameters, both the error JSON: an outcome without an error appends nothing (a JSON
# null in the history would make the job's status unreadable).
_APPEND_ERROR = (
    "errors = CASE WHEN ? IS NULL THEN errors ELSE "
    "json_insert(coalesce(errors, '[]'), '$[#]', json(?)) END"
)
_HELD = "WHERE id = ? AND attempt = ? AND state = 'running'"
# The webhook outbox entry, written by the same UPDATE that ends a job (one parameter: now).
_HOOK = "hook_due = CASE WHEN callback_url IS NULL THEN NULL ELSE ? END"
_SETTLE = {
    _S.SUCCEEDED: "UPDATE dromos_jobs SET state = 'succeeded', result = ?, progress = 1.0, "
    f"finished_at = ?, expires_at = ?, {_HOOK}, lease_until = NULL {_HELD}",
    _S.RETRYING: "UPDATE dromos_jobs SET state = 'retrying', failures = failures + 1, eta = ?, "
    f"lease_until = NULL, {_APPEND_ERROR} {_HELD}",
    _S.FAILED: "UPDATE dromos_jobs SET state = 'failed', failures = failures + 1, "
    f"finished_at = ?, expires_at = ?, {_HOOK}, lease_until = NULL, {_APPEND_ERROR} {_HELD}",
    _S.CANCELLED: "UPDATE dromos_jobs SET state = 'cancelled', finished_at = ?, expires_at = ?, "
    f"{_HOOK}, lease_until = NULL, errors = CASE WHEN ? IS NULL THEN errors ELSE "
    f"json_insert(coalesce(errors, '[]'), '$[#]', json(?)) END {_HELD}",
}
_LOST_ERROR = (
    "json_object('type', 'WorkerLost', 'message', "
    "'the worker holding this job stopped renewing its lease', 'attempt', attempt)"
)
_RECOVER_POISON = (
    "UPDATE dromos_jobs SET state = 'failed', recoveries = recoveries + 1, lease_until = NULL, "
    "finished_at = :now, expires_at = :now + :ttl, "
    "hook_due = CASE WHEN callback_url IS NULL THEN NULL ELSE :now END, "
    "errors = json_insert(json_insert("
    f"coalesce(errors, '[]'), '$[#]', {_LOST_ERROR}), '$[#]', json_object('type', 'Poison', "
    "'message', 'the job''s worker was lost ' || (recoveries + 1) || ' times', "
    "'attempt', attempt)) "
    "WHERE state = 'running' AND lease_until < :now AND recoveries >= :max"
)
_RECOVER = (
    "UPDATE dromos_jobs SET state = 'queued', recoveries = recoveries + 1, lease_until = NULL, "
    f"errors = json_insert(coalesce(errors, '[]'), '$[#]', {_LOST_ERROR}) "
    "WHERE state = 'running' AND lease_until < :now"
)
_PROMOTE = (
    "UPDATE dromos_jobs SET state = 'queued' WHERE state IN ('scheduled', 'retrying') AND eta <= ?"
)
_CLAIM = (
    "UPDATE dromos_jobs SET state = 'running', attempt = attempt + 1, lease_until = ?, "
    "started_at = ?, worker = ? WHERE seq IN ({pick}) "
    "RETURNING priority, seq, id, attempt, failures, payload"
)
_PICK_ONE = (
    "SELECT seq FROM dromos_jobs WHERE state = 'queued' AND queue = ? "
    "ORDER BY priority DESC, seq LIMIT ?"
)
# A row with an idempotency key, a callback or dependencies: (index, key, row, dependencies).
_Keyed = tuple[int, str | None, tuple[Any, ...], list[str]]


# Columns added since the first schema: files made before get them on open (NULL in old rows).
_ADDED_COLUMNS = (
    ("callback_url", "TEXT"), ("webhooks", "TEXT"), ("hook_due", "REAL"), ("batch_id", "TEXT"),
    ("batch_counted", "INTEGER NOT NULL DEFAULT 0"), ("waiting", "INTEGER NOT NULL DEFAULT 0"),
    ("dependents", "INTEGER NOT NULL DEFAULT 0"), ("sent_until", "REAL"),
)  # fmt: skip
# Relay mode (a store under the RabbitMQ broker, docs/design/rabbitmq.md §3): a ready job's
# sent_until says until when it counts as published (NULL: not sent; 1e308: published). A
# claim clears it, so a job that becomes queued again later (a release, a replay, a retry or
# a recovery: each was claimed first) is unsent for the relay; dependents and batch callbacks
# are inserted unsent. The relay's index exists only in relay mode.
_SENT = 1e308
_RELAY_SCHEMA = (
    "CREATE INDEX IF NOT EXISTS dromos_jobs_unsent ON dromos_jobs (priority DESC, seq) "
    "WHERE state = 'queued' AND sent_until IS NOT 1e308",
)
# 6: the dependency trigger ends a dependent once (dropped, made again); 7: event claims and
# parked events keep the attempt of their last replay (base)
_SCHEMA_VERSION = "7"
# Batches are counted by triggers, so that EVERY write that ends a job (a settle, a cancel, a
# claim dead-lettering a poison job, and any written later) counts it in its own transaction:
# the first terminal state of a batch's job brings its batch down by one, and the update that
# brings a batch to zero inserts its callback job, with the summary in place of the
# placeholder (the same text as dromos.batch.summary_json). Two workers settling the last
# jobs at once are two transactions, serialised by SQLite: only one sees remaining go to 0.
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
_BATCH_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS dromos_jobs_batch_count AFTER UPDATE OF state ON dromos_jobs "
    "WHEN NEW.batch_id IS NOT NULL AND NEW.batch_counted = 0 "
    "AND NEW.state IN ('succeeded', 'failed', 'cancelled') BEGIN "
    "UPDATE dromos_jobs SET batch_counted = 1 WHERE seq = NEW.seq; "
    "UPDATE dromos_batches SET remaining = remaining - 1, "
    "succeeded = succeeded + (NEW.state = 'succeeded'), "
    "failed = failed + (NEW.state = 'failed'), "
    "cancelled = cancelled + (NEW.state = 'cancelled'), "
    f"finished_at = CASE WHEN remaining = 1 THEN coalesce(NEW.finished_at, {_NOW}) "
    "ELSE finished_at END "
    "WHERE id = NEW.batch_id AND remaining > 0; END",
    "CREATE TRIGGER IF NOT EXISTS dromos_batches_complete AFTER UPDATE OF remaining "
    "ON dromos_batches WHEN NEW.remaining = 0 AND OLD.remaining > 0 "
    "AND NEW.callback_id IS NOT NULL BEGIN "
    "INSERT OR IGNORE INTO dromos_jobs (id, task, queue, state, priority, payload, created_at, "
    "callback_url) VALUES (NEW.callback_id, NEW.callback_task, NEW.callback_queue, 'queued', "
    "NEW.callback_priority, CAST(replace(CAST(NEW.callback_payload AS TEXT), "
    f"'{SUMMARY_PLACEHOLDER.decode()}', json_object('batch_id', NEW.id, 'total', NEW.total, "
    "'succeeded', NEW.succeeded, 'failed', NEW.failed, 'cancelled', NEW.cancelled)) AS BLOB), "
    f"coalesce(NEW.finished_at, {_NOW}), NEW.callback_url); END",
)
# Dependencies are released by a trigger for the same reason: whatever write first ends a job
# that dependents wait for (flag ``dependents``) takes one dependency off each of them in its
# own transaction, and the update that takes the last one queues the dependent; a failed or
# cancelled end ends them as it ended (keeping its retention time), saying why in the same
# words as dromos.brokers.base.dependency_error. That update ends jobs in turn, so the
# trigger fires again for their dependents: the connection sets PRAGMA recursive_triggers
# (the batch triggers do not need it and are not affected: they set no state).
_ENDED = "('succeeded', 'failed', 'cancelled')"
_RECHECK = 1.0  # seconds: the longest a waiter goes without reading its job's status
_WAITING_FOR = (
    "state = 'scheduled' AND waiting > 0 AND id IN "
    "(SELECT dependent FROM dromos_dependencies WHERE dependency = NEW.id)"
)


def _while_waiting(*assignments: tuple[str, str]) -> str:
    """``UPDATE dromos_jobs SET`` each column to its value only while the row is still a
    waiting dependent. The statement picks its rows before it updates them, and the trigger
    that each update fires may end a later one first (a dependent reached through two of its
    dependencies, found by the differential test): that one must end once, with one entry."""
    sets = [f"{c} = CASE WHEN state = 'scheduled' THEN {v} ELSE {c} END" for c, v in assignments]
    return "UPDATE dromos_jobs SET " + ", ".join(sets)


_DEPENDENCY_TRIGGER = (
    "CREATE TRIGGER IF NOT EXISTS dromos_jobs_release AFTER UPDATE OF state ON dromos_jobs "
    f"WHEN NEW.dependents AND NEW.state IN {_ENDED} AND OLD.state NOT IN {_ENDED} BEGIN "
    "UPDATE dromos_jobs SET waiting = waiting - 1, "
    "state = CASE WHEN waiting = 1 THEN 'queued' ELSE state END, message = CASE WHEN "
    "waiting = 1 THEN NULL ELSE 'waiting for ' || (waiting - 1) || ' job(s)' END "
    f"WHERE NEW.state = 'succeeded' AND {_WAITING_FOR}; "
    + _while_waiting(
        ("state", "NEW.state"),
        ("waiting", "0"),
        ("message", "NULL"),
        ("finished_at", f"coalesce(NEW.finished_at, {_NOW})"),
        (
            "expires_at",
            f"coalesce(NEW.finished_at, {_NOW}) + coalesce(NEW.expires_at - NEW.finished_at, 0)",
        ),
        ("hook_due", f"CASE WHEN callback_url IS NULL THEN NULL ELSE {_NOW} END"),
        (
            "errors",
            "json_insert(coalesce(errors, '[]'), '$[#]', json_object('type', CASE "
            "NEW.state WHEN 'failed' THEN 'DependencyFailed' ELSE "
            "'DependencyCancelled' END, 'message', 'dependency ' || NEW.id || "
            "' ended ' || NEW.state, 'attempt', attempt))",
        ),
    )
    + f" WHERE NEW.state <> 'succeeded' AND {_WAITING_FOR}; "
    "DELETE FROM dromos_dependencies WHERE dependency = NEW.id; END"
)


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a file made by an earlier version up to this schema (inside the open's write)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(dromos_jobs)")}
    for column, kind in _ADDED_COLUMNS:
        if column not in have:
            db.execute(f"ALTER TABLE dromos_jobs ADD COLUMN {column} {kind}")
    for table in ("dromos_event_claims", "dromos_amqp_parked"):  # schema 7
        if "base" not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN base INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "CREATE INDEX IF NOT EXISTS dromos_jobs_hooks ON dromos_jobs (hook_due) "
        "WHERE hook_due IS NOT NULL"
    )
    db.execute(
        "CREATE INDEX IF NOT EXISTS dromos_jobs_batch ON dromos_jobs (batch_id, seq) "
        "WHERE batch_id IS NOT NULL"
    )
    version = db.execute("SELECT value FROM dromos_meta WHERE key = 'schema_version'").fetchone()
    if version is not None and int(version[0]) < 6:
        db.execute("DROP TRIGGER IF EXISTS dromos_jobs_release")  # made again just below
    for trigger in (*_BATCH_TRIGGERS, _DEPENDENCY_TRIGGER):
        db.execute(trigger)
    db.execute("UPDATE dromos_meta SET value = ? WHERE key = 'schema_version'", (_SCHEMA_VERSION,))


def _status(row: sqlite3.Row | tuple[Any, ...]) -> JobStatus:
    (job_id, task, queue, state, progress, message, attempt, priority, result, errors,
     created, eta, started, finished, cancel, webhooks) = row  # fmt: skip
    return job_status(
        job_id=job_id, task=task, queue=queue, state=JobState(state), progress=progress,
        message=message, attempts=attempt, priority=priority, result=result,
        errors=_errors_decoder.decode(errors) if errors else [], created_at=created, eta=eta,
        started_at=started, finished_at=finished, cancel_requested=bool(cancel),
        webhooks=webhooks,
    )  # fmt: skip


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _check_dependencies(db: sqlite3.Connection, ids: list[str]) -> None:
    """Refuse the enqueue (before anything is stored) if one of ``ids`` names no job."""
    wanted = list(dict.fromkeys(ids))
    found: set[str] = set()
    for chunk in _chunks(wanted):
        marks = ",".join("?" * len(chunk))
        rows = db.execute(f"SELECT id FROM dromos_jobs WHERE id IN ({marks})", chunk)
        found.update(r[0] for r in rows)
    for job_id in wanted:
        if job_id not in found:
            raise DependencyNotFound(job_id)


class SQLiteBroker(SQLiteEventBus, SQLiteParking, Broker):
    """Jobs, status and results in one SQLite file, shared safely by local processes."""

    schemes = ("sqlite",)

    def __init__(self, url: str, options: BrokerOptions | None = None) -> None:
        super().__init__(options)
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or not parts.path or parts.path == "/":
            raise ConfigurationError(
                f"bad SQLite URL {url!r}: write sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db"
            )
        self.path = parts.path[1:]
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.synchronous = query.pop("synchronous", "full").upper()
        if self.synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ConfigurationError("synchronous= takes full, normal or extra")
        self.busy_timeout = int(float(query.pop("busy_timeout", "30")) * 1000)
        if query:
            raise ConfigurationError(f"unknown SQLite URL option(s): {', '.join(sorted(query))}")
        self._db: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._work = Notifier()
        self._done = Notifier()
        self._ends = EndWatch(self._data_version, self._ended_among, self._done.notify)
        self._open_lock = threading.Lock()
        self._probe: sqlite3.Connection | None = None
        self._io_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            await self.open()
        assert self._thread is not None
        if in_portal():
            # A blocking caller (``task.enqueue()``, ``job.result()``) waits on this anyway:
            # doing the I/O here halves the thread handoffs of a blocking call.
            return self._locked(fn, *args)
        return await asyncio.wrap_future(self._thread.submit(self._locked, fn, *args))

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._io_lock:  # one connection, used by the I/O thread and the portal's
            return fn(*args)

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._connect()
        return self._db

    def _connect(self) -> sqlite3.Connection:
        # Several processes may open a new file at once; switching it to WAL takes a lock that
        # SQLite's busy handler does not always wait for, so a "locked" open is tried again.
        deadline = time.monotonic() + self.busy_timeout / 1000
        delay = 0.01
        while True:
            try:
                return self._connect_once()
            except sqlite3.OperationalError as exc:
                locked = "locked" in str(exc) or "busy" in str(exc)
                if not locked or time.monotonic() + delay > deadline:
                    raise BrokerError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
            except sqlite3.Error as exc:
                raise BrokerError(f"cannot open SQLite database {self.path!r}: {exc}") from exc

    def _connect_once(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout = {self.busy_timeout}")
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode = WAL")  # once per file: it is persistent
            db.execute(f"PRAGMA synchronous = {self.synchronous}")
            db.execute("PRAGMA recursive_triggers = ON")  # dependencies, down a chain
            schema = resources.files("dromos.brokers").joinpath("sqlite_schema.sql").read_text()
            db.execute("BEGIN IMMEDIATE")
            for statement in schema.split(";\n"):
                if statement.strip():
                    db.execute(statement)
            _migrate(db)
            if self.options.relay:
                for statement in _RELAY_SCHEMA:
                    db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; SQLite serialises writers across processes."""
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def open(self) -> None:
        with self._open_lock:
            if self._thread is None:
                self._thread = ThreadPoolExecutor(1, thread_name_prefix="dromos-sqlite")
            thread = self._thread
        await asyncio.wrap_future(thread.submit(lambda: self._conn))

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return

        def _close() -> None:
            with self._io_lock:  # not under a blocking enqueue in another thread
                if self._db is not None:
                    self._db.close()
                    self._db = None

        await asyncio.wrap_future(thread.submit(_close))
        thread.shutdown(wait=True)
        with self._open_lock:
            if self._probe is not None:
                self._probe.close()
                self._probe = None

    # -- producing ------------------------------------------------------------------------
    async def enqueue(self, requests: Sequence[EnqueueRequest]) -> list[str]:
        ids = await self._run(self._enqueue, requests)
        self._work.notify({r.message.queue for r in requests})
        return ids

    def enqueue_blocking(self, requests: Sequence[EnqueueRequest]) -> list[str] | None:
        # A blocking caller does the insert in its own thread: handing it to the portal's
        # loop and back costs more than the insert. Not before open() (nor after close()).
        with self._io_lock:
            if self._thread is None or self._db is None:
                return None
            ids = self._enqueue(requests)
        self._work.notify({r.message.queue for r in requests})
        return ids

    def _enqueue(
        self,
        requests: Sequence[EnqueueRequest],
        then: Callable[[sqlite3.Connection, list[str], float], None] | None = None,
    ) -> list[str]:
        """Insert the jobs in one write; ``then`` runs in the same write with their ids."""
        now = time.time()
        ids = []
        # In request order (the claim order within a priority): runs of rows without a key,
        # flat, 8 values each, inserted together, and one entry per row with a key.
        runs: list[list[Any] | _Keyed] = []
        plain: list[Any] = []
        keyed: list[_Keyed] = []
        created_at = None
        created = 0.0
        for index, req in enumerate(requests):
            msg = req.message
            ids.append(msg.id)
            if msg.created_at is not created_at:  # a batch shares one: convert it once
                created_at = msg.created_at
                created = created_at.timestamp()
            eta = stored_eta(now, req)
            state = "scheduled" if eta is not None and eta > now else "queued"
            headers = msg.headers
            key = headers.get("idempotency_key") if headers else None
            callback = headers.get("callback_url") if headers else None
            deps = dependencies(msg) if headers else []
            if key is None and callback is None and not deps:
                if not plain:
                    runs.append(plain)
                plain += (msg.id, msg.task, msg.queue, state, msg.priority, eta, req.payload,
                          created)  # fmt: skip
            else:
                row = (msg.id, msg.task, msg.queue, state, msg.priority, eta, req.payload,
                       created, key, now + req.idempotency_window, callback)  # fmt: skip
                keyed.append((index, key, row, deps))
                runs.append(keyed[-1])
                plain = []
        with self._write() as db:
            _check_dependencies(db, [d for *_, deps in keyed for d in deps])
            for run in runs:
                if isinstance(run, tuple):
                    self._insert_keyed(db, run, ids, now)
                    continue
                step = 8 * _ROWS
                for start in range(0, len(run), step):
                    values = run[start : start + step]
                    db.execute(_INSERT_PLAIN + _MORE_PLAIN * (len(values) // 8 - 1), values)
            if then is not None:
                then(db, ids, now)
        return ids

    def _insert_keyed(
        self, db: sqlite3.Connection, entry: _Keyed, ids: list[str], now: float
    ) -> None:
        """One row with an idempotency key, a callback or dependencies; ``ids[index]``
        becomes the existing job's id when the key names one."""
        index, key, row, deps = entry
        if key is not None:
            db.execute(
                "UPDATE dromos_jobs SET idempotency_key = NULL "
                "WHERE queue = ? AND idempotency_key = ? AND idempotency_until <= ?",
                (row[2], key, now),
            )
        if db.execute(_INSERT, row).rowcount:
            if deps:
                self._wait_for(db, row[0], deps, now)
        elif key is not None:
            found = db.execute(
                "SELECT id FROM dromos_jobs WHERE queue = ? AND idempotency_key = ?",
                (row[2], key),
            ).fetchone()
            if found is not None:
                ids[index] = found[0]

    def _wait_for(self, db: sqlite3.Connection, job_id: str, deps: list[str], now: float) -> None:
        """A new dependent, just inserted: ended at once if a dependency failed or was
        cancelled, waiting for the ones not ended yet, else left as inserted."""
        states: dict[str, str] = {}
        for chunk in _chunks(deps):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT id, state FROM dromos_jobs WHERE id IN ({marks})"
            states.update(db.execute(sql, chunk).fetchall())
        for dep in deps:
            if dep not in states:
                raise DependencyNotFound(dep)
            if states[dep] in ("failed", "cancelled"):
                ended = JobState(states[dep])
                opts = self.options
                ttl = opts.dead_letter_ttl if ended is _S.FAILED else opts.result_ttl
                error = _json.encode(dependency_error(dep, ended, 0)).decode()
                db.execute(
                    "UPDATE dromos_jobs SET state = ?, finished_at = ?, expires_at = ?, "
                    f"{_HOOK}, errors = json_insert(coalesce(errors, '[]'), '$[#]', json(?)) "
                    "WHERE id = ?",
                    (ended.value, now, now + ttl, now, error, job_id),
                )
                return
        pending = [dep for dep in deps if states[dep] != "succeeded"]
        if not pending:
            return
        db.execute(
            "UPDATE dromos_jobs SET state = 'scheduled', eta = NULL, waiting = ?, message = ? "
            "WHERE id = ?",
            (len(pending), waiting_message(len(pending)), job_id),
        )
        db.executemany(
            "INSERT OR IGNORE INTO dromos_dependencies (dependency, dependent) VALUES (?, ?)",
            [(dep, job_id) for dep in pending],
        )
        for chunk in _chunks(pending):
            marks = ",".join("?" * len(chunk))
            db.execute(
                f"UPDATE dromos_jobs SET dependents = 1 WHERE id IN ({marks}) AND dependents = 0",
                chunk,
            )

    async def enqueue_batch(
        self, batch: BatchRecord, requests: Sequence[EnqueueRequest]
    ) -> list[str]:
        ids = await self._run(self._enqueue_batch, batch, requests)
        self._work.notify({r.message.queue for r in requests})
        return ids

    def _enqueue_batch(self, batch: BatchRecord, requests: Sequence[EnqueueRequest]) -> list[str]:
        now = time.time()
        rows = []
        for req in requests:
            msg = req.message
            eta = stored_eta(now, req)
            state = "scheduled" if eta is not None and eta > now else "queued"
            rows.append((msg.id, msg.task, msg.queue, state, msg.priority, eta, req.payload,
                         msg.created_at.timestamp(), msg.headers.get("callback_url"),
                         batch.id))  # fmt: skip
        cb = batch.callback
        callback: tuple[Any, ...] = (None,) * 6
        if cb is not None:
            msg = cb.message
            callback = (msg.id, msg.task, msg.queue, msg.priority, cb.payload,
                        msg.headers.get("callback_url"))  # fmt: skip
        waits = [(r.message.id, deps) for r in requests if (deps := dependencies(r.message))]
        with self._write() as db:
            _check_dependencies(db, [d for _, deps in waits for d in deps])
            db.execute(
                "INSERT OR IGNORE INTO dromos_batches (id, total, remaining, created_at, "
                "callback_id, callback_task, callback_queue, callback_priority, "
                "callback_payload, callback_url) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (batch.id, batch.total, batch.total, now, *callback),
            )
            db.executemany(
                "INSERT OR IGNORE INTO dromos_jobs (id, task, queue, state, priority, eta, "
                "payload, created_at, callback_url, batch_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            for job_id, deps in waits:
                self._wait_for(db, job_id, deps, now)
        return [r.message.id for r in requests]

    async def batch_status(self, batch_id: str) -> BatchStatus | None:
        row = await self._run(
            lambda: self._conn.execute(
                "SELECT total, succeeded, failed, cancelled, callback_id, finished_at "
                "FROM dromos_batches WHERE id = ?",
                (batch_id,),
            ).fetchone()
        )
        if row is None:
            return None
        total, succeeded, failed, cancelled, callback, finished = row
        return BatchStatus(
            id=batch_id, total=total, succeeded=succeeded, failed=failed, cancelled=cancelled,
            callback_id=callback,
            finished_at=None if finished is None else datetime.fromtimestamp(finished, UTC),
        )  # fmt: skip

    async def batch_jobs(self, batch_id: str) -> list[str] | None:
        def read() -> list[str] | None:
            db = self._conn
            if db.execute("SELECT 1 FROM dromos_batches WHERE id = ?", (batch_id,)).fetchone():
                rows = db.execute(
                    "SELECT id FROM dromos_jobs WHERE batch_id = ? ORDER BY seq", (batch_id,)
                )
                return [r[0] for r in rows]
            return None

        found: list[str] | None = await self._run(read)
        return found

    # -- consuming ------------------------------------------------------------------------
    async def claim(
        self, queues: Sequence[str], limit: int, lease: float, worker: str = ""
    ) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        return await self._run(self._claim, list(queues), limit, lease, worker)

    def _claim(self, queues: list[str], limit: int, lease: float, worker: str) -> list[Delivery]:
        now = time.time()
        if len(queues) == 1:
            pick, params = _PICK_ONE, [queues[0], limit]
        else:
            union = " UNION ALL ".join(
                f"SELECT * FROM (SELECT seq, priority FROM dromos_jobs WHERE state = 'queued' "
                f"AND queue = ? ORDER BY priority DESC, seq LIMIT {int(limit)})"
                for _ in queues
            )
            pick = f"SELECT seq FROM ({union}) ORDER BY priority DESC, seq LIMIT ?"
            params = [*queues, limit]
        with self._write() as db:
            self._recover(db, now)
            db.execute(_PROMOTE, (now,))
            rows = db.execute(
                _CLAIM.format(pick=pick), (now + lease, now, worker, *params)
            ).fetchall()
        rows.sort(key=lambda r: (-r[0], r[1]))
        return [Delivery(r[2], r[3], r[4], r[5]) for r in rows]

    def _recover(self, db: sqlite3.Connection, now: float) -> None:
        # Cheap when nothing expired: the partial lease index has only running jobs.
        if db.execute(
            "SELECT 1 FROM dromos_jobs WHERE state = 'running' AND lease_until < ? LIMIT 1",
            (now,),
        ).fetchone():
            args = {"now": now, "ttl": self.options.dead_letter_ttl,
                    "max": self.options.max_recoveries}  # fmt: skip
            db.execute(_RECOVER_POISON, args)
            db.execute(_RECOVER, {"now": now})

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        await self._wait_for_change(list(queues), self._next_due, list(queues), timeout)

    async def _wait_for_change(
        self,
        keys: list[str],
        next_due: Callable[[list[str]], float],
        names: list[str],
        timeout: float,
    ) -> None:
        """Until an in-process wake-up on ``keys``, a commit by another connection, the time
        ``next_due(names)`` names, or ``timeout``. Right after activity more is likely soon:
        the poll stays short for ``EAGER`` seconds, then doubles up to ``IDLE_POLL``."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeout
        with self._work.listen(keys) as listener:  # before the checks: no lost wake-up
            version = self._data_version()
            wake_at = await self._run(next_due, names)
            deadline = min(deadline, loop.time() + max(0.0, wake_at - time.time()))
            poll = FIRST_POLL
            while (left := deadline - loop.time()) > 0:
                if await listener.wait(min(left, poll)):
                    return
                if self._data_version() != version:
                    return
                if loop.time() - start > EAGER:
                    poll = min(poll * 2, IDLE_POLL)

    def _data_version(self) -> int:
        """Read on a connection of its own, in the caller's thread: a few microseconds, so an
        idle worker polls without a thread hop. It changes when any other connection commits."""
        with self._open_lock:
            if self._probe is None:
                self._probe = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
            return int(self._probe.execute("PRAGMA data_version").fetchone()[0])

    def _next_due(self, queues: list[str]) -> float:
        """When the next delayed job becomes due or the next lease expires; 0 (at once) when
        ``queues`` already hold ready work (enqueued after the caller's empty claim)."""
        marks = ",".join("?" * len(queues))
        row = self._conn.execute(
            # The aggregate min() skips NULLs; the two-argument min(a, b) would be NULL as soon
            # as either kind of row is missing, and the worker would sleep through an eta.
            "SELECT min(t) FROM (SELECT min(eta) AS t FROM dromos_jobs WHERE state IN "
            "('scheduled', 'retrying') UNION ALL SELECT min(lease_until) FROM dromos_jobs "
            "WHERE state = 'running' UNION ALL SELECT 0 FROM (SELECT 1 FROM dromos_jobs "
            f"WHERE state = 'queued' AND queue IN ({marks}) LIMIT 1))",
            queues,
        ).fetchone()
        return float(row[0]) if row[0] is not None else float("inf")

    async def settle(self, outcomes: Sequence[Outcome]) -> int:
        if not outcomes:
            return 0
        applied = await self._run(self._settle, outcomes)
        self._done.notify(o.job_id for o in outcomes if o.state is not _S.RETRYING)
        return applied

    def _settle(self, outcomes: Sequence[Outcome]) -> int:
        now = time.time()
        result_until = now + self.options.result_ttl
        groups: dict[JobState, list[tuple[Any, ...]]] = {}
        for o in outcomes:
            err = None if o.error is None else _json.encode(o.error).decode()
            key = (o.job_id, o.attempt)
            if o.state is _S.SUCCEEDED:
                row: tuple[Any, ...] = (o.result or b"null", now, result_until, now, *key)
            elif o.state is _S.RETRYING:
                row = (due_at(now, o.eta, o.delay), err, err, *key)
            elif o.state is _S.FAILED:
                row = (now, now + self.options.dead_letter_ttl, now, err, err, *key)
            else:
                row = (now, result_until, now, err, err, *key)
            groups.setdefault(o.state, []).append(row)
        applied = 0
        with self._write() as db:
            for state, rows in groups.items():
                applied += db.executemany(_SETTLE[state], rows).rowcount
        return applied

    async def extend(self, leases: Sequence[Lease], lease: float) -> HeartbeatReply:
        if not leases:
            return HeartbeatReply()
        return await self._run(self._extend, leases, lease)

    def _extend(self, leases: Sequence[Lease], lease: float) -> HeartbeatReply:
        until = time.time() + lease
        held = {(h.job_id, h.attempt) for h in leases}
        seen: dict[str, tuple[int, str, int]] = {}
        with self._write() as db:
            db.executemany(
                f"UPDATE dromos_jobs SET lease_until = ? {_HELD}",
                [(until, h.job_id, h.attempt) for h in leases],
            )
            for chunk in _chunks(leases):
                marks = ",".join("?" * len(chunk))
                for job_id, attempt, state, cancel in db.execute(
                    "SELECT id, attempt, state, cancel_requested FROM dromos_jobs "
                    f"WHERE id IN ({marks})",
                    [h.job_id for h in chunk],
                ):
                    seen[job_id] = (attempt, state, cancel)
        lost = frozenset(
            job_id
            for job_id, attempt in held
            if job_id not in seen or seen[job_id][:2] != (attempt, "running")
        )
        cancel = frozenset(j for j, (_, state, flag) in seen.items() if flag and j not in lost)
        return HeartbeatReply(lost, cancel)

    async def release(
        self, leases: Sequence[Lease], eta: float | None = None, *, delay: float | None = None
    ) -> None:
        if leases:
            await self._run(self._release, leases, eta, delay)
            self._work.notify(())

    def _release(self, leases: Sequence[Lease], eta: float | None, delay: float | None) -> None:
        if delay is not None:
            eta = time.time() + delay
        state = "queued" if eta is None else "scheduled"
        with self._write() as db:
            db.executemany(
                "UPDATE dromos_jobs SET state = ?, eta = coalesce(?, eta), lease_until = NULL "
                f"{_HELD}",
                [(state, eta, h.job_id, h.attempt) for h in leases],
            )

    async def progress(self, updates: Sequence[ProgressUpdate]) -> None:
        if updates:
            await self._run(self._progress, updates)

    def _progress(self, updates: Sequence[ProgressUpdate]) -> None:
        with self._write() as db:
            db.executemany(
                f"UPDATE dromos_jobs SET progress = ?, message = ? {_HELD}",
                [(u.progress, u.message, u.job_id, u.attempt) for u in updates],
            )

    # -- status and control ---------------------------------------------------------------
    async def status(self, job_id: str) -> JobStatus | None:
        return await self._run(self._status, job_id)

    def _status(self, job_id: str) -> JobStatus | None:
        row = self._conn.execute(
            f"SELECT {_STATUS_COLUMNS} FROM dromos_jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return None if row is None else _status(row)

    async def wait(self, job_id: str, timeout: float | None) -> JobStatus | None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        # Woken by a settle in this process, or by the loop's watcher after another
        # process's commit ended the job (sqlite_waiting); the status is read on each wake,
        # and at least every _RECHECK seconds.
        with self._done.listen((job_id,)) as listener, self._ends.watching(job_id):
            while True:
                status = await self.status(job_id)
                if status is None or status.state.terminal:
                    return status
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    return None
                await listener.wait(_RECHECK if left is None else min(left, _RECHECK))

    async def _ended_among(self, job_ids: list[str]) -> set[str]:
        return await self._run(self._ended_now, job_ids)

    def _ended_now(self, job_ids: list[str]) -> set[str]:
        """Those of ``job_ids`` that ended, or are gone (purged, never stored)."""
        found: set[str] = set()
        ended: set[str] = set()
        for start in range(0, len(job_ids), 500):
            chunk = job_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for job_id, state in self._conn.execute(
                f"SELECT id, state FROM dromos_jobs WHERE id IN ({marks})", chunk
            ):
                found.add(job_id)
                if JobState(state).terminal:
                    ended.add(job_id)
        return ended | (set(job_ids) - found)

    async def cancel(self, job_id: str) -> JobState | None:
        state = await self._run(self._cancel, job_id)
        if state is _S.CANCELLED:
            self._done.notify((job_id,))
        return state

    def _cancel(self, job_id: str) -> JobState | None:
        now = time.time()
        with self._write() as db:
            db.execute(
                "UPDATE dromos_jobs SET state = 'cancelled', finished_at = ?, expires_at = ?, "
                f"{_HOOK}, message = CASE WHEN waiting > 0 THEN NULL ELSE message END, "
                "waiting = 0 WHERE id = ? AND state IN ('scheduled', 'queued', 'retrying')",
                (now, now + self.options.result_ttl, now, job_id),
            )
            db.execute(
                "UPDATE dromos_jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'",
                (job_id,),
            )
            row = db.execute("SELECT state FROM dromos_jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else JobState(row[0])

    async def jobs(
        self,
        *,
        state: JobState | None = None,
        task: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[JobStatus]:
        where, params = job_filters("?", state, task, queue, before, time.time())
        sql = f"SELECT {_STATUS_COLUMNS} FROM dromos_jobs{where} ORDER BY id DESC LIMIT ?"
        rows = await self._run(lambda: self._conn.execute(sql, (*params, limit)).fetchall())
        return [_status(r) for r in rows]

    async def queues(self) -> list[QueueStats]:
        rows = await self._run(
            lambda: self._conn.execute(
                f"SELECT queue, {shown_state('?')} AS shown, count(*) FROM dromos_jobs "
                "GROUP BY queue, shown",
                (time.time(),),
            ).fetchall()
        )
        counts: dict[str, dict[str, int]] = {}
        for queue, state, n in rows:
            counts.setdefault(queue, {})[state] = n
        return [QueueStats(q, c) for q, c in sorted(counts.items())]

    async def replay(self, job_ids: Sequence[str] | None = None) -> list[str]:
        moved = await self._run(self._replay, job_ids)
        if moved:
            self._work.notify(())
        return moved

    def _replay(self, job_ids: Sequence[str] | None) -> list[str]:
        sql = (
            "UPDATE dromos_jobs SET state = 'queued', failures = 0, recoveries = 0, "
            "finished_at = NULL, expires_at = NULL, progress = 0, message = NULL, eta = NULL "
            "WHERE state = 'failed'"
        )
        moved: list[str] = []
        with self._write() as db:
            if job_ids is None:
                moved += [r[0] for r in db.execute(sql + " RETURNING id")]
            for chunk in _chunks(list(job_ids or ())):
                marks = ",".join("?" * len(chunk))
                rows = db.execute(f"{sql} AND id IN ({marks}) RETURNING id", chunk)
                moved += [r[0] for r in rows]
        return moved

    async def webhooks_due(self, limit: int, lease: float) -> list[WebhookDue]:
        return await self._run(self._webhooks_due, limit, lease)

    def _webhooks_due(self, limit: int, lease: float) -> list[WebhookDue]:
        now = time.time()
        due = "hook_due IS NOT NULL AND hook_due <= ?"
        # Looked for first without a write lock: deliverers ask often and usually find none.
        if not self._conn.execute(
            f"SELECT 1 FROM dromos_jobs WHERE {due} LIMIT 1", (now,)
        ).fetchone():
            return []
        with self._write() as db:
            rows = db.execute(
                f"UPDATE dromos_jobs SET hook_due = ? WHERE seq IN (SELECT seq FROM dromos_jobs "
                f"WHERE {due} ORDER BY hook_due LIMIT ?) RETURNING id, callback_url, "
                "finished_at, json_array_length(coalesce(webhooks, '[]'))",
                (now + lease, now, limit),
            ).fetchall()
        return [WebhookDue(i, url or "", ended or now, n) for i, url, ended, n in rows]

    async def webhook_attempted(
        self,
        job_id: str,
        attempt: WebhookAttempt,
        retry_at: float | None,
        *,
        retry_in: float | None = None,
    ) -> None:
        def _attempted() -> None:
            due = None if retry_at is None else due_at(time.time(), retry_at, retry_in)
            with self._write() as db:
                db.execute(
                    "UPDATE dromos_jobs SET hook_due = ?, webhooks = "
                    "json_insert(coalesce(webhooks, '[]'), '$[#]', json(?)) WHERE id = ?",
                    (due, webhook_attempt_json(attempt), job_id),
                )

        await self._run(_attempted)

    async def hold_lease(self, name: str, holder: str, ttl: float) -> float | None:
        def hold() -> float | None:
            now = time.time()
            with self._write() as db:
                row = db.execute(
                    "SELECT holder, until, renewed FROM dromos_leases WHERE name = ?", (name,)
                ).fetchone()
                if row is not None and row[0] not in ("", holder) and row[1] > now:
                    return None
                db.execute(
                    "INSERT INTO dromos_leases (name, holder, until, renewed) VALUES (?,?,?,?) "
                    "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                    "until = excluded.until, renewed = excluded.renewed",
                    (name, holder, now + ttl, now),
                )
            return 0.0 if row is None else float(row[2])

        held: float | None = await self._run(hold)
        return held

    async def drop_lease(self, name: str, holder: str) -> None:
        def drop() -> None:
            with self._write() as db:
                db.execute(  # free at once; when it was last held stays
                    "UPDATE dromos_leases SET holder = '', until = 0 WHERE name = ? AND holder = ?",
                    (name, holder),
                )

        await self._run(drop)

    async def throttle(
        self, key: str, limit: int, period: float, hold: float = float("inf")
    ) -> float:
        def reserve() -> float:
            with self._write() as db:
                now = time.time()  # once the write lock is ours: waiting for it made no start
                db.execute(
                    "DELETE FROM dromos_rate_starts WHERE key = ? AND until <= ?", (key, now)
                )
                last = db.execute(
                    "SELECT max(at) FROM dromos_rate_starts WHERE key = ?", (key,)
                ).fetchone()[0]
                nth = db.execute(  # the limit-th newest start, if there are that many
                    "SELECT at FROM dromos_rate_starts WHERE key = ? ORDER BY at DESC "
                    "LIMIT 1 OFFSET ?",
                    (key, limit - 1),
                ).fetchone()
                at = now if nth is None else max(now, last, nth[0] + period)
                if at - now <= hold:
                    db.execute(
                        "INSERT INTO dromos_rate_starts (key, at, until) VALUES (?, ?, ?)",
                        (key, at, at + period),
                    )
            return at - now

        wait: float = await self._run(reserve)
        return wait

    # -- relay mode (docs/design/rabbitmq.md §3; memory.py is the reference) -----------------
    async def enqueue_unsent(
        self, requests: Sequence[EnqueueRequest], hold: float
    ) -> list[Recorded]:
        recorded: list[Recorded] = []

        def hold_new(db: sqlite3.Connection, ids: list[str], now: float) -> None:
            mine = [i for i, r in zip(ids, requests, strict=True) if i == r.message.id]
            states: dict[str, tuple[str, float | None]] = {}
            for chunk in _chunks(mine):
                marks = ",".join("?" * len(chunk))
                db.execute(
                    f"UPDATE dromos_jobs SET sent_until = ? WHERE id IN ({marks}) "
                    "AND state = 'queued'",
                    (now + hold, *chunk),
                )
                rows = db.execute(
                    f"SELECT id, state, eta FROM dromos_jobs WHERE id IN ({marks})", chunk
                )
                states.update((r[0], (r[1], r[2])) for r in rows)
            for job_id, req in zip(ids, requests, strict=True):
                state, eta = states.get(job_id, ("", None))
                new = job_id == req.message.id
                recorded.append(Recorded(
                    job_id, new and state == "queued", eta if state == "scheduled" else None
                ))  # fmt: skip

        await self._run(self._enqueue, requests, hold_new)
        self._work.notify(())
        return recorded

    async def mark_sent(self, job_ids: Sequence[str]) -> None:
        def mark() -> None:
            with self._write() as db:
                db.executemany(
                    "UPDATE dromos_jobs SET sent_until = ? WHERE id = ? AND state = 'queued' "
                    "AND sent_until < 1e308",  # held: not claimed and readied again since
                    [(_SENT, job_id) for job_id in job_ids],
                )

        if job_ids:
            await self._run(mark)

    async def relay_due(self, limit: int, hold: float) -> RelayBatch:
        def take() -> RelayBatch:
            with self._write() as db:
                now = time.time()
                self._recover(db, now)
                db.execute(_PROMOTE, (now,))
                rows = db.execute(
                    "UPDATE dromos_jobs SET sent_until = ? WHERE seq IN (SELECT seq FROM "
                    "dromos_jobs WHERE state = 'queued' AND sent_until IS NOT 1e308 AND "
                    "coalesce(sent_until, 0) <= ? ORDER BY priority DESC, seq LIMIT ?) "
                    "RETURNING priority, seq, id, queue, payload",
                    (now + hold, now, limit),
                ).fetchall()
                ahead = db.execute(  # when something may become ready next
                    "SELECT min(t) FROM (SELECT min(eta) AS t FROM dromos_jobs WHERE state IN "
                    "('scheduled', 'retrying') UNION ALL SELECT min(lease_until) FROM "
                    "dromos_jobs WHERE state = 'running' UNION ALL SELECT min(sent_until) "
                    "FROM dromos_jobs WHERE state = 'queued' AND sent_until > ? "
                    "AND sent_until IS NOT 1e308)",
                    (now,),
                ).fetchone()[0]
            rows.sort(key=lambda r: (-r[0], r[1]))
            jobs = [RelayJob(r[2], r[3], r[0], r[4]) for r in rows]
            next_due = now if len(jobs) >= limit else ahead
            return RelayBatch(jobs, next_due, now)

        batch: RelayBatch = await self._run(take)
        return batch

    async def claim_ids(
        self, job_ids: Sequence[str], lease: float, worker: str = ""
    ) -> list[Delivery | Gone | Missing]:
        def claim() -> list[Delivery | Gone | Missing]:
            out: list[Delivery | Gone | Missing] = []
            with self._write() as db:
                now = time.time()
                self._recover(db, now)
                db.execute(_PROMOTE, (now,))
                for job_id in job_ids:
                    row = db.execute(
                        "UPDATE dromos_jobs SET state = 'running', attempt = attempt + 1, "
                        "lease_until = ?, started_at = ?, worker = ?, sent_until = NULL "
                        "WHERE id = ? AND state = 'queued' "
                        "RETURNING id, attempt, failures, payload",
                        (now + lease, now, worker, job_id),
                    ).fetchone()
                    if row is not None:
                        out.append(Delivery(row[0], row[1], row[2], row[3]))
                        continue
                    found = db.execute(
                        "SELECT state FROM dromos_jobs WHERE id = ?", (job_id,)
                    ).fetchone()
                    out.append(
                        Missing(job_id) if found is None else Gone(job_id, JobState(found[0]))
                    )
            return out

        claimed: list[Delivery | Gone | Missing] = await self._run(claim)
        return claimed

    async def withdraw(self, job_ids: Sequence[str], reason: str) -> None:
        error = _json.encode({"type": "EnqueueFailed", "message": reason, "attempt": 0}).decode()

        def withdraw() -> None:
            now = time.time()
            with self._write() as db:
                db.executemany(
                    "UPDATE dromos_jobs SET state = 'cancelled', finished_at = ?, "
                    f"expires_at = ?, {_HOOK}, idempotency_key = NULL, "
                    "errors = json_insert(coalesce(errors, '[]'), '$[#]', json(?)) "
                    "WHERE id = ? AND state = 'queued' AND sent_until IS NOT 1e308",
                    [(now, now + self.options.result_ttl, now, error, i) for i in job_ids],
                )

        if job_ids:
            await self._run(withdraw)

    async def purge(self) -> int:
        def _purge() -> int:
            now = time.time()
            with self._write() as db:
                db.execute("DELETE FROM dromos_rate_starts WHERE until <= ?", (now,))
                db.execute(  # a batch's record lives as long as its results
                    "DELETE FROM dromos_batches WHERE finished_at < ?",
                    (now - self.options.result_ttl,),
                )
                return db.execute("DELETE FROM dromos_jobs WHERE expires_at < ?", (now,)).rowcount

        return await self._run(_purge)
