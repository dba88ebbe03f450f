"""Event parking and the names registry of the PostgreSQL store (``memory_parking.py`` is the
reference; the tables come with ``postgres_migrations/0008_event_parking.sql``).

``events_due`` leases with ``FOR UPDATE SKIP LOCKED``, so relays in many workers split the due
retries without waiting for each other; every time is the database's clock.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgspec
from psycopg import AsyncCursor
from psycopg.rows import TupleRow

from dromos.brokers.base import EventDeadLetter, EventsDue, Parked, dead_letter_from_row
from dromos.job import JobError

__all__ = ["PostgresParking"]

_errors = msgspec.json.Decoder(list[JobError])
_encode = msgspec.json.Encoder().encode
_NAMES = "{schema}.dromos_amqp_names"
_PARKED = "{schema}.dromos_amqp_parked"

_NAMES_ADD = (
    f"INSERT INTO {_NAMES} (kind, name, patterns) SELECT %(kind)s, n.name, n.patterns::jsonb "
    "FROM unnest(%(names)s::text[], %(patterns)s::text[]) AS n(name, patterns) "
    "ON CONFLICT (kind, name) DO UPDATE SET patterns = excluded.patterns"
)
_PARK = (
    f"INSERT INTO {_PARKED} AS p (grp, key, topic, payload, attempt, errors, due, failed_at, "
    "base) SELECT %(group)s, e.key, e.topic, e.payload, e.attempt, e.errors::jsonb, "
    "coalesce({now} + e.due_in, e.due), CASE WHEN e.due IS NULL THEN {now} END, e.base "
    "FROM unnest(%(keys)s::text[], %(topics)s::text[], %(payloads)s::bytea[], "
    "%(attempts)s::int[], %(errors)s::text[], %(dues)s::float8[], %(due_ins)s::float8[], "
    "%(bases)s::int[]) AS e(key, topic, payload, attempt, errors, due, due_in, base) "
    "ON CONFLICT (grp, key) DO UPDATE SET topic = excluded.topic, payload = excluded.payload, "
    "attempt = excluded.attempt, errors = excluded.errors, due = excluded.due, "
    "failed_at = excluded.failed_at, base = excluded.base"
)
_DUE = (
    f"WITH due AS (SELECT grp, key FROM {_PARKED} WHERE due IS NOT NULL AND due <= {{now}} "
    "ORDER BY due, grp, key LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
    f"UPDATE {_PARKED} p SET due = {{now}} + %(hold)s FROM due "
    "WHERE p.grp = due.grp AND p.key = due.key "
    "RETURNING p.grp, p.key, p.topic, p.payload, p.attempt, p.errors::text, {now}, p.base"
)
_AHEAD = f"SELECT min(due), {{now}} FROM {_PARKED} WHERE due IS NOT NULL AND due > {{now}}"


class PostgresParking:
    """Mixed into ``PostgresBroker``: the parking methods of ``Broker``."""

    _q: Callable[[str], str]
    _cursor: Callable[..., AbstractAsyncContextManager[AsyncCursor[TupleRow]]]
    _fetch: Callable[..., Coroutine[Any, Any, list[tuple[Any, ...]]]]
    _fetchone: Callable[..., Coroutine[Any, Any, tuple[Any, ...] | None]]
    _execute: Callable[..., Coroutine[Any, Any, int]]

    async def names_add(self, kind: str, names: Mapping[str, Sequence[str]]) -> None:
        if names:
            await self._execute(_NAMES_ADD, {
                "kind": kind, "names": list(names),
                "patterns": [_encode(list(p)).decode() for p in names.values()],
            })  # fmt: skip

    async def names_list(self, kind: str) -> dict[str, tuple[str, ...]]:
        rows = await self._fetch(f"SELECT name, patterns FROM {_NAMES} WHERE kind = %s", (kind,))
        return {name: tuple(patterns) for name, patterns in rows}

    async def names_drop(self, kind: str, names: Sequence[str]) -> None:
        if names:
            await self._execute(
                f"DELETE FROM {_NAMES} WHERE kind = %s AND name = ANY(%s)", (kind, list(names))
            )

    async def park_events(self, group: str, parked: Sequence[Parked]) -> None:
        if parked:
            await self._execute(_PARK, {
                "group": group, "keys": [p.key for p in parked],
                "topics": [p.topic for p in parked], "payloads": [p.payload for p in parked],
                "attempts": [p.attempt for p in parked], "bases": [p.base for p in parked],
                "errors": [_encode(p.errors).decode() for p in parked],
                "dues": [p.due for p in parked],
                "due_ins": [None if p.due is None else p.due_in for p in parked],
            })  # fmt: skip

    async def events_due(self, limit: int, hold: float) -> EventsDue:
        async with self._cursor(transaction=True) as cur:
            rows: list[tuple[Any, ...]] = []
            if limit > 0:
                await cur.execute(self._q(_DUE), {"limit": limit, "hold": hold})
                rows = await cur.fetchall()
            await cur.execute(self._q(_AHEAD))
            ahead = await cur.fetchone()
        assert ahead is not None
        rows.sort(key=lambda r: (r[0], r[1]))
        entries = [
            (
                r[0],
                Parked(r[1], r[2], bytes(r[3]), r[4], _errors.decode(r[5]), r[6] + hold, base=r[7]),
            )
            for r in rows
        ]
        return EventsDue(entries, ahead[0], ahead[1])

    async def unpark(self, group: str, keys: Sequence[str]) -> None:
        if keys:
            await self._execute(
                f"DELETE FROM {_PARKED} WHERE grp = %s AND key = ANY(%s)", (group, list(keys))
            )

    async def parked_counts(self) -> dict[str, tuple[int, int]]:
        rows = await self._fetch(
            f"SELECT grp, count(due), count(*) - count(due) FROM {_PARKED} GROUP BY grp"
        )
        return {grp: (int(retrying), int(dead)) for grp, retrying, dead in rows}

    async def parked_dead(self, group: str, limit: int) -> list[EventDeadLetter]:
        rows = await self._fetch(
            f"SELECT key, topic, payload, attempt, errors::text, failed_at FROM {_PARKED} "
            "WHERE grp = %s AND due IS NULL ORDER BY failed_at, key LIMIT %s",
            (group, max(limit, 0)),
        )
        return [dead_letter_from_row(group, row) for row in rows]

    async def drop_group(self, group: str) -> None:
        async with self._cursor(transaction=True) as cur:
            await cur.execute(self._q(f"DELETE FROM {_PARKED} WHERE grp = %s"), (group,))
            await cur.execute(
                self._q(f"DELETE FROM {_NAMES} WHERE kind = 'group' AND name = %s"), (group,)
            )
