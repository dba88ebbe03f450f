"""``postgresql://`` (also ``postgres://``): jobs, status, results and the bus in PostgreSQL.

One schema holds everything (``public`` unless ``?schema=NAME``): the tables are created by
numbered migrations (``postgres_migrations/NNNN_*.sql``) that :meth:`PostgresBroker.open`
applies on first use under a transaction-level advisory lock, so that many workers starting
at once migrate once; ``dromos_schema_version`` records each. Every state change is one short
transaction, most of them one statement; the write that ends a job also writes its webhook
outbox entry (``hook_due``) and its wake-up, so nothing is lost between the two.

Claims take ready rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` (priority first, then
enqueue order): concurrent claimers never wait for each other and never take a job twice.
The same claim first recovers expired leases (``WorkerLost``; ``Poison`` after
``max_recoveries``) and readies due delayed jobs, as the SQLite broker does. Leases, due
times and retention are timed by the DATABASE clock (``now()``, as Unix seconds in double
precision columns), so a worker whose clock is off causes no early redelivery.

Pushes, not polls: writes ``NOTIFY`` (``pg_notify``, delivered at commit) on three channels
per schema, ``<schema>.dromos_work`` (payload: the queue), ``<schema>.dromos_done`` (payload:
the ids of jobs that ended) and ``<schema>.dromos_events``. Each event loop that uses a
broker holds one pool and one listening connection whose reader wakes that loop's waiters;
waiters still look again every second, so a notification lost in a reconnect costs at most
that.

:meth:`PostgresBroker.enqueue_in` inserts jobs with the caller's own connection inside its
open transaction: they exist, and their NOTIFY is delivered, only if the caller commits.

Batches are counted by a trigger (migration 0003) in whatever statement ends a batch's job,
so no write that ends a job can forget to; the one that ends the last inserts the callback.
Dependencies likewise (migration 0005): a trigger releases a job's dependents when it ends,
and the enqueue of a dependent hands it to ``dromos_add_dependencies`` in its transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import TupleRow, tuple_row
from psycopg_pool import AsyncConnectionPool

from dromos._loop import cancel_and_wait, close_per_loop
from dromos.batch import BatchStatus
from dromos.brokers._notify import Notifier
from dromos.brokers.base import (
    DEPENDS_ON_HEADER,
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
    job_filters,
    job_status,
    shown_state,
    webhook_attempt_json,
)
from dromos.brokers.postgres_events import PostgresEventBus, clean, error_json
from dromos.brokers.postgres_parking import PostgresParking
from dromos.errors import BrokerError, ConfigurationError, DependencyNotFound
from dromos.job import JobError, JobState, JobStatus, WebhookAttempt

__all__ = ["PostgresBroker", "migrations"]

log = logging.getLogger("dromos.postgres")

_S = JobState
Cursor = AsyncCursor[TupleRow]
_RECHECK = 1.0  # seconds a waiter trusts the notifications before it looks again
_POOL_SIZE = 10  # connections per event loop (URL: pool_size=)
_OPEN_TIMEOUT = 10.0  # seconds to fill the pool's first connection
_QUERY_TIMEOUT = 30.0  # seconds a pooled connection may go unanswered (URL: query_timeout=)
_LISTEN_CHECK = 10.0  # seconds of silence after which the listening connection is checked
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")  # channel names stay under 64 bytes
_errors_decoder = msgspec.json.Decoder(list[JobError])

#: The database clock as Unix seconds: ``now()`` is the transaction's start, the same for
#: every statement of it (and stable, so the partial indexes serve the comparisons).
_NOW = "date_part('epoch', now())"

_STATUS_COLUMNS = (
    "id, task, queue, state, progress, message, attempt, priority, result, errors::text, "
    "created_at, eta, started_at, finished_at, cancel_requested, webhooks::text"
)

# -- enqueue ---------------------------------------------------------------------------------
# Jobs without an idempotency key: one INSERT of every row from arrays (one round trip for a
# batch), in request order, and one NOTIFY per queue that got a job.
# A job's eta: its delay= on from this server's clock, else the eta it came with (none: at
# once); the producer's clock decides only an eta= (see EnqueueRequest.delay).
_INSERT_MANY = (
    "WITH added AS (INSERT INTO {jobs} (id, task, queue, state, priority, eta, payload, "
    "created_at, callback_url, batch_id) SELECT r.id, r.task, r.queue, CASE WHEN r.due > {now} "
    "THEN 'scheduled' ELSE 'queued' END, r.priority, r.due, r.payload, r.created_at, "
    "r.callback_url, %(batch)s "
    "FROM (SELECT *, coalesce({now} + delay, eta) AS due FROM unnest(%(ids)s::text[], "
    "%(tasks)s::text[], %(queues)s::text[], %(priorities)s::int[], %(etas)s::float8[], "
    "%(delays)s::float8[], %(payloads)s::bytea[], %(created)s::float8[], "
    "%(callbacks)s::text[]) WITH ORDINALITY AS u(id, task, queue, priority, eta, delay, payload, "
    "created_at, callback_url, n)) AS r "
    "ORDER BY r.n ON CONFLICT DO NOTHING RETURNING queue) "
    "SELECT count(pg_notify(%(work)s, queue)) FROM (SELECT DISTINCT queue FROM added) q"
)
_PLAIN_ARRAYS = (
    "ids", "tasks", "queues", "priorities", "etas", "delays", "payloads", "created", "callbacks",
)  # fmt: skip
# A key past its window names no job any more: cleared before the insert that reuses it.
_FORGET_KEY = (
    "UPDATE {jobs} SET idempotency_key = NULL WHERE queue = %s AND idempotency_key = %s "
    "AND idempotency_until <= {now}"
)
# One job at a time: those with an idempotency key, and those with dependencies (which
# dromos_add_dependencies of migration 0005 then looks at, once the row is in).
_INSERT_KEYED = (
    "INSERT INTO {jobs} (id, task, queue, state, priority, eta, payload, created_at, "
    "idempotency_key, idempotency_until, callback_url, batch_id) VALUES (%(id)s, %(task)s, "
    "%(queue)s, CASE WHEN coalesce({now} + %(delay)s::float8, %(eta)s::float8) > {now} "
    "THEN 'scheduled' ELSE 'queued' END, %(priority)s, "
    "coalesce({now} + %(delay)s::float8, %(eta)s::float8), %(payload)s, %(created)s, %(key)s, "
    "CASE WHEN %(key)s::text IS NULL THEN NULL ELSE {now} + %(window)s END, %(callback)s, "
    "%(batch)s) ON CONFLICT DO NOTHING RETURNING id"
)
_ADD_DEPENDENCIES = "SELECT {schema}.dromos_add_dependencies(%s, %s::text[])"
_KNOWN = "SELECT id FROM {jobs} WHERE id = ANY(%s::text[])"
_NEW_BATCH = (
    "INSERT INTO {batches} (id, total, remaining, created_at, callback_id, callback_task, "
    "callback_queue, callback_priority, callback_head, callback_tail, callback_url) VALUES "
    "(%(id)s, %(total)s, %(total)s, {now}, %(cb_id)s, %(cb_task)s, %(cb_queue)s, "
    "%(cb_priority)s, %(cb_head)s, %(cb_tail)s, %(cb_url)s) ON CONFLICT DO NOTHING"
)
_BATCH_STATUS = (
    "SELECT total, succeeded, failed, cancelled, callback_id, finished_at FROM {batches} "
    "WHERE id = %s"
)
_BATCH_JOBS = (
    "SELECT b.id, j.id FROM {batches} b LEFT JOIN {jobs} j ON j.batch_id = b.id "
    "WHERE b.id = %s ORDER BY j.seq"
)
_KEY_HOLDER = "SELECT id FROM {jobs} WHERE queue = %s AND idempotency_key = %s"
_NOTIFY_QUEUES = "SELECT count(pg_notify(%s, q)) FROM unnest(%s::text[]) AS q"

# -- claim -----------------------------------------------------------------------------------
_LOST_ERROR = (
    "jsonb_build_object('type', 'WorkerLost', 'message', "
    "'the worker holding this job stopped renewing its lease', 'attempt', j.attempt)"
)
_POISON_ERROR = (
    "jsonb_build_object('type', 'Poison', 'message', 'the job''s worker was lost ' || "
    "(j.recoveries + 1) || ' times', 'attempt', j.attempt)"
)
# ``ended`` (a CTE with an ``id`` column) -> NOTIFY on the done channel, the ids in chunks
# well under the 8000-byte payload limit.
_NOTIFY_ENDED = (
    "notified AS (SELECT pg_notify(%(done)s, string_agg(id, ' ')) FROM (SELECT id, "
    "(row_number() OVER () - 1) / 100 AS chunk FROM ended) c GROUP BY chunk)"
)
# Expired leases: back to the queue with a WorkerLost entry, or dead-lettered as poison after
# max_recoveries (then the outbox entry and the done wake-up, as any end of a job). Rows
# another transaction holds are skipped: it is settling or extending them.
_POISONED = "j.recoveries >= %(max)s"
_RECOVER = (
    "WITH lost AS (SELECT seq FROM {jobs} WHERE state = 'running' AND lease_until < {now} "
    "FOR UPDATE SKIP LOCKED), "
    f"moved AS (UPDATE {{jobs}} j SET state = CASE WHEN {_POISONED} THEN 'failed' "
    "ELSE 'queued' END, recoveries = j.recoveries + 1, lease_until = NULL, "
    f"finished_at = CASE WHEN {_POISONED} THEN {{now}} ELSE j.finished_at END, "
    f"expires_at = CASE WHEN {_POISONED} THEN {{now}} + %(ttl)s ELSE j.expires_at END, "
    f"hook_due = CASE WHEN {_POISONED} AND j.callback_url IS NOT NULL THEN {{now}} "
    "ELSE j.hook_due END, "
    f"errors = coalesce(j.errors, '[]') || jsonb_build_array({_LOST_ERROR}) || "
    f"CASE WHEN {_POISONED} THEN jsonb_build_array({_POISON_ERROR}) ELSE '[]' END "
    "FROM lost WHERE j.seq = lost.seq RETURNING j.id, j.state), "
    "ended AS (SELECT id FROM moved WHERE state = 'failed'), " + _NOTIFY_ENDED + " "
    "SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM notified)"
)
_PROMOTE = (
    "UPDATE {jobs} SET state = 'queued' WHERE seq IN (SELECT seq FROM {jobs} WHERE state IN "
    "('scheduled', 'retrying') AND eta <= {now} FOR UPDATE SKIP LOCKED)"
)
_TAKE = (
    "UPDATE {jobs} j SET state = 'running', attempt = j.attempt + 1, "
    "lease_until = {now} + %(lease)s, started_at = {now}, worker = %(worker)s "
    "FROM picked WHERE j.seq = picked.seq "
    "RETURNING j.priority, j.seq, j.id, j.attempt, j.failures, j.payload"
)
_CLAIM_ONE = (
    "WITH picked AS (SELECT seq FROM {jobs} WHERE state = 'queued' AND queue = %(queue)s "
    "ORDER BY priority DESC, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED) " + _TAKE
)
# Several queues: the best ``limit`` of each (locked, skipping rows other claimers hold), then
# the best ``limit`` of those; the few extra rows stay locked only until this commit.
_CLAIM_MANY = (
    "WITH picked AS (SELECT p.seq FROM unnest(%(queues)s::text[]) AS q(name) CROSS JOIN LATERAL "
    "(SELECT seq, priority FROM {jobs} WHERE state = 'queued' AND queue = q.name "
    "ORDER BY priority DESC, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED) p "
    "ORDER BY p.priority DESC, p.seq LIMIT %(limit)s) " + _TAKE
)
# Seconds until a claim on these queues may find work: 0 with ready jobs, else until the next
# delayed job or lease end (NULL: nothing comes due).
_NEXT_DUE = (
    "SELECT CASE WHEN EXISTS (SELECT 1 FROM {jobs} WHERE state = 'queued' AND queue = ANY(%(q)s)) "
    "THEN 0 ELSE least((SELECT min(eta) FROM {jobs} WHERE state IN ('scheduled', 'retrying') "
    "AND queue = ANY(%(q)s)), (SELECT min(lease_until) FROM {jobs} WHERE state = 'running')) "
    "- {now} END"
)

# -- settle and the other fenced writes ------------------------------------------------------
_HELD = "j.id = h.id AND j.attempt = h.attempt AND j.state = 'running'"
# Every outcome of a batch in one statement: the state's columns, the outbox entry of the
# jobs that ended, their done wake-up, and a work wake-up for queues with a retry scheduled.
_SETTLE = (
    "WITH h AS (SELECT * FROM unnest(%(ids)s::text[], %(attempts)s::int[], %(states)s::text[], "
    "%(results)s::bytea[], %(errors)s::jsonb[], %(etas)s::float8[], %(delays)s::float8[]) "
    "AS h(id, attempt, state, result, error, eta, delay)), "
    "settled AS (UPDATE {jobs} j SET state = h.state, "
    "result = CASE WHEN h.state = 'succeeded' THEN h.result ELSE j.result END, "
    "progress = CASE WHEN h.state = 'succeeded' THEN 1.0 ELSE j.progress END, "
    "failures = j.failures + CASE WHEN h.state IN ('retrying', 'failed') THEN 1 ELSE 0 END, "
    "eta = CASE WHEN h.state = 'retrying' THEN coalesce({now} + h.delay, h.eta, {now}) "
    "ELSE j.eta END, "
    "finished_at = CASE WHEN h.state = 'retrying' THEN j.finished_at ELSE {now} END, "
    "expires_at = CASE h.state WHEN 'retrying' THEN j.expires_at "
    "WHEN 'failed' THEN {now} + %(dead_ttl)s ELSE {now} + %(ttl)s END, "
    "hook_due = CASE WHEN h.state = 'retrying' OR j.callback_url IS NULL THEN j.hook_due "
    "ELSE {now} END, lease_until = NULL, "
    "errors = CASE WHEN h.error IS NULL THEN j.errors "
    "ELSE coalesce(j.errors, '[]') || jsonb_build_array(h.error) END "
    f"FROM h WHERE {_HELD} RETURNING j.id, j.queue, j.state), "
    "ended AS (SELECT id FROM settled WHERE state <> 'retrying'), " + _NOTIFY_ENDED + ", "
    "retried AS (SELECT pg_notify(%(work)s, queue) FROM settled WHERE state = 'retrying' "
    "GROUP BY queue) "
    "SELECT (SELECT count(*) FROM settled), (SELECT count(*) FROM notified), "
    "(SELECT count(*) FROM retried)"
)
_LEASES = "unnest(%(ids)s::text[], %(attempts)s::int[]) AS h(id, attempt)"
_EXTEND = (
    "UPDATE {jobs} j SET lease_until = {now} + %(lease)s "
    f"FROM {_LEASES} WHERE {_HELD} RETURNING j.id, j.cancel_requested"
)
_RELEASE = (
    "WITH back AS (UPDATE {jobs} j SET state = CASE WHEN coalesce(%(delay)s::float8, "
    "%(eta)s::float8) IS NULL THEN 'queued' ELSE 'scheduled' END, "
    "eta = coalesce({now} + %(delay)s::float8, %(eta)s::float8, j.eta), "
    "lease_until = NULL "
    f"FROM {_LEASES} WHERE {_HELD} RETURNING j.queue) "
    "SELECT count(pg_notify(%(work)s, queue)) FROM (SELECT DISTINCT queue FROM back) q"
)
_PROGRESS = (
    "UPDATE {jobs} j SET progress = h.progress, message = h.message FROM unnest("
    "%(ids)s::text[], %(attempts)s::int[], %(progress)s::float8[], %(messages)s::text[]) "
    f"AS h(id, attempt, progress, message) WHERE {_HELD}"
)

# -- control ---------------------------------------------------------------------------------
_CANCEL_WAITING = (
    "WITH ended AS (UPDATE {jobs} j SET state = 'cancelled', finished_at = {now}, "
    "expires_at = {now} + %(ttl)s, hook_due = CASE WHEN j.callback_url IS NULL THEN NULL "
    "ELSE {now} END, message = CASE WHEN j.waiting > 0 THEN NULL ELSE j.message END, "
    "waiting = 0 WHERE j.id = %(id)s AND j.state IN ('scheduled', 'queued', 'retrying') "
    "RETURNING j.id), " + _NOTIFY_ENDED + " "
    "SELECT (SELECT count(*) FROM ended), (SELECT count(*) FROM notified)"
)
_CANCEL_RUNNING = (
    "UPDATE {jobs} SET cancel_requested = true WHERE id = %(id)s AND state = 'running'"
)
_REPLAY = (
    "WITH moved AS (UPDATE {jobs} SET state = 'queued', failures = 0, recoveries = 0, "
    "finished_at = NULL, expires_at = NULL, progress = 0, message = NULL, eta = NULL "
    "WHERE state = 'failed' AND (%(all)s OR id = ANY(%(ids)s)) RETURNING id, queue), "
    "woken AS (SELECT pg_notify(%(work)s, queue) FROM moved GROUP BY queue) "
    "SELECT id, (SELECT count(*) FROM woken) FROM moved"
)
_WEBHOOKS_DUE = (
    "WITH due AS (SELECT seq, hook_due FROM {jobs} WHERE hook_due IS NOT NULL AND "
    "hook_due <= {now} ORDER BY hook_due LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
    "UPDATE {jobs} j SET hook_due = {now} + %(lease)s FROM due WHERE j.seq = due.seq "
    "RETURNING due.hook_due, j.id, j.callback_url, j.finished_at, "
    "jsonb_array_length(coalesce(j.webhooks, '[]')), {now}"
)
_WEBHOOK_ATTEMPTED = (
    "UPDATE {jobs} SET hook_due = coalesce({now} + %s, %s), "
    "webhooks = coalesce(webhooks, '[]') || "
    "jsonb_build_array(%s::jsonb) WHERE id = %s"
)
# A name never held gets a free row first, so that there is always a row to lock.
# Relay mode: lease unsent ready jobs to the relay (SKIP LOCKED: relays in many workers split
# them), when something may become ready next, a claim by ids, and an enqueue undone.
_RELAY_TAKE = (
    "UPDATE {jobs} j SET sent_until = {now} + %(hold)s WHERE seq IN (SELECT seq FROM {jobs} "
    "WHERE state = 'queued' AND sent_until IS DISTINCT FROM 1e308 AND coalesce(sent_until, 0) "
    "<= {now} ORDER BY priority DESC, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
    "RETURNING priority, seq, id, queue, payload"
)
_RELAY_AHEAD = (
    "SELECT {now}, least((SELECT min(eta) FROM {jobs} WHERE state IN ('scheduled', "
    "'retrying')), (SELECT min(lease_until) FROM {jobs} WHERE state = 'running'), "
    "(SELECT min(sent_until) FROM {jobs} WHERE state = 'queued' AND sent_until > {now} "
    "AND sent_until < 1e308))"
)
_CLAIM_IDS = (
    "UPDATE {jobs} j SET state = 'running', attempt = j.attempt + 1, "
    "lease_until = {now} + %(lease)s, started_at = {now}, worker = %(worker)s, "
    "sent_until = NULL WHERE j.seq IN (SELECT seq FROM {jobs} WHERE id = ANY(%(ids)s) "
    "AND state = 'queued' FOR UPDATE) RETURNING j.id, j.attempt, j.failures, j.payload"
)
_WITHDRAW = (
    "WITH gone AS (UPDATE {jobs} SET state = 'cancelled', finished_at = {now}, "
    "expires_at = {now} + %(ttl)s, idempotency_key = NULL, hook_due = CASE WHEN "
    "callback_url IS NULL THEN NULL ELSE {now} END, errors = coalesce(errors, '[]'::jsonb) "
    "|| jsonb_build_array(%(error)s::jsonb) WHERE id = ANY(%(ids)s) AND state = 'queued' "
    "AND sent_until IS DISTINCT FROM 1e308 RETURNING id) "
    "SELECT count(pg_notify(%(done)s, id)) FROM gone"
)
_LEASE_ROW = (
    "INSERT INTO {leases} (name, holder, until, renewed) VALUES (%s, '', 0, 0) "
    "ON CONFLICT (name) DO NOTHING"
)
_LEASE_LOCK = "SELECT holder, until, renewed, {now} FROM {leases} WHERE name = %s FOR UPDATE"
_LEASE_TAKE = "UPDATE {leases} SET holder = %s, until = {now} + %s, renewed = {now} WHERE name = %s"


def migrations() -> list[tuple[int, str, str]]:
    """The migrations this version ships, in order: (version, file name, SQL)."""
    folder = resources.files("dromos.brokers").joinpath("postgres_migrations")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql") and entry.name[:4].isdigit():
            found.append((int(entry.name[:4]), entry.name, entry.read_text()))
    return sorted(found)


def _keyed(headers: dict[str, str]) -> bool:
    """Whether a job's insert takes more than the one plain statement (see _insert)."""
    return bool(headers) and ("idempotency_key" in headers or DEPENDS_ON_HEADER in headers)


def _lock_key(text: str) -> int:
    """A 64-bit advisory lock key for ``text`` (a schema's migrations, its publishers)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), signed=True)


def _by_job(item: Outcome | Lease | ProgressUpdate) -> str:
    """The order batches are written in: two batches that touch the same jobs (a worker's
    heartbeat and its settle) then lock their rows in the same order, and cannot deadlock."""
    return item.job_id


def _status(row: tuple[Any, ...]) -> JobStatus:
    (job_id, task, queue, state, progress, message, attempt, priority, result, errors,
     created, eta, started, finished, cancel, webhooks) = row  # fmt: skip
    return job_status(
        job_id=job_id, task=task, queue=queue, state=JobState(state), progress=progress,
        message=message, attempts=attempt, priority=priority, result=result,
        errors=_errors_decoder.decode(errors) if errors else [], created_at=created, eta=eta,
        started_at=started, finished_at=finished, cancel_requested=bool(cancel),
        webhooks=webhooks,
    )  # fmt: skip


class _Watchdog:
    """Drops a connection that goes unanswered for ``timeout`` seconds (0: never).

    A link that dies without a word (a peer gone, a firewall dropping packets, a stalled
    proxy) leaves a query waiting for ever: PostgreSQL has no client-side deadline, and
    TCP keepalives take hours. Cancelling the wait is no cure (psycopg then sends a cancel
    request that waits too, and a transaction's rollback waits on the same link). So the
    socket is shut down instead: every read and write on it fails at once, the statement
    raises, and the pool discards the broken connection.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.fired = False

    @contextlib.contextmanager
    def over(self, conn: AsyncConnection[TupleRow]) -> Iterator[None]:
        if not self.timeout:
            yield
            return
        timer = asyncio.get_running_loop().call_later(self.timeout, self._drop, conn)
        try:
            yield
        finally:
            timer.cancel()

    def _drop(self, conn: AsyncConnection[TupleRow]) -> None:
        self.fired = True
        with (
            contextlib.suppress(OSError, psycopg.Error),
            socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock,
        ):
            sock.shutdown(socket.SHUT_RDWR)


class _LoopState:
    """What one event loop holds: a pool, the listening connection and its reader, and the
    notifiers that reader wakes (so that each notification wakes this loop's waiters once)."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[TupleRow]]) -> None:
        self.pool = pool
        self.listener: AsyncConnection[TupleRow] | None = None
        self.reader: asyncio.Task[None] | None = None
        self.work = Notifier()  # keyed by queue
        self.done = Notifier()  # keyed by job id
        self.bus = Notifier()  # the event bus: one key

    def abandon(self) -> None:
        """Drop the sockets of a loop that is gone (its tasks cannot run any more)."""
        if self.listener is not None and not self.listener.closed:
            self.listener.pgconn.finish()


class PostgresBroker(PostgresEventBus, PostgresParking, Broker):
    """Jobs, status, results and the event bus in one PostgreSQL schema."""

    schemes = ("postgresql", "postgres")

    def __init__(self, url: str, options: BrokerOptions | None = None) -> None:
        super().__init__(options)
        parts = urlsplit(url)
        if parts.scheme not in self.schemes:
            raise ConfigurationError(f"not a PostgreSQL URL: {url!r}")
        query = dict(parse_qsl(parts.query))
        self.schema = query.pop("schema", "public")
        if not _SCHEMA_NAME.fullmatch(self.schema):
            raise ConfigurationError(
                "schema= takes a name of letters, digits and _ (at most 48, not starting "
                "with a digit)"
            )
        try:
            self.pool_size = int(query.pop("pool_size", _POOL_SIZE))
        except ValueError:
            raise ConfigurationError("pool_size= takes a whole number") from None
        if self.pool_size < 1:
            raise ConfigurationError("pool_size= must be at least 1")
        try:
            self.query_timeout = float(query.pop("query_timeout", _QUERY_TIMEOUT))
        except ValueError:
            raise ConfigurationError("query_timeout= takes a number of seconds") from None
        if not self.query_timeout >= 0:
            raise ConfigurationError("query_timeout= must be 0 (none) or more seconds")
        # Everything else (sslmode, connect_timeout, application_name ...) is libpq's.
        self.conninfo = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(query)))
        host = parts.netloc.rpartition("@")[2]
        self._safe_url = f"{host}{parts.path}"  # for messages: no credentials
        quoted = f'"{self.schema}"'
        self._names = {
            "jobs": f"{quoted}.dromos_jobs",
            "events": f"{quoted}.dromos_events",
            "groups": f"{quoted}.dromos_event_groups",
            "claims": f"{quoted}.dromos_event_claims",
            "leases": f"{quoted}.dromos_leases",
            "rates": f"{quoted}.dromos_rate_starts",
            "batches": f"{quoted}.dromos_batches",
            "versions": f"{quoted}.dromos_schema_version",
            "schema": quoted,
            "now": _NOW,
        }
        self._sql: dict[str, str] = {}
        self.work_channel = f"{self.schema}.dromos_work"
        self.done_channel = f"{self.schema}.dromos_done"
        self.bus_channel = f"{self.schema}.dromos_events"
        self._publish_lock = _lock_key(f"dromos:{self.schema}:publish")
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._creating: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._migrated = False
        # Queues (as a worker waits on them) -> until when (loop time) nothing of theirs comes
        # due: what the wait's last look found, kept when a notification woke it, for the
        # claim that follows (see claim).
        self._quiet: dict[tuple[str, ...], float] = {}

    # -- plumbing ---------------------------------------------------------------------------
    def _q(self, template: str) -> str:
        """``template`` with this broker's table names (and the clock) filled in, cached."""
        sql = self._sql.get(template)
        if sql is None:
            sql = self._sql[template] = template.format_map(self._names)
        return sql

    async def _connect(self) -> AsyncConnection[TupleRow]:
        try:
            return await AsyncConnection.connect(self.conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise BrokerError(f"cannot reach PostgreSQL at {self._safe_url}: {exc}") from exc

    async def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is not None:
            return state
        # One state per loop, also when many coroutines ask at once on first use.
        async with self._creating.setdefault(loop, asyncio.Lock()):
            return self._loops.get(loop) or await self._new_state(loop)

    async def _new_state(self, loop: asyncio.AbstractEventLoop) -> _LoopState:
        # The listening connection first: it says clearly why the server cannot be reached,
        # and it migrates the schema before anything else looks for the tables.
        listener = await self._connect()
        pool: AsyncConnectionPool[AsyncConnection[TupleRow]] = AsyncConnectionPool(
            self.conninfo,
            min_size=1,
            max_size=self.pool_size,
            kwargs={"autocommit": True},
            open=False,
            name=f"dromos-{self.schema}",
        )
        try:
            if not self._migrated:
                await self._migrate(listener)
            await self._listen(listener)
            await pool.open(wait=True, timeout=_OPEN_TIMEOUT)
        except BaseException as exc:
            await listener.close()
            await pool.close()
            if isinstance(exc, psycopg.Error):
                raise BrokerError(f"PostgreSQL at {self._safe_url}: {exc}") from exc
            raise
        state = _LoopState(pool)
        state.listener = listener
        state.reader = asyncio.create_task(self._read(state), name="dromos-postgres-listen")
        self._loops[loop] = state
        return state

    async def _listen(self, conn: AsyncConnection[TupleRow]) -> None:
        for channel in (self.work_channel, self.done_channel, self.bus_channel):
            await conn.execute(f'LISTEN "{channel}"')

    async def _relisten(self, state: _LoopState) -> AsyncConnection[TupleRow]:
        """A new listening connection for ``state`` (closed again if LISTEN fails)."""
        conn = await AsyncConnection.connect(self.conninfo, autocommit=True)
        try:
            await self._listen(conn)
        except BaseException:
            await conn.close()
            raise
        state.listener = conn
        return conn

    async def _read(self, state: _LoopState) -> None:
        """The loop's one reader of notifications; reconnects (with backoff) when its
        connection breaks. Waiters look again on their own meanwhile."""
        backoff = 0.1
        while True:
            conn = state.listener
            try:
                if conn is None:
                    conn = await self._relisten(state)
                    backoff = 0.1
                while True:
                    async for note in conn.notifies(timeout=_LISTEN_CHECK):
                        self._dispatch(state, note.channel, note.payload)
                    # A link that went silent may be dead without a word (no RST): ask.
                    with _Watchdog(self.query_timeout).over(conn):
                        await conn.execute("SELECT 1")
            except Exception as exc:  # the reader must outlive anything: without it, no pushes
                log.warning(
                    "PostgreSQL listener at %s lost (%s); reconnecting", self._safe_url, exc
                )
                state.listener = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _dispatch(self, state: _LoopState, channel: str, payload: str) -> None:
        if channel == self.work_channel:
            state.work.notify((payload,))
        elif channel == self.done_channel:
            state.done.notify(payload.split())
        elif channel == self.bus_channel:
            state.bus.notify(("events",))

    @contextlib.asynccontextmanager
    async def _cursor(self, *, transaction: bool = False) -> AsyncIterator[Cursor]:
        """A cursor on a pooled connection (autocommit: one statement, one transaction;
        ``transaction=True``: everything in the block commits together or not at all)."""
        state = await self._state()
        watchdog = _Watchdog(self.query_timeout)
        try:
            async with state.pool.connection() as conn:
                with watchdog.over(conn):
                    if transaction:
                        async with conn.transaction():
                            yield conn.cursor()
                    else:
                        yield conn.cursor()
        except psycopg.Error as exc:
            if watchdog.fired:
                raise BrokerError(
                    f"PostgreSQL at {self._safe_url} gave no answer within query_timeout="
                    f"{self.query_timeout:g} s (the connection was dropped)"
                ) from exc
            raise BrokerError(f"PostgreSQL at {self._safe_url} failed: {exc}") from exc

    async def _fetch(self, template: str, params: Any = None) -> list[tuple[Any, ...]]:
        async with self._cursor() as cur:
            await cur.execute(self._q(template), params)
            return await cur.fetchall()

    async def _fetchone(self, template: str, params: Any = None) -> tuple[Any, ...] | None:
        async with self._cursor() as cur:
            await cur.execute(self._q(template), params)
            return await cur.fetchone()

    async def _execute(self, template: str, params: Any = None) -> int:
        async with self._cursor() as cur:
            await cur.execute(self._q(template), params)
            return cur.rowcount

    # -- life cycle and migrations ------------------------------------------------------------
    async def open(self) -> None:
        await self._state()

    async def close(self) -> None:
        """Close the pool and listener of every loop that used this broker (each on its own
        loop; a loop that is gone gets its sockets closed without it)."""
        states, self._loops = self._loops, {}
        self._creating = {}
        await close_per_loop(states, self._close_state, _LoopState.abandon)

    @staticmethod
    async def _close_state(state: _LoopState) -> None:
        if state.reader is not None:
            await cancel_and_wait([state.reader])
        if state.listener is not None:
            await state.listener.close()
        await state.pool.close()

    async def migrate(self) -> int:
        """Apply the migrations the schema lacks (creating the schema if need be); return the
        schema's version. :meth:`open` does the same on first use."""
        conn = await self._connect()
        try:
            return await self._migrate(conn)
        except psycopg.Error as exc:
            raise BrokerError(f"migrating PostgreSQL at {self._safe_url}: {exc}") from exc
        finally:
            await conn.close()

    async def _version(self, conn: AsyncConnection[TupleRow]) -> int:
        """The schema's version (0: no dromos tables yet), read without a lock."""
        cur = await conn.execute("SELECT to_regclass(%s)", (self._names["versions"],))
        found = await cur.fetchone()
        if found is None or found[0] is None:
            return 0
        cur = await conn.execute(self._q("SELECT coalesce(max(version), 0) FROM {versions}"))
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _migrate(self, conn: AsyncConnection[TupleRow]) -> int:
        """Bring the schema up to date: a schema already there costs two reads, no lock; else
        every missing migration runs in one transaction under an advisory lock (a second
        process waits, then finds them applied)."""
        shipped = migrations()
        latest = shipped[-1][0]
        current = await self._version(conn)
        if current < latest:
            async with conn.transaction():
                key = _lock_key(f"dromos:{self.schema}:migrate")
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
                await conn.execute(self._q("CREATE SCHEMA IF NOT EXISTS {schema}"))
                await conn.execute(self._q(
                    "CREATE TABLE IF NOT EXISTS {versions} (version integer PRIMARY KEY, "
                    "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                ))  # fmt: skip
                cur = await conn.execute(self._q("SELECT version FROM {versions}"))
                applied = {row[0] for row in await cur.fetchall()}
                await conn.execute(self._q("SET LOCAL search_path TO {schema}"))
                for version, name, sql in shipped:
                    if version not in applied:
                        await conn.execute(sql)
                        await conn.execute(
                            self._q("INSERT INTO {versions} (version, name) VALUES (%s, %s)"),
                            (version, name),
                        )
                        log.info("PostgreSQL schema %s: applied %s", self.schema, name)
            current = max(latest, current)
        if self.options.relay:  # the relay's index, in the schemas that use it only
            await conn.execute(self._q(
                "CREATE INDEX IF NOT EXISTS dromos_jobs_unsent ON {jobs} (priority DESC, seq) "
                "WHERE state = 'queued' AND sent_until IS DISTINCT FROM 1e308"
            ))  # fmt: skip
        self._migrated = True
        return current

    # -- producing ------------------------------------------------------------------------
    async def enqueue(self, requests: Sequence[EnqueueRequest]) -> list[str]:
        if not requests:
            return []
        # Jobs without an idempotency key or dependencies are one INSERT (its NOTIFY in the
        # same statement), atomic on its own: no BEGIN/COMMIT round trips around it.
        single = all(not _keyed(r.message.headers) for r in requests)
        async with self._cursor(transaction=not single) as cur:
            return await self._insert(cur, requests)

    async def enqueue_in(self, connection: Any, requests: Sequence[EnqueueRequest]) -> list[str]:
        """:meth:`enqueue` with the caller's ``psycopg.AsyncConnection``, in its transaction.

        Nothing is committed here: the jobs, and the NOTIFY that wakes the workers (which
        PostgreSQL delivers at commit), exist only once the caller commits. Inside a
        transaction block the inserts run in a savepoint; on a connection that is not in
        autocommit mode they open the transaction the caller then commits; in autocommit
        mode, outside a block, they are one transaction of their own. The database clock
        reads the transaction's start (``now()``): a delayed job's state and an idempotency
        key's window count from there.
        """
        if not isinstance(connection, AsyncConnection):
            raise ConfigurationError(
                "connection= takes a psycopg (3) AsyncConnection on the PostgreSQL broker, "
                f"not {type(connection).__name__}"
            )
        if not requests:
            return []
        if not self._migrated:
            await self._state()
        status = connection.info.transaction_status
        if status == psycopg.pq.TransactionStatus.INERROR:
            raise BrokerError("connection=: your transaction has failed; roll it back first")
        try:
            cur = connection.cursor(row_factory=tuple_row)  # whatever rows the caller reads
            if status == psycopg.pq.TransactionStatus.IDLE and not connection.autocommit:
                return await self._insert(cur, requests)  # the statements open the transaction
            async with connection.transaction():
                return await self._insert(cur, requests)
        except psycopg.Error as exc:
            raise BrokerError(f"enqueue in your transaction failed: {exc}") from exc

    def enqueue_in_blocking(self, connection: Any, requests: Sequence[EnqueueRequest]) -> list[str]:
        """:meth:`enqueue_in` with a blocking ``psycopg.Connection`` (Django's, SQLAlchemy's
        raw connection ...), in the calling thread, with the same transaction rules.

        Each job goes through ``dromos_enqueue(envelope)``, the SQL producer's function
        (docs/wire-format.md): one statement per job, reading the envelope as every other
        producer's, idempotency keys and ``depends_on`` included; the schema must be migrated
        (the app opens the broker first).
        """
        if not isinstance(connection, psycopg.Connection):
            raise ConfigurationError(
                "connection= takes a psycopg (3) Connection (or an AsyncConnection with "
                f"aenqueue) on the PostgreSQL broker, not {type(connection).__name__}"
            )
        if not requests:
            return []
        if connection.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            raise BrokerError("connection=: your transaction has failed; roll it back first")
        sql = self._q("SELECT {schema}.dromos_enqueue(%s::jsonb, %s)")

        def insert() -> list[str]:
            cur = connection.cursor(row_factory=tuple_row)
            ids = []
            for r in requests:
                row = cur.execute(sql, (r.payload.decode(), r.idempotency_window)).fetchone()
                ids.append(str(row[0]) if row else r.message.id)
            return ids

        try:
            idle = connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            if idle and not connection.autocommit:
                return insert()  # the statements open the transaction the caller commits
            with connection.transaction():
                return insert()
        except psycopg.Error as exc:
            raise BrokerError(f"enqueue in your transaction failed: {exc}") from exc

    async def _insert(
        self, cur: Cursor, requests: Sequence[EnqueueRequest], batch_id: str | None = None
    ) -> list[str]:
        """Insert the jobs on ``cur`` (inside a transaction); the ids, in request order (the
        existing job's for a key still in its window)."""
        ids: list[str] = []
        # In request order (the claim order within a priority): runs of rows without a key,
        # each one INSERT of arrays, and one entry per row with a key or dependencies.
        runs: list[dict[str, list[Any]] | tuple[int, dict[str, Any]]] = []
        plain: dict[str, list[Any]] = {}
        keyed: list[tuple[int, dict[str, Any]]] = []
        created_at, created = None, 0.0
        for index, req in enumerate(requests):
            msg = req.message
            ids.append(msg.id)
            if msg.created_at is not created_at:  # a batch shares one: convert it once
                created_at = msg.created_at
                created = created_at.timestamp()
            eta = None if msg.eta is None else msg.eta.timestamp()
            headers = msg.headers
            key = headers.get("idempotency_key") if headers else None
            callback = headers.get("callback_url") if headers else None
            deps = dependencies(msg) if headers else []
            if key is None and not deps:
                if not plain:
                    plain = {name: [] for name in _PLAIN_ARRAYS}
                    runs.append(plain)
                for name, value in zip(
                    _PLAIN_ARRAYS,
                    (msg.id, msg.task, msg.queue, msg.priority, eta, req.delay, req.payload,
                     created, callback),
                    strict=True,
                ):  # fmt: skip
                    plain[name].append(value)
            else:
                keyed.append((index, {
                    "id": msg.id, "task": msg.task, "queue": msg.queue, "eta": eta,
                    "delay": req.delay, "priority": msg.priority, "payload": req.payload,
                    "created": created, "key": key, "window": req.idempotency_window,
                    "callback": callback, "batch": batch_id, "deps": deps,
                }))  # fmt: skip
                runs.append(keyed[-1])
                plain = {}
        wanted = list(dict.fromkeys(d for _, row in keyed for d in row["deps"]))
        if wanted:  # refused before anything is written
            await cur.execute(self._q(_KNOWN), (wanted,))
            known = {r[0] for r in await cur.fetchall()}
            for dep in wanted:
                if dep not in known:
                    raise DependencyNotFound(dep)
        woken: set[str] = set()
        for run in runs:
            if isinstance(run, dict):
                params = {**run, "work": self.work_channel, "batch": batch_id}
                await cur.execute(self._q(_INSERT_MANY), params)
                continue
            index, row = run
            if row["key"] is not None:
                await cur.execute(self._q(_FORGET_KEY), (row["queue"], row["key"]))
            await cur.execute(self._q(_INSERT_KEYED), row)
            if await cur.fetchone() is not None:
                woken.add(row["queue"])
                if row["deps"]:
                    await self._add_dependencies(cur, row["id"], row["deps"])
                continue
            # The key names a job (perhaps one another transaction just committed: this
            # statement's snapshot is newer than the insert's).
            await cur.execute(self._q(_KEY_HOLDER), (row["queue"], row["key"]))
            found = await cur.fetchone()
            if found is not None:
                ids[index] = found[0]
        if woken:
            await cur.execute(_NOTIFY_QUEUES, (self.work_channel, sorted(woken)))
        return ids

    async def _add_dependencies(self, cur: Cursor, job_id: str, deps: list[str]) -> None:
        """Make the job just inserted wait for ``deps`` (or end it, or leave it ready), in
        the same transaction: migration 0005's ``dromos_add_dependencies``."""
        try:
            await cur.execute(self._q(_ADD_DEPENDENCIES), (job_id, deps))
        except psycopg.errors.NoDataFound as exc:  # one was deleted since the check above
            raise DependencyNotFound(exc.diag.message_detail or "?") from None

    # -- batches ----------------------------------------------------------------------------
    # Counted by the trigger of migration 0003, in whatever statement ends a batch's job.
    async def enqueue_batch(
        self, batch: BatchRecord, requests: Sequence[EnqueueRequest]
    ) -> list[str]:
        record: dict[str, Any] = {"id": batch.id, "total": batch.total}
        callback = batch.callback
        if callback is None:
            record |= dict.fromkeys(("cb_id", "cb_task", "cb_queue", "cb_priority", "cb_head",
                                     "cb_tail", "cb_url"))  # fmt: skip
        else:
            msg = callback.message
            head, found, tail = callback.payload.partition(SUMMARY_PLACEHOLDER)
            record |= {
                "cb_id": msg.id, "cb_task": msg.task, "cb_queue": msg.queue,
                "cb_priority": msg.priority, "cb_head": head, "cb_tail": tail if found else None,
                "cb_url": msg.headers.get("callback_url"),
            }  # fmt: skip
        async with self._cursor(transaction=True) as cur:
            await cur.execute(self._q(_NEW_BATCH), record)
            return await self._insert(cur, requests, batch.id)

    async def batch_status(self, batch_id: str) -> BatchStatus | None:
        row = await self._fetchone(_BATCH_STATUS, (batch_id,))
        if row is None:
            return None
        total, succeeded, failed, cancelled, callback, finished = row
        return BatchStatus(
            id=batch_id, total=total, succeeded=succeeded, failed=failed, cancelled=cancelled,
            callback_id=callback,
            finished_at=None if finished is None else datetime.fromtimestamp(finished, UTC),
        )  # fmt: skip

    async def batch_jobs(self, batch_id: str) -> list[str] | None:
        rows = await self._fetch(_BATCH_JOBS, (batch_id,))
        return [job_id for _, job_id in rows if job_id is not None] if rows else None

    # -- consuming ------------------------------------------------------------------------
    async def claim(
        self, queues: Sequence[str], limit: int, lease: float, worker: str = ""
    ) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        params = {
            "max": self.options.max_recoveries, "ttl": self.options.dead_letter_ttl,
            "done": self.done_channel, "lease": lease, "worker": worker, "limit": limit,
            "queue": queues[0], "queues": list(queues),
        }  # fmt: skip
        claim = _CLAIM_ONE if len(queues) == 1 else _CLAIM_MANY
        # Right after a notification woke the worker, and before anything its wait saw was
        # due, there is no lease to recover and no delayed job to ready: the claim takes the
        # new jobs alone (two statements less before an idle worker starts a job).
        quiet = asyncio.get_running_loop().time() < self._quiet.pop(tuple(queues), 0.0)
        async with self._cursor(transaction=True) as cur:
            if not quiet:
                await cur.execute(self._q(_RECOVER), params)
                await cur.execute(self._q(_PROMOTE))
            await cur.execute(self._q(claim), params)
            rows = await cur.fetchall()
        rows.sort(key=lambda r: (-r[0], r[1]))
        return [Delivery(r[2], r[3], r[4], r[5]) for r in rows]

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        state = await self._state()
        quiet = await self._wait_for_change(
            state.work, list(queues), _NEXT_DUE, list(queues), timeout
        )
        if quiet is not None:
            self._quiet[tuple(queues)] = quiet

    async def _wait_for_change(
        self, notifier: Notifier, keys: list[str], next_due: str, names: list[str], timeout: float
    ) -> float | None:
        """Until a notification on ``keys``, the time the query ``next_due`` (seconds from now,
        given ``names``) says, or ``timeout``; looks again every ``_RECHECK`` seconds in case a
        notification was lost. Woken by a notification, returns until when (loop time) the
        last look found nothing due; else None."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with notifier.listen(keys) as listener:  # before the check: no lost wake-up
            while True:
                looked = loop.time()
                row = await self._fetchone(next_due, {"q": names})
                due = float("inf") if row is None or row[0] is None else float(row[0])
                left = deadline - loop.time()
                if due <= 0 or left <= 0:
                    return None
                if await listener.wait(min(left, due, _RECHECK)):
                    return looked + due

    async def settle(self, outcomes: Sequence[Outcome]) -> int:
        if not outcomes:
            return 0
        outcomes = sorted(outcomes, key=_by_job)
        params: dict[str, Any] = {
            "ids": [o.job_id for o in outcomes],
            "attempts": [o.attempt for o in outcomes],
            "states": [o.state.value for o in outcomes],
            "results": [
                (o.result or b"null") if o.state is _S.SUCCEEDED else None for o in outcomes
            ],
            "errors": [error_json(o.error) for o in outcomes],
            "etas": [o.eta for o in outcomes],
            "delays": [o.delay for o in outcomes],
            "ttl": self.options.result_ttl,
            "dead_ttl": self.options.dead_letter_ttl,
            "done": self.done_channel,
            "work": self.work_channel,
        }
        row = await self._fetchone(_SETTLE, params)
        return int(row[0]) if row else 0

    async def extend(self, leases: Sequence[Lease], lease: float) -> HeartbeatReply:
        if not leases:
            return HeartbeatReply()
        leases = sorted(leases, key=_by_job)
        rows = await self._fetch(_EXTEND, {
            "ids": [h.job_id for h in leases], "attempts": [h.attempt for h in leases],
            "lease": lease,
        })  # fmt: skip
        held = {job_id for job_id, _ in rows}
        lost = frozenset(h.job_id for h in leases if h.job_id not in held)
        return HeartbeatReply(lost, frozenset(job_id for job_id, flag in rows if flag))

    async def release(
        self, leases: Sequence[Lease], eta: float | None = None, *, delay: float | None = None
    ) -> None:
        if leases:
            leases = sorted(leases, key=_by_job)
            await self._execute(_RELEASE, {
                "ids": [h.job_id for h in leases], "attempts": [h.attempt for h in leases],
                "work": self.work_channel, "eta": eta, "delay": delay,
            })  # fmt: skip

    async def progress(self, updates: Sequence[ProgressUpdate]) -> None:
        if updates:
            updates = sorted(updates, key=_by_job)
            await self._execute(_PROGRESS, {
                "ids": [u.job_id for u in updates], "attempts": [u.attempt for u in updates],
                "progress": [u.progress for u in updates],
                "messages": [None if u.message is None else clean(u.message) for u in updates],
            })  # fmt: skip

    # -- status and control ---------------------------------------------------------------
    async def status(self, job_id: str) -> JobStatus | None:
        row = await self._fetchone(
            f"SELECT {_STATUS_COLUMNS} FROM {{jobs}} WHERE id = %s", (job_id,)
        )
        return None if row is None else _status(row)

    async def wait(self, job_id: str, timeout: float | None) -> JobStatus | None:
        state = await self._state()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        with state.done.listen((job_id,)) as listener:  # before the first read of the status
            while True:
                status = await self.status(job_id)
                if status is None or status.state.terminal:
                    return status
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    return None
                await listener.wait(_RECHECK if left is None else min(left, _RECHECK))

    async def cancel(self, job_id: str) -> JobState | None:
        params = {"id": job_id, "ttl": self.options.result_ttl, "done": self.done_channel}
        # Separate statements: each sees what the one before it (or a claim) committed, so a
        # job claimed meanwhile is flagged instead.
        async with self._cursor(transaction=True) as cur:
            await cur.execute(self._q(_CANCEL_WAITING), params)
            await cur.execute(self._q(_CANCEL_RUNNING), params)
            await cur.execute(self._q("SELECT state FROM {jobs} WHERE id = %(id)s"), params)
            row = await cur.fetchone()
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
        where, params = job_filters("%s", state, task, queue, before, time.time())
        sql = f"SELECT {_STATUS_COLUMNS} FROM {{jobs}}{where} ORDER BY id DESC LIMIT %s"
        rows = await self._fetch(sql, (*params, limit))
        return [_status(r) for r in rows]

    async def queues(self) -> list[QueueStats]:
        rows = await self._fetch(
            f"SELECT queue, {shown_state('%s')} AS shown, count(*) FROM {{jobs}} "
            "GROUP BY queue, shown ORDER BY queue",
            (time.time(),),
        )
        counts: dict[str, dict[str, int]] = {}
        for queue, state, n in rows:
            counts.setdefault(queue, {})[state] = n
        return [QueueStats(q, c) for q, c in sorted(counts.items())]

    async def replay(self, job_ids: Sequence[str] | None = None) -> list[str]:
        rows = await self._fetch(_REPLAY, {
            "all": job_ids is None, "ids": list(job_ids or ()), "work": self.work_channel,
        })  # fmt: skip
        return [r[0] for r in rows]

    async def webhooks_due(self, limit: int, lease: float) -> list[WebhookDue]:
        if limit <= 0:
            return []
        rows = await self._fetch(_WEBHOOKS_DUE, {"limit": limit, "lease": lease})
        rows.sort(key=lambda r: r[0])  # oldest first
        return [
            WebhookDue(job_id, url or "", ended if ended is not None else now, n)
            for _, job_id, url, ended, n, now in rows
        ]

    async def webhook_attempted(
        self,
        job_id: str,
        attempt: WebhookAttempt,
        retry_at: float | None,
        *,
        retry_in: float | None = None,
    ) -> None:
        retry_in = None if retry_at is None else retry_in
        await self._execute(
            _WEBHOOK_ATTEMPTED,
            (retry_in, retry_at, clean(webhook_attempt_json(attempt)), job_id),
        )

    async def hold_lease(self, name: str, holder: str, ttl: float) -> float | None:
        async with self._cursor(transaction=True) as cur:
            await cur.execute(self._q(_LEASE_ROW), (name,))
            await cur.execute(self._q(_LEASE_LOCK), (name,))
            row = await cur.fetchone()
            assert row is not None  # inserted above or there already, and locked
            current, until, renewed, now = row
            if current not in ("", holder) and until > now:
                return None
            await cur.execute(self._q(_LEASE_TAKE), (holder, ttl, name))
        return float(renewed)

    async def drop_lease(self, name: str, holder: str) -> None:
        await self._execute(  # free at once; when it was last held stays
            "UPDATE {leases} SET holder = '', until = 0 WHERE name = %s AND holder = %s",
            (name, holder),
        )

    async def throttle(
        self, key: str, limit: int, period: float, hold: float = float("inf")
    ) -> float:
        rows = await self._fetch(
            "SELECT {schema}.dromos_throttle(%s, %s, %s, %s)",
            (key, limit, period, None if math.isinf(hold) else hold),
        )
        return float(rows[0][0])

    # -- relay mode (docs/design/rabbitmq.md §3; memory.py is the reference) -----------------
    async def enqueue_unsent(
        self, requests: Sequence[EnqueueRequest], hold: float
    ) -> list[Recorded]:
        if not requests:
            return []
        async with self._cursor(transaction=True) as cur:
            ids = await self._insert(cur, requests)
            mine = [i for i, r in zip(ids, requests, strict=True) if i == r.message.id]
            await cur.execute(
                self._q(
                    "UPDATE {jobs} SET sent_until = {now} + %s WHERE id = ANY(%s) "
                    "AND state = 'queued'"
                ),
                (hold, mine),
            )
            await cur.execute(self._q("SELECT id, state, eta FROM {jobs} WHERE id = ANY(%s)"),
                              (ids,))  # fmt: skip
            found = {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
        out = []
        for job_id, req in zip(ids, requests, strict=True):
            state, eta = found.get(job_id, ("", None))
            new = job_id == req.message.id
            out.append(Recorded(job_id, new and state == "queued",
                                eta if state == "scheduled" else None))  # fmt: skip
        return out

    async def mark_sent(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            # SKIP LOCKED: a row another transaction holds (a claim, a cancel) needs no mark
            # (and a mark skipped costs at most a duplicate message after the hold), and a
            # mark that waited would hold the row's lock in line, where the webhook outbox's
            # and the relay's SKIP LOCKED readers would pass the row over.
            await self._execute(
                "UPDATE {jobs} SET sent_until = 1e308 WHERE seq IN (SELECT seq FROM {jobs} "
                "WHERE id = ANY(%s) AND state = 'queued' AND sent_until < 1e308 "
                "FOR UPDATE SKIP LOCKED)",  # held: not claimed and readied again since
                (list(job_ids),),
            )

    async def relay_due(self, limit: int, hold: float) -> RelayBatch:
        params = {
            "max": self.options.max_recoveries, "ttl": self.options.dead_letter_ttl,
            "done": self.done_channel, "limit": limit, "hold": hold,
        }  # fmt: skip
        async with self._cursor(transaction=True) as cur:
            await cur.execute(self._q(_RECOVER), params)
            await cur.execute(self._q(_PROMOTE))
            await cur.execute(self._q(_RELAY_TAKE), params)
            rows = await cur.fetchall()
            await cur.execute(self._q(_RELAY_AHEAD))
            ahead = await cur.fetchone()
        assert ahead is not None
        now, next_due = float(ahead[0]), ahead[1]
        rows.sort(key=lambda r: (-r[0], r[1]))
        jobs = [RelayJob(r[2], r[3], r[0], bytes(r[4])) for r in rows]
        return RelayBatch(jobs, now if len(jobs) >= limit else next_due, now)

    async def claim_ids(
        self, job_ids: Sequence[str], lease: float, worker: str = ""
    ) -> list[Delivery | Gone | Missing]:
        params = {
            "max": self.options.max_recoveries, "ttl": self.options.dead_letter_ttl,
            "done": self.done_channel, "lease": lease, "worker": worker, "ids": list(job_ids),
        }  # fmt: skip
        async with self._cursor(transaction=True) as cur:
            await cur.execute(self._q(_RECOVER), params)
            await cur.execute(self._q(_PROMOTE))
            await cur.execute(self._q(_CLAIM_IDS), params)
            taken = {r[0]: Delivery(r[0], r[1], r[2], bytes(r[3])) for r in await cur.fetchall()}
            await cur.execute(self._q("SELECT id, state FROM {jobs} WHERE id = ANY(%(ids)s)"),
                              params)  # fmt: skip
            states = {r[0]: r[1] for r in await cur.fetchall()}
        out: list[Delivery | Gone | Missing] = []
        for job_id in job_ids:
            if job_id in taken:
                out.append(taken.pop(job_id))  # a second message of the job: Gone below
            elif job_id in states:
                out.append(Gone(job_id, JobState(states[job_id])))
            else:
                out.append(Missing(job_id))
        return out

    async def withdraw(self, job_ids: Sequence[str], reason: str) -> None:
        if not job_ids:
            return
        error = error_json(JobError(type="EnqueueFailed", message=reason, attempt=0))
        await self._execute(_WITHDRAW, {
            "ids": list(job_ids), "error": error, "ttl": self.options.result_ttl,
            "done": self.done_channel,
        })  # fmt: skip

    async def purge(self) -> int:
        async with self._cursor(transaction=True) as cur:
            await cur.execute(self._q("DELETE FROM {rates} WHERE until <= {now}"))
            await cur.execute(  # a batch's record lives as long as its results
                self._q("DELETE FROM {batches} WHERE finished_at < {now} - %s"),
                (self.options.result_ttl,),
            )
            await cur.execute(self._q("DELETE FROM {jobs} WHERE expires_at < {now}"))
            return cur.rowcount
