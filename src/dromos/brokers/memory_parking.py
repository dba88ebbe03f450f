"""Event parking and the names registry of the memory store: the executable reference of
the primitives a store gives the RabbitMQ broker's event bus (``base.py``, "event parking").

Plain dicts under one lock: per group its parked entries by key, and per kind the names
registered with their patterns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from dromos.brokers.base import EventDeadLetter, EventsDue, Parked, due_at

__all__ = ["MemoryParking"]


@dataclass(frozen=True, slots=True)
class _Entry:
    parked: Parked
    failed_at: float | None  # set for a dead entry


def _dead_letter(group: str, e: _Entry) -> EventDeadLetter:
    p = e.parked
    return EventDeadLetter(
        group=group, key=p.key, topic=p.topic, payload=p.payload, attempts=p.attempt,
        errors=list(p.errors), failed_at=datetime.fromtimestamp(e.failed_at or 0.0, UTC),
    )  # fmt: skip


class MemoryParking:
    """Mixed into ``MemoryBroker``: the parking methods of ``Broker``."""

    def _init_parking(self) -> None:
        self._park_lock = threading.Lock()
        self._parked: dict[str, dict[str, _Entry]] = {}  # group -> key -> entry
        self._names: dict[str, dict[str, tuple[str, ...]]] = {}  # kind -> name -> patterns

    async def names_add(self, kind: str, names: Mapping[str, Sequence[str]]) -> None:
        with self._park_lock:
            known = self._names.setdefault(kind, {})
            for name, patterns in names.items():
                known[name] = tuple(patterns)

    async def names_list(self, kind: str) -> dict[str, tuple[str, ...]]:
        with self._park_lock:
            return dict(self._names.get(kind, {}))

    async def names_drop(self, kind: str, names: Sequence[str]) -> None:
        with self._park_lock:
            known = self._names.get(kind, {})
            for name in names:
                known.pop(name, None)

    async def park_events(self, group: str, parked: Sequence[Parked]) -> None:
        now = time.time()
        with self._park_lock:
            entries = self._parked.setdefault(group, {})
            for p in parked:
                if p.due is not None:  # due on this store's clock
                    p = msgspec.structs.replace(p, due=due_at(now, p.due, p.due_in), due_in=None)
                entries[p.key] = _Entry(p, now if p.due is None else None)

    async def events_due(self, limit: int, hold: float) -> EventsDue:
        now = time.time()
        with self._park_lock:
            retrying = [
                (e.parked.due, group, key)
                for group, entries in self._parked.items()
                for key, e in entries.items()
                if e.parked.due is not None
            ]
            retrying.sort(key=lambda t: (t[0] or 0.0, t[1], t[2]))
            out: list[tuple[str, Parked]] = []
            for due, group, key in retrying:
                if len(out) >= limit or (due or 0.0) > now:
                    break
                leased = msgspec.structs.replace(self._parked[group][key].parked, due=now + hold)
                self._parked[group][key] = _Entry(leased, None)
                out.append((group, leased))
            ahead = [
                e.parked.due
                for entries in self._parked.values()
                for e in entries.values()
                if e.parked.due is not None and e.parked.due > now
            ]
        return EventsDue(out, min(ahead) if ahead else None, now)

    async def unpark(self, group: str, keys: Sequence[str]) -> None:
        with self._park_lock:
            entries = self._parked.get(group, {})
            for key in keys:
                entries.pop(key, None)
            if not entries:
                self._parked.pop(group, None)

    async def parked_counts(self) -> dict[str, tuple[int, int]]:
        with self._park_lock:
            out = {}
            for group, entries in self._parked.items():
                dead = sum(e.failed_at is not None for e in entries.values())
                out[group] = (len(entries) - dead, dead)
            return out

    async def parked_dead(self, group: str, limit: int) -> list[EventDeadLetter]:
        with self._park_lock:
            dead = [e for e in self._parked.get(group, {}).values() if e.failed_at is not None]
        dead.sort(key=lambda e: (e.failed_at or 0.0, e.parked.key))
        return [_dead_letter(group, e) for e in dead[: max(limit, 0)]]

    async def drop_group(self, group: str) -> None:
        with self._park_lock:
            self._parked.pop(group, None)
            self._names.get("group", {}).pop(group, None)
