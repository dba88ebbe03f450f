"""The event bus of the memory broker: the executable reference of the bus's contract.

One list is the log; a group is a position on it, its patterns, and the claims of its events
in flight (running under a lease, waiting to retry, or dead).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dromos.brokers._notify import Notifier
from dromos.brokers.base import (
    BrokerOptions,
    EventDeadLetter,
    EventDelivery,
    EventOutcome,
    EventRecord,
    GroupStats,
    due_at,
    event_seq,
)
from dromos.events.topics import matches_any
from dromos.job import JobError

__all__ = ["MemoryEventBus", "poison_error"]

_BUS = "events"


def poison_error(recoveries: int, attempt: int) -> JobError:
    """The error of an event dead-lettered because its consumers kept dying."""
    return JobError(
        type="Poison",
        message=f"the event's consumer was lost {recoveries} times",
        attempt=attempt,
    )


@dataclass(slots=True)
class _Claim:
    state: str  # running | retrying | dead
    attempt: int
    due: float  # lease end (running) or next delivery (retrying)
    recoveries: int = 0
    errors: list[JobError] = field(default_factory=list)
    failed_at: float | None = None
    base: int = 0  # attempt when last replayed: tries = attempt - base


@dataclass(slots=True)
class _Group:
    patterns: tuple[str, ...]
    position: int  # the last seq this group has looked at
    claims: dict[int, _Claim] = field(default_factory=dict)


class MemoryEventBus:
    """Mixed into ``MemoryBroker``: the bus methods of ``Broker``."""

    options: BrokerOptions

    def _init_bus(self) -> None:
        self._bus_lock = threading.Lock()
        self._log_seqs: list[int] = []
        self._log: dict[int, tuple[str, bytes, float]] = {}  # seq -> topic, payload, time
        self._log_seq = 0
        self._groups: dict[str, _Group] = {}
        self._bus = Notifier()

    async def publish(self, events: Sequence[EventRecord]) -> None:
        now = time.time()
        with self._bus_lock:
            for event in events:
                self._log_seq += 1
                self._log_seqs.append(self._log_seq)
                self._log[self._log_seq] = (event.topic, event.payload, now)
            self._trim(now)
        if events:
            self._bus.notify([_BUS])

    def _trim(self, now: float) -> None:
        horizon = now - self.options.event_retention
        cut = 0
        while cut < len(self._log_seqs) and self._log[self._log_seqs[cut]][2] < horizon:
            del self._log[self._log_seqs[cut]]
            cut += 1
        if cut:
            del self._log_seqs[:cut]

    async def join_group(self, group: str, patterns: Sequence[str], start: str | float) -> None:
        with self._bus_lock:
            existing = self._groups.get(group)
            if existing is not None:
                existing.patterns = tuple(patterns)
                return
            if start == "latest":
                position = self._log_seq
            elif start == "earliest":
                position = 0
            else:
                since = float(start)
                older = [s for s in self._log_seqs if self._log[s][2] < since]
                position = older[-1] if older else 0
            self._groups[group] = _Group(tuple(patterns), position)

    async def leave_group(self, group: str) -> None:
        with self._bus_lock:
            self._groups.pop(group, None)

    async def claim_events(self, group: str, limit: int, lease: float) -> list[EventDelivery]:
        now = time.time()
        out: list[EventDelivery] = []
        with self._bus_lock:
            g = self._groups.get(group)
            if g is None or limit <= 0:
                return out
            for seq, claim in sorted(g.claims.items()):
                if len(out) >= limit:
                    break
                if claim.state == "running" and claim.due < now:
                    claim.recoveries += 1
                    if claim.recoveries > self.options.max_recoveries:
                        claim.errors.append(poison_error(claim.recoveries, claim.attempt))
                        claim.state, claim.failed_at = "dead", now
                        continue
                elif not (claim.state == "retrying" and claim.due <= now):
                    continue
                entry = self._log.get(seq)
                if entry is None:  # past the bus's retention: nothing left to deliver
                    del g.claims[seq]
                    continue
                claim.state, claim.attempt, claim.due = "running", claim.attempt + 1, now + lease
                tries = claim.attempt - claim.base
                out.append(EventDelivery(str(seq), entry[0], entry[1], claim.attempt, tries))
            start = bisect.bisect_right(self._log_seqs, g.position)
            for seq in self._log_seqs[start:]:
                if len(out) >= limit:
                    break
                g.position = seq
                topic, payload, _ = self._log[seq]
                if matches_any(g.patterns, topic):
                    g.claims[seq] = _Claim("running", 1, now + lease)
                    out.append(EventDelivery(str(seq), topic, payload, 1, 1))
        return out

    async def settle_events(self, group: str, outcomes: Sequence[EventOutcome]) -> int:
        now = time.time()
        applied = 0
        with self._bus_lock:
            g = self._groups.get(group)
            if g is None:
                return 0
            for outcome in outcomes:
                seq = event_seq(outcome.key)
                claim = None if seq is None else g.claims.get(seq)
                if seq is None or claim is None:
                    continue
                if claim.state != "running" or claim.attempt != outcome.attempt:
                    continue
                applied += 1
                if outcome.error is None:
                    del g.claims[seq]
                    continue
                claim.errors.append(outcome.error)
                if outcome.retry_at is not None:
                    claim.state = "retrying"
                    claim.due = due_at(now, outcome.retry_at, outcome.retry_in)
                else:
                    claim.state, claim.failed_at = "dead", now
        if applied:
            self._bus.notify([_BUS])  # a retry may be due sooner than a waiter thinks
        return applied

    async def wait_for_events(self, groups: Sequence[str], timeout: float) -> None:
        with self._bus.listen([_BUS]) as listener:
            now = time.time()
            with self._bus_lock:
                soon = timeout
                for g in (self._groups[n] for n in groups if n in self._groups):
                    if bisect.bisect_right(self._log_seqs, g.position) < len(self._log_seqs):
                        return  # unseen events (maybe not matching: the claim will tell)
                    for claim in g.claims.values():
                        if claim.state != "dead":
                            soon = min(soon, claim.due - now)
            await listener.wait(max(0.0, soon))

    async def event_groups(self) -> list[GroupStats]:
        with self._bus_lock:
            out = []
            for name, g in sorted(self._groups.items()):
                states = [c.state for c in g.claims.values()]
                lag = len(self._log_seqs) - bisect.bisect_right(self._log_seqs, g.position)
                out.append(GroupStats(
                    group=name, patterns=g.patterns, lag=lag, running=states.count("running"),
                    retrying=states.count("retrying"), dead=states.count("dead"),
                ))  # fmt: skip
            return out

    async def event_dead_letters(self, group: str, limit: int = 100) -> list[EventDeadLetter]:
        with self._bus_lock:
            g = self._groups.get(group)
            if g is None:
                return []
            out: list[EventDeadLetter] = []
            for seq, claim in sorted(g.claims.items()):
                entry = self._log.get(seq)
                if len(out) >= limit:
                    break
                if claim.state != "dead" or entry is None:
                    continue
                failed = claim.failed_at
                out.append(EventDeadLetter(
                    group=group, key=str(seq), topic=entry[0], payload=entry[1],
                    attempts=claim.attempt, errors=list(claim.errors),
                    failed_at=None if failed is None else datetime.fromtimestamp(failed, UTC),
                ))  # fmt: skip
            return out

    async def replay_events(self, group: str, keys: Sequence[str] | None = None) -> int:
        now = time.time()
        with self._bus_lock:
            g = self._groups.get(group)
            if g is None:
                return 0
            wanted = None if keys is None else {event_seq(k) for k in keys}
            replayed = 0
            for seq, claim in g.claims.items():
                if claim.state == "dead" and (wanted is None or seq in wanted):
                    claim.state, claim.due, claim.base = "retrying", now, claim.attempt
                    claim.recoveries, claim.failed_at = 0, None
                    replayed += 1
        if replayed:
            self._bus.notify([_BUS])
        return replayed
