"""The event bus of the PostgreSQL broker: the model of ``memory_events.py`` in three tables.

``dromos_events`` is the log (``seq`` is the key of an event); ``dromos_event_groups`` holds
each group's patterns and position (the last ``seq`` it looked at); ``dromos_event_claims``
holds a group's events in flight. As on SQLite, a claim is one transaction: it locks the
group's row (``FOR UPDATE``: a group's consumers claim one at a time, other groups go on),
redelivers what is due, then reads new events after the position, matches them against the
patterns in Python and moves the position past everything read.

Commit order must be ``seq`` order, or a claim could move a group's position past an event
whose transaction has not committed yet, and that group would never see it: publishers hold
a transaction-level advisory lock of the schema from before their insert until they commit.
A publish also ``NOTIFY``s the schema's events channel; waiting consumers wake on it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgspec
from psycopg import AsyncCursor
from psycopg.rows import TupleRow

from dromos.brokers.base import (
    BrokerOptions,
    EventDeadLetter,
    EventDelivery,
    EventOutcome,
    EventRecord,
    GroupStats,
    dead_letter_from_row,
    event_seq,
)
from dromos.brokers.memory_events import poison_error
from dromos.events.topics import matches_any
from dromos.job import JobError

__all__ = ["PostgresEventBus", "clean", "error_json"]

_BUS = "events"
_errors = msgspec.json.Decoder(list[JobError])
_encode = msgspec.json.Encoder().encode
_TRIM_EVERY = 1000  # publishes between two trims of the log

_PUBLISH = (
    "INSERT INTO {events} (id, topic, payload, published_at) SELECT e.id, e.topic, e.payload, "
    "{now} FROM unnest(%(ids)s::text[], %(topics)s::text[], %(payloads)s::bytea[]) "
    "WITH ORDINALITY AS e(id, topic, payload, n) ORDER BY e.n"
)
_TRIM = "DELETE FROM {events} WHERE published_at < {now} - %s"
_TRIM_CLAIMS = (
    "DELETE FROM {claims} c WHERE NOT EXISTS (SELECT 1 FROM {events} e WHERE e.seq = c.seq) "
    "AND c.seq < (SELECT coalesce(min(seq), 0) FROM {events})"
)
_JOIN = (
    "INSERT INTO {groups} AS g (name, patterns, position, created_at) VALUES (%(name)s, "
    "%(patterns)s::jsonb, CASE WHEN %(start)s = 'latest' THEN (SELECT coalesce(max(seq), 0) "
    "FROM {events}) WHEN %(start)s = 'earliest' THEN 0 ELSE (SELECT coalesce(max(seq), 0) "
    "FROM {events} WHERE published_at < %(since)s) END, {now}) "
    "ON CONFLICT (name) DO UPDATE SET patterns = excluded.patterns"
)
_AGAIN = (
    "SELECT c.seq, c.state, c.attempt, c.recoveries, e.topic, e.payload, c.base "
    "FROM {claims} c LEFT JOIN {events} e ON e.seq = c.seq "
    "WHERE c.grp = %s AND ((c.state = 'running' AND c.due < {now}) OR "
    "(c.state = 'retrying' AND c.due <= {now})) ORDER BY c.seq LIMIT %s"
)
_REDELIVER = (
    "UPDATE {claims} c SET state = 'running', attempt = r.attempt, due = {now} + %(lease)s, "
    "recoveries = r.recoveries FROM unnest(%(seqs)s::bigint[], %(attempts)s::int[], "
    "%(recoveries)s::int[]) AS r(seq, attempt, recoveries) WHERE c.grp = %(group)s "
    "AND c.seq = r.seq"
)
_POISON = (
    "UPDATE {claims} c SET state = 'dead', failed_at = {now}, recoveries = r.recoveries, "
    "errors = coalesce(c.errors, '[]') || jsonb_build_array(r.error) FROM unnest("
    "%(seqs)s::bigint[], %(recoveries)s::int[], %(errors)s::jsonb[]) AS r(seq, recoveries, error) "
    "WHERE c.grp = %(group)s AND c.seq = r.seq"
)
_FORGET = "DELETE FROM {claims} WHERE grp = %s AND seq = ANY(%s)"
_TAKE_NEW = (
    "INSERT INTO {claims} (grp, seq, state, attempt, due) SELECT %s, s, 'running', 1, "
    "{now} + %s FROM unnest(%s::bigint[]) AS s"
)
_HELD = "c.grp = %(group)s AND c.seq = o.seq AND c.state = 'running' AND c.attempt = o.attempt"
_ACK = (
    "DELETE FROM {claims} c USING unnest(%(seqs)s::bigint[], %(attempts)s::int[]) "
    f"AS o(seq, attempt) WHERE {_HELD}"
)
_FAIL = (
    "UPDATE {claims} c SET state = CASE WHEN o.retry_at IS NULL THEN 'dead' ELSE 'retrying' END, "
    "due = coalesce({now} + o.retry_in, o.retry_at, c.due), "
    "failed_at = CASE WHEN o.retry_at IS NULL THEN {now} ELSE c.failed_at END, "
    "errors = coalesce(c.errors, '[]') || jsonb_build_array(o.error) FROM unnest("
    "%(seqs)s::bigint[], %(attempts)s::int[], %(errors)s::jsonb[], %(retry_at)s::float8[], "
    f"%(retry_in)s::float8[]) AS o(seq, attempt, error, retry_at, retry_in) WHERE {_HELD}"
)
# Seconds until a claim of one of the groups may find events: 0 when one has events after its
# position, else until its next retry or lease end (NULL: nothing comes due).
_NEXT_EVENT_DUE = (
    "SELECT CASE WHEN EXISTS (SELECT 1 FROM {groups} g WHERE g.name = ANY(%(q)s) AND "
    "g.position < (SELECT coalesce(max(seq), 0) FROM {events})) THEN 0 ELSE "
    "(SELECT min(due) FROM {claims} WHERE grp = ANY(%(q)s) AND state IN ('running', 'retrying')) "
    "- {now} END"
)
_GROUPS = (
    "SELECT g.name, g.patterns::text, (SELECT count(*) FROM {events} e WHERE e.seq > g.position), "
    "count(c.seq) FILTER (WHERE c.state = 'running'), "
    "count(c.seq) FILTER (WHERE c.state = 'retrying'), "
    "count(c.seq) FILTER (WHERE c.state = 'dead') "
    "FROM {groups} g LEFT JOIN {claims} c ON c.grp = g.name GROUP BY g.name ORDER BY g.name"
)
_DEAD = (
    "SELECT c.seq, e.topic, e.payload, c.attempt, c.errors::text, c.failed_at "
    "FROM {claims} c JOIN {events} e ON e.seq = c.seq "
    "WHERE c.grp = %s AND c.state = 'dead' ORDER BY c.seq LIMIT %s"
)
_REPLAY = (
    "WITH again AS (UPDATE {claims} SET state = 'retrying', due = {now}, base = attempt, "
    "recoveries = 0, failed_at = NULL WHERE grp = %(group)s AND state = 'dead' "
    "AND (%(all)s OR seq = ANY(%(seqs)s)) RETURNING 1) "
    "SELECT count(*), (SELECT count(pg_notify(%(bus)s, '')) FROM (SELECT 1 FROM again LIMIT 1) w) "
    "FROM again"
)


def clean(text: str) -> str:
    """Text PostgreSQL can store: a NUL character (from an exception's message, say) cannot
    be in a text or jsonb value."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def error_json(error: JobError | None) -> str | None:
    """An error as the JSON its jsonb array takes."""
    if error is None:
        return None
    if "\x00" in error.message or "\x00" in (error.traceback or "") or "\x00" in error.type:
        error = msgspec.structs.replace(
            error, type=clean(error.type), message=clean(error.message),
            traceback=None if error.traceback is None else clean(error.traceback),
        )  # fmt: skip
    return _encode(error).decode()


def _seqs(keys: Sequence[str]) -> list[int]:
    """Event keys as ``seq`` numbers; a key that is not one names no event."""
    return [seq for seq in map(event_seq, keys) if seq is not None]


class PostgresEventBus:
    """Mixed into ``PostgresBroker``: the bus methods of ``Broker``."""

    options: BrokerOptions
    bus_channel: str
    _publish_lock: int
    _state: Callable[[], Coroutine[Any, Any, Any]]
    _q: Callable[[str], str]
    _cursor: Callable[..., AbstractAsyncContextManager[AsyncCursor[TupleRow]]]
    _fetch: Callable[..., Coroutine[Any, Any, list[tuple[Any, ...]]]]
    _fetchone: Callable[..., Coroutine[Any, Any, tuple[Any, ...] | None]]
    _execute: Callable[..., Coroutine[Any, Any, int]]
    _wait_for_change: Callable[..., Coroutine[Any, Any, float | None]]
    _published = 0

    async def publish(self, events: Sequence[EventRecord]) -> None:
        if not events:
            return
        async with self._cursor(transaction=True) as cur:
            # Held until the commit: seq order is commit order (see the module docstring).
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._publish_lock,))
            await cur.execute(self._q(_PUBLISH), {
                "ids": [e.id for e in events], "topics": [e.topic for e in events],
                "payloads": [e.payload for e in events],
            })  # fmt: skip
            await cur.execute("SELECT pg_notify(%s, '')", (self.bus_channel,))
            self._published += len(events)
            if self._published >= _TRIM_EVERY:
                self._published = 0
                await cur.execute(self._q(_TRIM), (self.options.event_retention,))
                await cur.execute(self._q(_TRIM_CLAIMS))

    def publish_blocking(self, events: Sequence[EventRecord]) -> bool:
        return False  # the async path serves: no blocking client here

    async def join_group(self, group: str, patterns: Sequence[str], start: str | float) -> None:
        named = start if start in ("latest", "earliest") else "time"
        since = float(start) if named == "time" else 0.0
        await self._execute(_JOIN, {
            "name": group, "patterns": json.dumps(list(patterns)), "start": named,
            "since": since,
        })  # fmt: skip

    async def leave_group(self, group: str) -> None:
        async with self._cursor(transaction=True) as cur:
            await cur.execute(self._q("DELETE FROM {claims} WHERE grp = %s"), (group,))
            await cur.execute(self._q("DELETE FROM {groups} WHERE name = %s"), (group,))

    async def claim_events(self, group: str, limit: int, lease: float) -> list[EventDelivery]:
        if limit <= 0:
            return []
        async with self._cursor(transaction=True) as cur:
            await cur.execute(
                self._q("SELECT patterns::text, position FROM {groups} WHERE name = %s FOR UPDATE"),
                (group,),
            )
            row = await cur.fetchone()
            if row is None:
                return []
            patterns, position = tuple(json.loads(row[0])), int(row[1])
            out = await self._redeliver(cur, group, limit, lease)
            if len(out) < limit:
                out += await self._claim_new(
                    cur, group, patterns, position, limit - len(out), lease
                )
        return out

    async def _redeliver(
        self, cur: AsyncCursor[TupleRow], group: str, limit: int, lease: float
    ) -> list[EventDelivery]:
        """Retries that are due, and events whose lease ran out (a consumer died: poison
        after ``max_recoveries`` such expiries)."""
        await cur.execute(self._q(_AGAIN), (group, limit))
        rows = await cur.fetchall()
        out: list[EventDelivery] = []
        gone: list[int] = []
        again: dict[str, list[int]] = {"seqs": [], "attempts": [], "recoveries": []}
        dead: dict[str, list[Any]] = {"seqs": [], "recoveries": [], "errors": []}
        for seq, state, attempt, recoveries, topic, payload, base in rows:
            if topic is None:  # past the bus's retention: nothing left to deliver
                gone.append(seq)
                continue
            if state == "running":
                recoveries += 1
                if recoveries > self.options.max_recoveries:
                    dead["seqs"].append(seq)
                    dead["recoveries"].append(recoveries)
                    dead["errors"].append(_encode(poison_error(recoveries, attempt)).decode())
                    continue
            again["seqs"].append(seq)
            again["attempts"].append(attempt + 1)
            again["recoveries"].append(recoveries)
            out.append(
                EventDelivery(str(seq), topic, bytes(payload), attempt + 1, attempt + 1 - base)
            )
        if gone:
            await cur.execute(self._q(_FORGET), (group, gone))
        if dead["seqs"]:
            await cur.execute(self._q(_POISON), {**dead, "group": group})
        if again["seqs"]:
            await cur.execute(self._q(_REDELIVER), {**again, "group": group, "lease": lease})
        return out

    async def _claim_new(
        self,
        cur: AsyncCursor[TupleRow],
        group: str,
        patterns: tuple[str, ...],
        position: int,
        limit: int,
        lease: float,
    ) -> list[EventDelivery]:
        """Events after the position that match the patterns, oldest first; the position
        moves past every event read, matching or not."""
        out: list[EventDelivery] = []
        taken: list[int] = []
        scan = max(4 * limit, 256)
        start = position
        while len(out) < limit:
            await cur.execute(
                self._q(
                    "SELECT seq, topic, payload FROM {events} WHERE seq > %s ORDER BY seq LIMIT %s"
                ),
                (position, scan),
            )
            rows = await cur.fetchall()
            for seq, topic, payload in rows:
                if len(out) >= limit:
                    break
                position = seq
                if matches_any(patterns, topic):
                    taken.append(seq)
                    out.append(EventDelivery(str(seq), topic, bytes(payload), 1, 1))
            if len(rows) < scan:
                break
        if taken:
            await cur.execute(self._q(_TAKE_NEW), (group, lease, taken))
        if position != start:
            await cur.execute(
                self._q("UPDATE {groups} SET position = %s WHERE name = %s"), (position, group)
            )
        return out

    async def settle_events(self, group: str, outcomes: Sequence[EventOutcome]) -> int:
        # In seq order, as a claim writes them: one lock order (see postgres._by_job).
        outcomes = sorted((o for o in outcomes if o.key.isdigit()), key=lambda o: int(o.key))
        acks = [o for o in outcomes if o.error is None]
        fails = [o for o in outcomes if o.error is not None]
        if not acks and not fails:
            return 0
        applied = 0
        async with self._cursor(transaction=True) as cur:
            if acks:
                await cur.execute(self._q(_ACK), {
                    "group": group, "seqs": [int(o.key) for o in acks],
                    "attempts": [o.attempt for o in acks],
                })  # fmt: skip
                applied += cur.rowcount
            if fails:
                await cur.execute(self._q(_FAIL), {
                    "group": group, "seqs": [int(o.key) for o in fails],
                    "attempts": [o.attempt for o in fails],
                    "errors": [error_json(o.error) for o in fails],
                    "retry_at": [o.retry_at for o in fails],
                    "retry_in": [o.retry_in for o in fails],
                })  # fmt: skip
                failed = cur.rowcount
                applied += failed
                if failed and any(o.retry_at is not None for o in fails):
                    # A retry may be due sooner than a waiting consumer thinks.
                    await cur.execute("SELECT pg_notify(%s, '')", (self.bus_channel,))
        return applied

    async def wait_for_events(self, groups: Sequence[str], timeout: float) -> None:
        state = await self._state()
        await self._wait_for_change(state.bus, [_BUS], _NEXT_EVENT_DUE, list(groups), timeout)

    async def event_groups(self) -> list[GroupStats]:
        rows = await self._fetch(_GROUPS)
        return [
            GroupStats(
                group=name,
                patterns=tuple(json.loads(patterns)),
                lag=lag,
                running=running,
                retrying=retrying,
                dead=dead,
            )
            for name, patterns, lag, running, retrying, dead in rows
        ]

    async def event_dead_letters(self, group: str, limit: int = 100) -> list[EventDeadLetter]:
        rows = await self._fetch(_DEAD, (group, limit))
        return [dead_letter_from_row(group, row) for row in rows]

    async def replay_events(self, group: str, keys: Sequence[str] | None = None) -> int:
        row = await self._fetchone(_REPLAY, {
            "group": group, "all": keys is None, "seqs": _seqs(keys or ()),
            "bus": self.bus_channel,
        })  # fmt: skip
        return int(row[0]) if row else 0
