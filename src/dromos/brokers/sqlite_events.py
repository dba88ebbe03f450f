"""The event bus of the SQLite broker: the same model as ``memory_events.py``, in three tables.

``dromos_events`` is the log (``seq`` is the key of an event); ``dromos_event_groups`` holds
each group's patterns and position (the last ``seq`` it looked at); ``dromos_event_claims``
holds a group's events in flight. A claim is one write transaction: redeliveries first, then
new events read after the position, matched against the patterns in Python, and the
position moved past everything read. Consumers in other processes learn of new events as they
learn of jobs: ``PRAGMA data_version`` changes when another connection commits.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractContextManager
from typing import Any

import msgspec

from dromos.brokers._notify import Notifier
from dromos.brokers.base import (
    BrokerOptions,
    EventDeadLetter,
    EventDelivery,
    EventOutcome,
    EventRecord,
    GroupStats,
    dead_letter_from_row,
    due_at,
    event_seq,
)
from dromos.brokers.memory_events import poison_error
from dromos.events.topics import matches_any
from dromos.job import JobError

__all__ = ["SQLiteEventBus"]

_BUS = "events"
_errors = msgspec.json.Decoder(list[JobError])
_encode = msgspec.json.Encoder().encode
_TRIM_EVERY = 1000  # publishes between two trims of the log


def _append(errors: str | None, error: JobError) -> str:
    return _encode([*(_errors.decode(errors) if errors else []), error]).decode()


class SQLiteEventBus:
    """Mixed into ``SQLiteBroker``: the bus methods of ``Broker``."""

    options: BrokerOptions
    _work: Notifier

    @property
    def _conn(self) -> sqlite3.Connection:  # SQLiteBroker's connection
        raise NotImplementedError

    _run: Callable[..., Any]
    _write: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _data_version: Callable[[], int]
    _wait_for_change: Callable[..., Coroutine[Any, Any, None]]
    _io_lock: threading.Lock
    _thread: Any
    _db: sqlite3.Connection | None
    _published = 0

    async def publish(self, events: Sequence[EventRecord]) -> None:
        if not events:
            return
        await self._run(self._publish, events)
        self._work.notify([_BUS])

    def publish_blocking(self, events: Sequence[EventRecord]) -> bool:
        # In the caller's thread, as enqueue_blocking: not before open() (nor after close()).
        with self._io_lock:
            if self._thread is None or self._db is None:
                return False
            self._publish(events)
        self._work.notify([_BUS])
        return True

    def _publish(self, events: Sequence[EventRecord]) -> None:
        now = time.time()
        with self._write() as db:
            db.executemany(
                "INSERT INTO dromos_events (id, topic, payload, published_at) VALUES (?,?,?,?)",
                [(e.id, e.topic, e.payload, now) for e in events],
            )
            self._published += len(events)
            if self._published >= _TRIM_EVERY:
                self._published = 0
                horizon = now - self.options.event_retention
                db.execute("DELETE FROM dromos_events WHERE published_at < ?", (horizon,))
                db.execute(
                    "DELETE FROM dromos_event_claims WHERE seq NOT IN (SELECT seq FROM "
                    "dromos_events) AND seq < (SELECT coalesce(min(seq), 0) FROM dromos_events)"
                )

    async def join_group(self, group: str, patterns: Sequence[str], start: str | float) -> None:
        def join() -> None:
            with self._write() as db:
                listed = json.dumps(list(patterns))
                row = db.execute(
                    "UPDATE dromos_event_groups SET patterns = ? WHERE name = ? RETURNING 1",
                    (listed, group),
                ).fetchone()
                if row is not None:
                    return
                if start == "latest":
                    query, args = "SELECT coalesce(max(seq), 0) FROM dromos_events", ()
                elif start == "earliest":
                    query, args = "SELECT 0", ()
                else:
                    query = "SELECT coalesce(max(seq), 0) FROM dromos_events WHERE published_at < ?"
                    args = (float(start),)  # type: ignore[assignment]
                position = db.execute(query, args).fetchone()[0]
                db.execute(
                    "INSERT INTO dromos_event_groups (name, patterns, position, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (group, listed, position, time.time()),
                )

        await self._run(join)

    async def leave_group(self, group: str) -> None:
        def leave() -> None:
            with self._write() as db:
                db.execute("DELETE FROM dromos_event_claims WHERE grp = ?", (group,))
                db.execute("DELETE FROM dromos_event_groups WHERE name = ?", (group,))

        await self._run(leave)

    async def claim_events(self, group: str, limit: int, lease: float) -> list[EventDelivery]:
        if limit <= 0:
            return []
        out: list[EventDelivery] = await self._run(self._claim_events, group, limit, lease)
        return out

    def _claim_events(self, group: str, limit: int, lease: float) -> list[EventDelivery]:
        now = time.time()
        out: list[EventDelivery] = []
        with self._write() as db:
            row = db.execute(
                "SELECT patterns, position FROM dromos_event_groups WHERE name = ?", (group,)
            ).fetchone()
            if row is None:
                return out
            patterns, position = tuple(json.loads(row[0])), row[1]
            again = db.execute(
                "SELECT c.seq, c.state, c.attempt, c.recoveries, c.errors, e.topic, e.payload, "
                "c.base "
                "FROM dromos_event_claims c LEFT JOIN dromos_events e ON e.seq = c.seq "
                "WHERE c.grp = ? AND ((c.state = 'running' AND c.due < ?) OR "
                "(c.state = 'retrying' AND c.due <= ?)) ORDER BY c.seq LIMIT ?",
                (group, now, now, limit),
            ).fetchall()
            for seq, state, attempt, recoveries, errors, topic, payload, base in again:
                if topic is None:  # past the bus's retention: nothing left to deliver
                    db.execute("DELETE FROM dromos_event_claims WHERE grp = ? AND seq = ?",
                               (group, seq))  # fmt: skip
                    continue
                if state == "running":
                    recoveries += 1
                    if recoveries > self.options.max_recoveries:
                        db.execute(
                            "UPDATE dromos_event_claims SET state = 'dead', failed_at = ?, "
                            "recoveries = ?, errors = ? WHERE grp = ? AND seq = ?",
                            (now, recoveries, _append(errors, poison_error(recoveries, attempt)),
                             group, seq),
                        )  # fmt: skip
                        continue
                db.execute(
                    "UPDATE dromos_event_claims SET state = 'running', attempt = ?, due = ?, "
                    "recoveries = ? WHERE grp = ? AND seq = ?",
                    (attempt + 1, now + lease, recoveries, group, seq),
                )
                tries = attempt + 1 - base
                out.append(EventDelivery(str(seq), topic, bytes(payload), attempt + 1, tries))
            scan = max(4 * limit, 256)
            while len(out) < limit:
                rows = db.execute(
                    "SELECT seq, topic, payload FROM dromos_events WHERE seq > ? ORDER BY seq "
                    "LIMIT ?",
                    (position, scan),
                ).fetchall()
                taken = []
                for seq, topic, payload in rows:
                    if len(out) >= limit:
                        break
                    position = seq
                    if matches_any(patterns, topic):
                        taken.append((group, seq, now + lease))
                        out.append(EventDelivery(str(seq), topic, bytes(payload), 1, 1))
                db.executemany(
                    "INSERT INTO dromos_event_claims (grp, seq, state, attempt, due) "
                    "VALUES (?, ?, 'running', 1, ?)",
                    taken,
                )
                if len(rows) < scan:
                    break
            db.execute(
                "UPDATE dromos_event_groups SET position = ? WHERE name = ?", (position, group)
            )
        return out

    async def settle_events(self, group: str, outcomes: Sequence[EventOutcome]) -> int:
        applied: int = await self._run(self._settle_events, group, outcomes)
        if applied and any(o.retry_at is not None for o in outcomes):
            self._work.notify([_BUS])
        return applied

    def _settle_events(self, group: str, outcomes: Sequence[EventOutcome]) -> int:
        now = time.time()
        applied = 0
        held = "grp = ? AND seq = ? AND state = 'running' AND attempt = ?"
        with self._write() as db:
            for o in outcomes:
                seq = event_seq(o.key)
                if seq is None:
                    continue
                where = (group, seq, o.attempt)
                if o.error is None:
                    cur = db.execute(f"DELETE FROM dromos_event_claims WHERE {held}", where)
                    applied += cur.rowcount
                    continue
                row = db.execute(f"SELECT errors FROM dromos_event_claims WHERE {held}", where)
                found = row.fetchone()
                if found is None:
                    continue
                errors = _append(found[0], o.error)
                if o.retry_at is not None:
                    db.execute(
                        f"UPDATE dromos_event_claims SET state = 'retrying', due = ?, errors = ? "
                        f"WHERE {held}",
                        (due_at(now, o.retry_at, o.retry_in), errors, *where),
                    )
                else:
                    db.execute(
                        f"UPDATE dromos_event_claims SET state = 'dead', failed_at = ?, "
                        f"errors = ? WHERE {held}",
                        (now, errors, *where),
                    )
                applied += 1
        return applied

    async def wait_for_events(self, groups: Sequence[str], timeout: float) -> None:
        await self._wait_for_change([_BUS], self._next_event_due, list(groups), timeout)

    def _next_event_due(self, groups: list[str]) -> float:
        """0 when one of ``groups`` has events after its position; else the next retry or
        lease end among them."""
        db = self._conn
        marks = ",".join("?" * len(groups))
        unseen = db.execute(
            f"SELECT 1 FROM dromos_event_groups g WHERE g.name IN ({marks}) AND g.position < "
            "(SELECT coalesce(max(seq), 0) FROM dromos_events) LIMIT 1",
            groups,
        ).fetchone()
        if unseen is not None:
            return 0.0
        row = db.execute(
            f"SELECT min(due) FROM dromos_event_claims WHERE grp IN ({marks}) AND "
            "state IN ('running', 'retrying')",
            groups,
        ).fetchone()
        return float(row[0]) if row[0] is not None else float("inf")

    async def event_groups(self) -> list[GroupStats]:
        def groups() -> list[GroupStats]:
            db = self._conn
            out = []
            for name, patterns, position in db.execute(
                "SELECT name, patterns, position FROM dromos_event_groups ORDER BY name"
            ).fetchall():
                lag = db.execute(
                    "SELECT count(*) FROM dromos_events WHERE seq > ?", (position,)
                ).fetchone()[0]
                counts = dict(db.execute(
                    "SELECT state, count(*) FROM dromos_event_claims WHERE grp = ? GROUP BY state",
                    (name,),
                ).fetchall())  # fmt: skip
                out.append(GroupStats(
                    group=name, patterns=tuple(json.loads(patterns)), lag=lag,
                    running=counts.get("running", 0), retrying=counts.get("retrying", 0),
                    dead=counts.get("dead", 0),
                ))  # fmt: skip
            return out

        result: list[GroupStats] = await self._run(groups)
        return result

    async def event_dead_letters(self, group: str, limit: int = 100) -> list[EventDeadLetter]:
        def dead() -> list[EventDeadLetter]:
            rows = self._conn.execute(
                "SELECT c.seq, e.topic, e.payload, c.attempt, c.errors, c.failed_at "
                "FROM dromos_event_claims c JOIN dromos_events e ON e.seq = c.seq "
                "WHERE c.grp = ? AND c.state = 'dead' ORDER BY c.seq LIMIT ?",
                (group, limit),
            ).fetchall()
            return [dead_letter_from_row(group, row) for row in rows]

        result: list[EventDeadLetter] = await self._run(dead)
        return result

    async def replay_events(self, group: str, keys: Sequence[str] | None = None) -> int:
        def replay() -> int:
            now = time.time()
            with self._write() as db:
                sql = (
                    "UPDATE dromos_event_claims SET state = 'retrying', due = ?, base = attempt, "
                    "recoveries = 0, failed_at = NULL WHERE grp = ? AND state = 'dead'"
                )
                if keys is None:
                    return int(db.execute(sql, (now, group)).rowcount)
                seqs = [seq for seq in map(event_seq, keys) if seq is not None]
                return sum(db.execute(f"{sql} AND seq = ?", (now, group, q)).rowcount for q in seqs)

        replayed: int = await self._run(replay)
        if replayed:
            self._work.notify([_BUS])
        return replayed
