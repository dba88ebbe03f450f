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
from collections.abc import Sequence
from typing import Any

from dromos._failures import EXITS, error_of, words
from dromos._loop import first_of
from dromos.brokers.base import Broker, EventDelivery, EventOutcome
from dromos.errors import ValidationError
from dromos.events.envelope import decode_data, decode_event
from dromos.events.subscriber import Subscriber
from dromos.job import JobError
from dromos.message import DecodeError

__all__ = ["EventRunner"]

log = logging.getLogger("dromos.events")
_HANDLER_FAILURES = (Exception, *EXITS)  # what a handler's failure is


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
        self.awaiting_room = False  # the claim loop waits for room (see _finished)
        self.claiming = False  # the claim loop waits for a claim's answer (see _finished)
        self._handlers: dict[str, list[Subscriber]] = {}  # topic -> the matching subscribers

    async def serve(self, stopping: asyncio.Event, grace: float) -> None:
        flusher = asyncio.create_task(self._flusher(stopping), name=f"dromos-events-{self.name}")
        stopper = asyncio.create_task(_set_on(stopping, self.room))  # stopping wakes the loop
        backoff = 0.1
        try:
            while not stopping.is_set():
                free = self._free()
                if not free:
                    if self.outcomes:  # no claim to carry them soon: see _finished
                        self.flush_wanted.set()
                    self.room.clear()
                    self.awaiting_room = True
                    try:
                        await self.room.wait()
                    finally:
                        self.awaiting_room = False
                    continue
                per_call = self.batch or 1
                room = free * per_call
                # The outcomes waiting to be settled go with the claim (one round trip where
                # the broker can): see _finished.
                settle, self.outcomes = self.outcomes, []
                self.claiming = True
                try:
                    got = await self.broker.settle_and_claim_events(
                        self.name, settle, room, self.lease
                    )
                    backoff = 0.1
                except Exception as exc:
                    log.warning("claiming events of %s failed (%s)", self.name, exc)
                    self.outcomes[:0] = settle  # settled again by the flusher: harmless
                    self.flush_wanted.set()
                    await first_of(asyncio.sleep(backoff), stopping.wait())
                    backoff = min(backoff * 2, 5.0)
                    continue
                finally:
                    self.claiming = False
                for start in range(0, len(got), per_call):
                    chunk = got[start : start + per_call]
                    work = self._handle(chunk[0]) if self.batch is None else self._calls(chunk)
                    task = asyncio.create_task(work)
                    self.running[task] = chunk
                    task.add_done_callback(self._finished)
                if len(got) < room:
                    if self.outcomes:
                        self.flush_wanted.set()
                    await first_of(self.broker.wait_for_events([self.name], 1.0), stopping.wait())
            await self._wind_down(grace)
        finally:
            stopper.cancel()
            self.flush_wanted.set()
            await asyncio.gather(flusher, stopper, return_exceptions=True)

    def _free(self) -> int:
        """How many calls to claim for now: the free slots once half of them are free, not
        at every free slot (batches stay large, one round trip for many events, while the
        other half keeps running); else 0."""
        free = self.slots + self.ahead - len(self.running)
        if free <= 0 or len(self.running) > (self.slots + self.ahead) // 2:
            return 0
        return free

    def _finished(self, task: asyncio.Task[None]) -> None:
        # The task's outcomes are in self.outcomes. The claim loop takes them with its next
        # claim if it is claiming now (it claims again at once if there is room, and has them
        # flushed before it waits otherwise) or is about to (this frees the room it waits
        # for); else the flusher settles them now.
        self.running.pop(task, None)
        self.room.set()
        if not (self.claiming or (self.awaiting_room and self._free())):
            self.flush_wanted.set()

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
                self.outcomes.append(
                    EventOutcome(delivery.key, delivery.attempt, error, now, retry_in=0.0)
                )
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)

    async def _handle(self, delivery: EventDelivery) -> None:
        outcome = await self._outcome(delivery)
        self.outcomes.append(outcome)
        kind = "handled" if outcome.error is None else "retried" if outcome.retry_at else "dead"
        self.runner.counts[kind] += 1

    async def _calls(self, deliveries: list[EventDelivery]) -> None:
        """One call of a batch subscriber with these events (those that cannot be read or do
        not fit its type are dead-lettered on their own and left out of the call)."""
        [sub] = self.subs
        wants_event = sub.wants_event
        outcomes: list[EventOutcome] = []
        keep: list[EventDelivery] = []
        topics: list[str] = []
        items: list[Any] = []  # the events, or their data alone if that is what sub takes
        for d in deliveries:
            try:
                if wants_event:
                    item: Any = decode_event(d.payload, d.attempt)
                    topic = item.type
                else:
                    topic, item = decode_data(d.payload)
            except DecodeError as exc:
                error = JobError(type="DecodeError", message=words(exc), attempt=d.attempt)
                outcomes.append(EventOutcome(d.key, d.attempt, error, None))
                continue
            if not self._matching(topic):
                outcomes.append(EventOutcome(d.key, d.attempt))  # patterns changed
                continue
            keep.append(d)
            topics.append(topic)
            items.append(item)
        arguments = sub.batch_arguments(items) if items else []
        if arguments is None:  # one or more do not fit the type: dead-letter those alone
            arguments, fit = [], []
            for d, topic, item in zip(keep, topics, items, strict=True):
                try:
                    arguments.append(sub.item_argument(topic, item))
                    fit.append(d)
                except ValidationError as exc:
                    error = JobError(type="ValidationError", message=words(exc), attempt=d.attempt)
                    outcomes.append(EventOutcome(d.key, d.attempt, error, None))
            keep = fit
        if arguments:
            try:
                async with self.gate:
                    await sub.run_batch(arguments)
                outcomes += [EventOutcome(d.key, d.attempt) for d in keep]
            except asyncio.CancelledError:
                raise
            except _HANDLER_FAILURES as exc:
                log.info("a batch of %d event(s) failed in %s: %r", len(keep), sub.name, exc)
                for d in keep:
                    error = error_of(exc, d.attempt)
                    if d.tries > sub.retries:
                        outcomes.append(EventOutcome(d.key, d.attempt, error, None))
                    else:
                        outcomes.append(_retry(d.key, d.attempt, error, sub.retry_delay(d.tries)))
        for o in outcomes:
            kind = "handled" if o.error is None else "retried" if o.retry_at else "dead"
            self.runner.counts[kind] += 1
        self.outcomes += outcomes

    async def _outcome(self, delivery: EventDelivery) -> EventOutcome:
        key, attempt, tries = delivery.key, delivery.attempt, delivery.tries
        try:
            event = decode_event(delivery.payload, attempt)
        except DecodeError as exc:
            log.warning("event %s of %s dead-lettered: %s", key, self.name, exc)
            return EventOutcome(
                key, attempt, JobError(type="DecodeError", message=words(exc), attempt=attempt)
            )
        # Every matching handler of the group, in the order registered:
        for sub in self._matching(event.type):
            try:
                await sub.run(event)
            except asyncio.CancelledError:
                raise
            except _HANDLER_FAILURES as exc:
                error = error_of(exc, attempt)
                if isinstance(exc, ValidationError) or tries > sub.retries:
                    log.warning("event %s (%s) dead-lettered by %s: %r", event.id, event.type,
                                self.name, exc)  # fmt: skip
                    return EventOutcome(key, attempt, error, None)
                log.info("event %s (%s) failed in %s, retrying: %r", event.id, event.type,
                         sub.name, exc)  # fmt: skip
                return _retry(key, attempt, error, sub.retry_delay(tries))
        return EventOutcome(key, attempt)

    def _matching(self, topic: str) -> list[Subscriber]:
        """The subscribers of this group that handle ``topic`` (cached per topic)."""
        matching = self._handlers.get(topic)
        if matching is None:
            if len(self._handlers) > 4096:  # topics come and go: keep the cache bounded
                self._handlers.clear()
            matching = self._handlers[topic] = [s for s in self.subs if s.handles(topic)]
        return matching

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


def _retry(key: str, attempt: int, error: JobError, delay: float) -> EventOutcome:
    """A failure to deliver again after ``delay`` seconds, counted on the broker's clock (this
    worker's may be off; ``retry_at`` is what it thinks that is)."""
    return EventOutcome(key, attempt, error, time.time() + delay, retry_in=delay)


async def _set_on(event: asyncio.Event, then: asyncio.Event) -> None:
    """Set ``then`` once ``event`` is set."""
    await event.wait()
    then.set()
