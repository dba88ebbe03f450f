"""Event parking and the names registry of the SQLite store (``memory_parking.py`` is the
reference; the tables ``dromos_amqp_names`` and ``dromos_amqp_parked`` are described in
``sqlite_schema.sql``). Each call is one transaction of the broker's one connection."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import msgspec

from dromos.brokers.base import (
    EventDeadLetter,
    EventsDue,
    Parked,
    dead_letter_from_row,
    due_at,
)
from dromos.job import JobError

__all__ = ["SQLiteParking"]

_errors = msgspec.json.Decoder(list[JobError])
_encode = msgspec.json.Encoder().encode


def _row(group: str, p: Parked, now: float) -> tuple[Any, ...]:
    failed_at = now if p.due is None else None
    due = None if p.due is None else due_at(now, p.due, p.due_in)
    errors = _encode(p.errors).decode()
    return (group, p.key, p.topic, p.payload, p.attempt, p.base, errors, due, failed_at)


class SQLiteParking:
    """Mixed into ``SQLiteBroker``: the parking methods of ``Broker``."""

    _run: Callable[..., Any]
    _write: Callable[[], AbstractContextManager[sqlite3.Connection]]

    async def names_add(self, kind: str, names: Mapping[str, Sequence[str]]) -> None:
        rows = [(kind, name, json.dumps(list(p))) for name, p in names.items()]

        def add() -> None:
            with self._write() as db:
                db.executemany(
                    "INSERT INTO dromos_amqp_names (kind, name, patterns) VALUES (?, ?, ?) "
                    "ON CONFLICT (kind, name) DO UPDATE SET patterns = excluded.patterns",
                    rows,
                )

        if rows:
            await self._run(add)

    async def names_list(self, kind: str) -> dict[str, tuple[str, ...]]:
        def read() -> list[tuple[str, str]]:
            with self._write() as db:
                return db.execute(
                    "SELECT name, patterns FROM dromos_amqp_names WHERE kind = ?", (kind,)
                ).fetchall()

        rows: list[tuple[str, str]] = await self._run(read)
        return {name: tuple(json.loads(p)) for name, p in rows}

    async def names_drop(self, kind: str, names: Sequence[str]) -> None:
        def drop() -> None:
            with self._write() as db:
                db.executemany(
                    "DELETE FROM dromos_amqp_names WHERE kind = ? AND name = ?",
                    [(kind, n) for n in names],
                )

        if names:
            await self._run(drop)

    async def park_events(self, group: str, parked: Sequence[Parked]) -> None:
        def park() -> None:
            with self._write() as db:
                now = time.time()
                rows = [_row(group, p, now) for p in parked]
                db.executemany(
                    "INSERT OR REPLACE INTO dromos_amqp_parked (grp, key, topic, payload, "
                    "attempt, base, errors, due, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )

        if parked:
            await self._run(park)

    async def events_due(self, limit: int, hold: float) -> EventsDue:
        def take() -> EventsDue:
            with self._write() as db:
                now = time.time()
                rows = db.execute(
                    "SELECT grp, key, topic, payload, attempt, errors, base FROM "
                    "dromos_amqp_parked WHERE due IS NOT NULL AND due <= ? "
                    "ORDER BY due, grp, key LIMIT ?",
                    (now, max(limit, 0)),
                ).fetchall()
                db.executemany(
                    "UPDATE dromos_amqp_parked SET due = ? WHERE grp = ? AND key = ?",
                    [(now + hold, r[0], r[1]) for r in rows],
                )
                ahead = db.execute(
                    "SELECT min(due) FROM dromos_amqp_parked WHERE due IS NOT NULL AND due > ?",
                    (now,),
                ).fetchone()[0]
            entries = [
                (
                    r[0],
                    Parked(
                        r[1], r[2], bytes(r[3]), r[4], _errors.decode(r[5]), now + hold, base=r[6]
                    ),
                )
                for r in rows
            ]
            return EventsDue(entries, ahead, now)

        due: EventsDue = await self._run(take)
        return due

    async def unpark(self, group: str, keys: Sequence[str]) -> None:
        def delete() -> None:
            with self._write() as db:
                db.executemany(
                    "DELETE FROM dromos_amqp_parked WHERE grp = ? AND key = ?",
                    [(group, k) for k in keys],
                )

        if keys:
            await self._run(delete)

    async def parked_counts(self) -> dict[str, tuple[int, int]]:
        def count() -> list[tuple[str, int, int]]:
            with self._write() as db:
                return db.execute(
                    "SELECT grp, sum(due IS NOT NULL), sum(due IS NULL) FROM dromos_amqp_parked "
                    "GROUP BY grp"
                ).fetchall()

        rows: list[tuple[str, int, int]] = await self._run(count)
        return {grp: (retrying, dead) for grp, retrying, dead in rows}

    async def parked_dead(self, group: str, limit: int) -> list[EventDeadLetter]:
        def read() -> list[tuple[Any, ...]]:
            with self._write() as db:
                return db.execute(
                    "SELECT key, topic, payload, attempt, errors, failed_at FROM "
                    "dromos_amqp_parked WHERE grp = ? AND due IS NULL "
                    "ORDER BY failed_at, key LIMIT ?",
                    (group, max(limit, 0)),
                ).fetchall()

        rows: list[tuple[Any, ...]] = await self._run(read)
        return [dead_letter_from_row(group, row) for row in rows]

    async def drop_group(self, group: str) -> None:
        def drop() -> None:
            with self._write() as db:
                db.execute("DELETE FROM dromos_amqp_parked WHERE grp = ?", (group,))
                db.execute(
                    "DELETE FROM dromos_amqp_names WHERE kind = 'group' AND name = ?", (group,)
                )

        await self._run(drop)
