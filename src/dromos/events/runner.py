"""Runs an app's subscribers inside a worker: claim events per group, handle, settle.

One loop per consumer group: it leases up to ``concurrency`` events at once, runs each
through the group's matching handlers, and settles the outcomes in batches (acknowledged,
retried after a backoff, or dead-lettered). Stopping stops the claims, lets the handlers
finish within the grace period, and hands the unfinished ones back for a redelivery.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Sequence

from dromos.brokers.base import Broker, EventDelivery, EventOutcome
from dromos.errors import ValidationError
from dromos.events.envelope import decode_event
from dromos.events.subscriber import Subscriber
from dromos.job import JobError
from dromos.message import DecodeError

__all__ = ["EventRunner"]

log = logging.getLogger("dromos.events")


class EventRunner:
    """The subscribers of one worker process, grouped by consumer group."""

    def __init__(
        self,
        broker: Broker,
        subscribers: Sequence[Subscriber],
        concurrency: int,
        lease_margin: float = 30.0,
    ) -> None:
        self.broker = broker
        # A lease outlasts the group's longest time limit by this much: a live consumer never
        # loses an event it is still handling, a dead one's events come back soon after.
        self.lease_margin = lease_margin
        self.concurrency = max(1, concurrency)
        self.groups: dict[str, list[Subscriber]] = {}
        for sub in subscribers:
            self.groups.setdefault(sub.group, []).append(sub)
        self.counts: dict[str, int] = {"handled": 0, "retried": 0, "dead": 0}

    async def run(self, stopping: asyncio.Event, grace: float) -> None:
        """Serve every group until ``stopping`` is set; then finish or hand back."""
        for group, subs in self.groups.items():
            patterns = sorted({p for s in subs for p in s.patterns})
            await self.broker.join_group(group, patterns, subs[0].start)
        await asyncio.gather(
            *(_Group(self, name, subs).serve(stopping, grace) for name, subs in self.groups.items())
        )


class _Group:
    def __init__(self, runner: EventRunner, name: str, subs: list[Subscriber]) -> None:
        self.runner, self.broker, self.name, self.subs = runner, runner.broker, name, subs
        self.lease = max(s.timeout for s in subs) + runner.lease_margin
        # A batch subscriber (alone in its group) takes up to `batch` events per call; the
        # worker's concurrency then counts calls of `batch` events.
        self.batch = subs[0].batch if len(subs) == 1 else None
        per_call = self.batch or 1
        self.slots = max(1, runner.concurrency // per_call)
        # Batch calls: the next batch is claimed while one runs (its events leased, waiting on
        # the gate), so a claim's round trip does not stall the handler.
        self.gate = asyncio.Semaphore(self.slots)
        self.ahead = 1 if self.batch else 0
        self.running: dict[asyncio.Task[None], list[EventDelivery]] = {}
        self.outcomes: list[EventOutcome] = []
        self.flush_wanted = asyncio.Event()
        self.room = asyncio.Event()
        self._handlers: dict[str, list[Subscriber]] = {}  # topic -> the matching subscribers

    async def serve(self, stopping: asyncio.Event, grace: float) -> None:
        flusher = asyncio.create_task(self._flusher(stopping), name=f"dromos-events-{self.name}")
        backoff = 0.1
        try:
            while not stopping.is_set():
                # Claim once half the slots are free, not at every free slot: batches stay
                # large (one round trip for many events) while the other half keeps running.
                free = self.slots + self.ahead - len(self.running)
                if free <= 0 or len(self.running) > (self.slots + self.ahead) // 2:
                    self.room.clear()
                    await _first(self.room.wait(), stopping.wait())
                    continue
                per_call = self.batch or 1
                room = free * per_call
                try:
                    got = await self.broker.claim_events(self.name, room, self.lease)
                    backoff = 0.1
                except Exception as exc:
                    log.warning("claiming events of %s failed (%s)", self.name, exc)
                    await _first(asyncio.sleep(backoff), stopping.wait())
                    backoff = min(backoff * 2, 5.0)
                    continue
                for start in range(0, len(got), per_call):
                    chunk = got[start : start + per_call]
                    work = self._handle(chunk[0]) if self.batch is None else self._calls(chunk)
                    task = asyncio.create_task(work)
                    self.running[task] = chunk
                    task.add_done_callback(self._finished)
                if len(got) < room:
                    await _first(self.broker.wait_for_events([self.name], 1.0), stopping.wait())
            await self._wind_down(grace)
        finally:
            self.flush_wanted.set()
            await asyncio.gather(flusher, return_exceptions=True)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.running.pop(task, None)
        self.room.set()

    async def _wind_down(self, grace: float) -> None:
        if self.running and grace > 0:
            await asyncio.wait(list(self.running), timeout=grace)
        now = time.time()
        for task, deliveries in list(self.running.items()):
            task.cancel()
            for delivery in deliveries:
                error = JobError(
                    type="Interrupted", message="the worker stopped", attempt=delivery.attempt
                )
                self.outcomes.append(EventOutcome(delivery.key, delivery.attempt, error, now))
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)

    async def _handle(self, delivery: EventDelivery) -> None:
        outcome = await self._outcome(delivery)
        self.outcomes.append(outcome)
        kind = "handled" if outcome.error is None else "retried" if outcome.retry_at else "dead"
        self.runner.counts[kind] += 1
        self.flush_wanted.set()

    async def _calls(self, deliveries: list[EventDelivery]) -> None:
        """One call of a batch subscriber with these events (those that cannot be read or do
        not fit its type are dead-lettered on their own and left out of the call)."""
        [sub] = self.subs
        outcomes, keep, arguments = [], [], []
        for d in deliveries:
            try:
                event = decode_event(d.payload, d.attempt)
                if not sub.handles(event.type):
                    outcomes.append(EventOutcome(d.key, d.attempt))  # patterns changed
                    continue
                arguments.append(sub.argument(event))
                keep.append(d)
            except (DecodeError, ValidationError) as exc:
                error = JobError(type=type(exc).__name__, message=str(exc), attempt=d.attempt)
                outcomes.append(EventOutcome(d.key, d.attempt, error, None))
        if arguments:
            try:
                async with self.gate:
                    await sub.run_batch(arguments)
                outcomes += [EventOutcome(d.key, d.attempt) for d in keep]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("a batch of %d event(s) failed in %s: %r", len(keep), sub.name, exc)
                now = time.time()
                for d in keep:
                    error = JobError(
                        type=type(exc).__name__,
                        message=str(exc) or repr(exc),
                        traceback=traceback.format_exc(),
                        attempt=d.attempt,
                    )
                    retry = None if d.attempt > sub.retries else now + sub.retry_delay(d.attempt)
                    outcomes.append(EventOutcome(d.key, d.attempt, error, retry))
        for o in outcomes:
            kind = "handled" if o.error is None else "retried" if o.retry_at else "dead"
            self.runner.counts[kind] += 1
        self.outcomes += outcomes
        self.flush_wanted.set()

    async def _outcome(self, delivery: EventDelivery) -> EventOutcome:
        key, attempt = delivery.key, delivery.attempt
        try:
            event = decode_event(delivery.payload, attempt)
        except DecodeError as exc:
            log.warning("event %s of %s dead-lettered: %s", key, self.name, exc)
            return EventOutcome(
                key, attempt, JobError(type="DecodeError", message=str(exc), attempt=attempt)
            )
        matching = self._handlers.get(event.type)
        if matching is None:
            if len(self._handlers) > 4096:  # topics come and go: keep the cache bounded
                self._handlers.clear()
            matching = self._handlers[event.type] = [s for s in self.subs if s.handles(event.type)]
        for sub in matching:  # every matching handler of the group, in the order registered
            try:
                await sub.run(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = JobError(
                    type=type(exc).__name__,
                    message=str(exc) or repr(exc),
                    traceback=traceback.format_exc(),
                    attempt=attempt,
                )
                if isinstance(exc, ValidationError) or attempt > sub.retries:
                    log.warning("event %s (%s) dead-lettered by %s: %r", event.id, event.type,
                                self.name, exc)  # fmt: skip
                    return EventOutcome(key, attempt, error, None)
                log.info("event %s (%s) failed in %s, retrying: %r", event.id, event.type,
                         sub.name, exc)  # fmt: skip
                return EventOutcome(key, attempt, error, time.time() + sub.retry_delay(attempt))
        return EventOutcome(key, attempt)

    async def _flusher(self, stopping: asyncio.Event) -> None:
        while True:
            await self.flush_wanted.wait()
            self.flush_wanted.clear()
            batch, self.outcomes = self.outcomes, []
            if batch:
                try:
                    await self.broker.settle_events(self.name, batch)
                except Exception as exc:  # the leases run out and the events come again
                    log.warning("settling %d event(s) of %s failed: %s", len(batch), self.name, exc)
            if stopping.is_set() and not self.running and not self.outcomes:
                return


async def _first(*awaitables: object) -> None:
    """Wait for the first of ``awaitables`` (coroutines); cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]  # type: ignore[call-overload]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                log.debug("waiting failed: %s", t.exception())
