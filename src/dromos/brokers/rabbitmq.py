"""The RabbitMQ broker (``amqp://``): RabbitMQ carries the ready jobs, a state store keeps them.

The design is ``docs/design/rabbitmq.md``; in short:

- **The state store** (``backend=``: SQLite, Redis, PostgreSQL; memory in one process) keeps
  every job's record exactly as it does as a broker of its own: state, attempt (the fencing
  token), lease, progress, result, errors, idempotency keys, batches, dependencies, rate
  limits, schedules' named leases, the webhook outbox. It runs in *relay mode*: a ready job
  is marked unsent until it was published.
- **RabbitMQ** (:mod:`~dromos.brokers.rabbitmq_transport`) carries one message per readiness:
  "job X is ready now", with its envelope, on a quorum queue per dromos queue and priority
  band, published with confirms.
- **Enqueue**: the store first (the job is held for this caller), then the publish, awaited
  until confirmed; it returns there. The mark "sent" follows in the background, one store
  write for a burst of enqueues (a mark lost to a crash costs a duplicate message after the
  hold, which the claim drops). A publish that fails for ``publish_timeout`` withdraws the
  jobs (cancelled, ``EnqueueFailed``) and raises: a job whose enqueue raised never runs.
- **Claim**: the worker's buffered messages, best first, are claimed *by id* in the store,
  then acked. A job that is not ready (a duplicate message, a cancelled or ended job) is
  dropped; its record decides, so a duplicate message never makes a second run. A claim
  first passes the barrier (every message ready before it is buffered) beside a relay pass;
  a claim right after a delivery woke an idle worker skips both (it takes what came, and
  the next claim what follows).
- **The relay** publishes whatever the store makes ready by itself (a delay or a retry come
  due, a lost lease recovered, a released or replayed job, a dependent, a batch's callback):
  a pass runs with each claim (but the one just said), after a release or a replay, after a
  poke (a settle) and while a worker waits for work: at the store's next due time, and at
  least every second.
- **Events** (:mod:`~dromos.brokers.rabbitmq_events`) go through the topic exchange
  ``<ns>.events`` to one quorum queue per consumer group, leased by being unacked; retries and
  dead letters are parked in the store, and the relay republishes retries when due.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import replace
from urllib.parse import urlsplit

from dromos._loop import cancel_and_wait, close_per_loop
from dromos.batch import BatchStatus
from dromos.brokers.base import (
    BatchRecord,
    Broker,
    BrokerOptions,
    Delivery,
    EnqueueRequest,
    EventDeadLetter,
    EventDelivery,
    EventOutcome,
    EventRecord,
    GroupStats,
    HeartbeatReply,
    Lease,
    Missing,
    Outcome,
    ProgressUpdate,
    QueueStats,
    Waited,
    WebhookDue,
)
from dromos.brokers.rabbitmq_events import RabbitMQEvents
from dromos.brokers.rabbitmq_transport import AmqpTransport, Outgoing
from dromos.brokers.rabbitmq_transport import Message as Delivered
from dromos.errors import BrokerError
from dromos.job import JobState, JobStatus, WebhookAttempt
from dromos.message import DecodeError, Message, decode, new_job_id, utcnow

__all__ = ["RabbitMQBroker"]

log = logging.getLogger("dromos.rabbitmq")

_RELAY_LIMIT = 500  # jobs per relay pass
_RELAY_POLL = 1.0  # seconds: the longest a waiting worker goes without a relay pass
_RELAY_MIN = 0.005  # seconds: the shortest between two passes a due time asks for
_HOLD_MARGIN = 10.0  # seconds an enqueuer holds its jobs beyond its longest publish
_ADOPT_WINDOW = 86400.0  # idempotency window of a job adopted from a foreign message
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class _Pace:
    """One event loop's relay clock, what its last wait for work saw, and its published jobs
    not yet marked sent."""

    def __init__(self) -> None:
        self.poked = asyncio.Event()  # something may have become ready: run a pass
        self.last = -math.inf  # loop time of the last relay pass
        self.due: float | None = None  # loop time at which the store said to look again
        self.woken: tuple[str, ...] | None = None  # the queues a delivery just woke us for
        self.claiming = asyncio.Lock()
        self.unmarked: list[str] = []  # published, not yet marked sent in the store
        self.marking: asyncio.Task[None] | None = None  # the task writing those marks

    def next_pass(self) -> float:
        """When the next relay pass is owed, unless a poke comes first (loop time)."""
        polled = self.last + _RELAY_POLL
        return polled if self.due is None else min(self.due, polled)

    def pass_needed(self, now: float) -> bool:
        """A relay pass is owed: a poke, a due time passed, or the poll interval."""
        return self.poked.is_set() or now >= self.next_pass()


class RabbitMQBroker(Broker):
    """Jobs on RabbitMQ, their records in ``store`` (a broker opened in relay mode)."""

    def __init__(self, url: str, store: Broker, options: BrokerOptions | None = None) -> None:
        super().__init__(options)
        if isinstance(store, RabbitMQBroker):
            raise BrokerError("the state store of a RabbitMQ broker cannot be RabbitMQ")
        self.store = store
        self.transport = AmqpTransport(url)
        # Without ?prefetch= in the URL, a worker's first claim sets it to the room it claims
        # for (its -c concurrency and as many prefetched): `dromos worker -c` sizes it.
        self._prefetch_open = "prefetch=" not in urlsplit(url).query
        self.hold = self.transport.settings.publish_limit + _HOLD_MARGIN
        self._paces: dict[asyncio.AbstractEventLoop, _Pace] = {}

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        paces, self._paces = self._paces, {}
        await close_per_loop(paces, self._flush_marks)
        try:
            await self.transport.nack_all()
        except Exception as exc:  # closing anyway: the server requeues what is unacked
            log.debug("nack at close failed: %s", exc)
        await self.transport.close()
        await self.store.close()

    # -- the relay ------------------------------------------------------------------------
    def _pace(self) -> _Pace:
        loop = asyncio.get_running_loop()
        pace = self._paces.get(loop)
        if pace is None:
            pace = self._paces[loop] = _Pace()
        return pace

    def _poke(self) -> None:
        """Something may have become ready in the store: the next wait or claim runs a relay
        pass."""
        self._pace().poked.set()

    async def relay(self) -> int:
        """One relay pass: publish the ready jobs the store holds unsent; how many."""
        pace = self._pace()
        loop = asyncio.get_running_loop()
        pace.poked.clear()
        pace.last = loop.time()
        await self.events.relay()  # due event retries, back to their group's queue
        batch = await self.store.relay_due(_RELAY_LIMIT, self.hold)
        ahead = None if batch.next_due is None else batch.next_due - batch.now
        pace.due = None if ahead is None else pace.last + max(ahead, _RELAY_MIN)
        if not batch.jobs:
            return 0
        await self.transport.publish(
            [Outgoing(j.job_id, j.queue, j.priority, j.payload) for j in batch.jobs]
        )
        await self.store.mark_sent([j.job_id for j in batch.jobs])
        return len(batch.jobs)

    # -- producing ------------------------------------------------------------------------
    async def enqueue(self, requests: Sequence[EnqueueRequest]) -> list[str]:
        if not requests:
            return []
        self.transport.check_names({r.message.queue for r in requests})  # before any write
        recorded = await self.store.enqueue_unsent(requests, self.hold)
        outgoing = [
            Outgoing(r.job_id, req.message.queue, req.message.priority, req.payload)
            for r, req in zip(recorded, requests, strict=True)
            if r.publish
        ]
        await self._publish_or_withdraw(outgoing)
        return [r.job_id for r in recorded]

    async def _publish_or_withdraw(self, outgoing: list[Outgoing]) -> None:
        if not outgoing:
            return
        ids = [o.job_id for o in outgoing]
        try:
            await self.transport.publish(outgoing)
        except BrokerError as exc:
            try:
                await self.store.withdraw(ids, str(exc))
            except Exception as undo:
                raise BrokerError(
                    f"{exc}; withdrawing the {len(ids)} job(s) failed too ({undo}): they may "
                    "still run, once the relay publishes them"
                ) from exc
            raise
        self._mark_later(ids)

    def _mark_later(self, ids: list[str]) -> None:
        """Mark published jobs sent in the store after the enqueue returned: one write for
        all the enqueues of a burst instead of a round trip in each (design §12). A mark that
        never lands (a crash, a store error) costs a duplicate message once the enqueuer's
        hold ends, which the claim drops: the job's record decides."""
        pace = self._pace()
        pace.unmarked += ids
        if pace.marking is None:
            pace.marking = asyncio.get_running_loop().create_task(self._marking(pace))

    async def _marking(self, pace: _Pace) -> None:
        try:
            while pace.unmarked:
                ids, pace.unmarked = pace.unmarked, []
                try:
                    await self.store.mark_sent(ids)
                except Exception as exc:  # the relay publishes them again after the hold
                    log.warning("marking %d published job(s) failed: %s", len(ids), exc)
        finally:
            pace.marking = None

    async def _flush_marks(self, pace: _Pace) -> None:
        """For close: the marks still owed, written now."""
        if pace.marking is not None:
            await asyncio.shield(pace.marking)
        if pace.unmarked:
            await self._marking(pace)

    async def enqueue_batch(
        self, batch: BatchRecord, requests: Sequence[EnqueueRequest]
    ) -> list[str]:
        # The batch's jobs are stored unsent; the relay pass publishes them before this returns.
        queues = {r.message.queue for r in requests}
        self.transport.check_names(
            queues | ({batch.callback.message.queue} if batch.callback else set())
        )
        ids = await self.store.enqueue_batch(batch, requests)
        try:
            while await self.relay() >= _RELAY_LIMIT:
                pass
        except BrokerError as exc:
            await self.store.withdraw(ids, str(exc))
            raise
        return ids

    async def batch_status(self, batch_id: str) -> BatchStatus | None:
        return await self.store.batch_status(batch_id)

    async def batch_jobs(self, batch_id: str) -> list[str] | None:
        return await self.store.batch_jobs(batch_id)

    # -- consuming ------------------------------------------------------------------------
    async def claim(
        self, queues: Sequence[str], limit: int, lease: float, worker: str = ""
    ) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        # One claim at a time per loop: a claim's barrier makes its limit's worth buffered,
        # and a concurrent claim would take them from under it (a worker claims one at a time
        # anyway).
        async with self._pace().claiming:
            return await self._claim(queues, limit, lease, worker)

    async def _claim(
        self, queues: Sequence[str], limit: int, lease: float, worker: str
    ) -> list[Delivery]:
        if self._prefetch_open:
            self._prefetch_open = False
            settings = self.transport.settings
            self.transport.settings = replace(settings, prefetch=min(max(limit, 1), 65535))
        pace = self._pace()
        woken, pace.woken = pace.woken == tuple(queues), None
        if woken and not pace.pass_needed(asyncio.get_running_loop().time()):
            # A claim right after a delivery woke an idle worker: it takes what is buffered,
            # without the barrier's gets (a quorum queue commits each: ~1 ms) and without a
            # relay pass (the wait ran them, and owes none yet). What is still on its way is
            # buffered as it comes, and the next claim takes it.
            fenced = True
        else:
            # What a claim does first: a relay pass (due jobs and lost leases become ready),
            # beside the barrier rather than before it (two round trips in the time of one);
            # only a pass that published something needs a second barrier for what it sent.
            relayed, barrier = await asyncio.gather(
                self.relay(), self.transport.barrier(queues, limit), return_exceptions=True
            )
            for failure in (relayed, barrier):
                if isinstance(failure, BaseException):
                    raise failure
            fenced = not relayed
        out: list[Delivery] = []
        # The buffer holds a prefetch's worth per queue and band: a claim of more takes again
        # while a take came back full (its acks free room for pushes); a take that found
        # fewer found the queues dry, and another would only cost empty gets.
        while len(out) < limit:
            taken = await self.transport.take(queues, limit - len(out), barrier=not fenced)
            fenced = False
            if taken:
                out += await self._claim_taken(taken, lease, worker)
            if len(taken) < self.transport.settings.prefetch:
                break
        return out

    async def _claim_taken(
        self, taken: list[Delivered], lease: float, worker: str
    ) -> list[Delivery]:
        """Claim the jobs of these messages in the store, then ack them all (a job not ready
        is dropped: its record decides); on a store failure they stay buffered."""
        try:
            answers = await self.store.claim_ids([m.job_id for m in taken], lease, worker)
            missing = [m for m, a in zip(taken, answers, strict=True) if isinstance(a, Missing)]
            adopted = await self._adopt(missing, lease, worker) if missing else {}
        except Exception:
            self.transport.restore(taken)  # their messages stay for the next claim
            raise
        await self.transport.ack(taken)
        out = []
        for message, answer in zip(taken, answers, strict=True):
            if isinstance(answer, Delivery):
                out.append(answer)
            elif message.held_key in adopted:
                out.append(adopted[message.held_key])
        return out

    async def _adopt(
        self, messages: list[Delivered], lease: float, worker: str
    ) -> dict[tuple[str, str, int], Delivery]:
        """Jobs whose message came without a record (a producer writing the wire format
        straight to RabbitMQ, or a store that lost data): stored from their envelope, then
        claimed. A message dromos published whose job is older than the result retention
        found no record because it ended long ago: dropped, not run again."""
        requests, adopting = [], []
        for message in messages:
            try:
                envelope = decode(message.body)
            except DecodeError:
                # Stored as it came, under its message id (or a new one): the worker that
                # runs it dead-letters it with the decoder's reason, as on every broker.
                envelope = Message(
                    id=message.job_id if _UUID.fullmatch(message.job_id) else new_job_id(),
                    task="?", queue=message.queue, created_at=utcnow(),
                )  # fmt: skip
            age = time.time() - envelope.created_at.timestamp()
            if message.headers.get("x-dromos-sent") and age > self.options.result_ttl:
                # Published by dromos, and its record outlived: it ended and was purged.
                log.warning("job %s: its record is past its retention; dropped", envelope.id)
                continue
            requests.append(EnqueueRequest(envelope, message.body, _ADOPT_WINDOW))
            adopting.append(message)
        if not requests:
            return {}
        recorded = await self.store.enqueue_unsent(requests, self.hold)
        # No mark "sent": a job claimed here is running (a mark would change nothing), and
        # one that could not be claimed has no message left once these are acked, so the
        # relay must publish it when it becomes ready.
        claimed = await self.store.claim_ids([r.job_id for r in recorded], lease, worker)
        return {
            m.held_key: d for m, d in zip(adopting, claimed, strict=True) if isinstance(d, Delivery)
        }

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        pace = self._pace()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return
            if pace.pass_needed(loop.time()):
                if await self.relay():
                    return  # published something: the next claim may find it
                continue
            wake = min(deadline, pace.next_pass()) - loop.time()
            waiting = asyncio.ensure_future(self.transport.wait(queues, max(wake, 0.0)))
            poke = asyncio.ensure_future(pace.poked.wait())
            try:
                await asyncio.wait({waiting, poke}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_and_wait((waiting, poke))  # a wait must not outlive this one
            if not waiting.cancelled() and waiting.result():
                pace.woken = tuple(queues)
                return  # a delivery for these queues: the claim that follows needs no barrier

    async def settle(self, outcomes: Sequence[Outcome]) -> int:
        settled = await self.store.settle(outcomes)
        self._poke()  # a retry's due time, a dependent or a batch's callback: the relay's
        return settled

    async def extend(self, leases: Sequence[Lease], lease: float) -> HeartbeatReply:
        return await self.store.extend(leases, lease)

    async def release(
        self, leases: Sequence[Lease], eta: float | None = None, *, delay: float | None = None
    ) -> None:
        await self.store.release(leases, eta, delay=delay)
        await self.relay()  # at once available to the other workers
        self._poke()

    async def progress(self, updates: Sequence[ProgressUpdate]) -> None:
        await self.store.progress(updates)

    # -- status and control: the store's -------------------------------------------------
    async def status(self, job_id: str) -> JobStatus | None:
        return await self.store.status(job_id)

    async def wait(self, job_id: str, timeout: float | None) -> JobStatus | None:
        return await self.store.wait(job_id, timeout)

    def wait_blocking(self, job_id: str, timeout: float | None) -> Waited:
        return self.store.wait_blocking(job_id, timeout)

    async def cancel(self, job_id: str) -> JobState | None:
        return await self.store.cancel(job_id)  # a message still queued is dropped at claim

    async def jobs(
        self,
        *,
        state: JobState | None = None,
        task: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[JobStatus]:
        return await self.store.jobs(
            state=state, task=task, queue=queue, limit=limit, before=before
        )

    async def queues(self) -> list[QueueStats]:
        return await self.store.queues()

    async def replay(self, job_ids: Sequence[str] | None = None) -> list[str]:
        replayed = await self.store.replay(job_ids)
        if replayed:
            await self.relay()
        return replayed

    async def webhooks_due(self, limit: int, lease: float) -> list[WebhookDue]:
        return await self.store.webhooks_due(limit, lease)

    async def webhook_attempted(
        self,
        job_id: str,
        attempt: WebhookAttempt,
        retry_at: float | None,
        *,
        retry_in: float | None = None,
    ) -> None:
        await self.store.webhook_attempted(job_id, attempt, retry_at, retry_in=retry_in)

    async def hold_lease(self, name: str, holder: str, ttl: float) -> float | None:
        return await self.store.hold_lease(name, holder, ttl)

    async def drop_lease(self, name: str, holder: str) -> None:
        await self.store.drop_lease(name, holder)

    async def throttle(
        self, key: str, limit: int, period: float, hold: float = float("inf")
    ) -> float:
        return await self.store.throttle(key, limit, period, hold)

    async def purge(self) -> int:
        return await self.store.purge()

    # -- events: a topic exchange, a queue per group (rabbitmq_events.py, design §9) -------
    @functools.cached_property
    def events(self) -> RabbitMQEvents:
        """The event bus: on RabbitMQ, with its registry and parked events in the store."""
        return RabbitMQEvents(self.transport, self.store, self.options)

    async def publish(self, events: Sequence[EventRecord]) -> None:
        await self.events.publish(events)

    async def join_group(self, group: str, patterns: Sequence[str], start: str | float) -> None:
        await self.events.join_group(group, patterns, start)

    async def leave_group(self, group: str) -> None:
        await self.events.leave_group(group)

    async def claim_events(self, group: str, limit: int, lease: float) -> list[EventDelivery]:
        return await self.events.claim_events(group, limit, lease)

    async def settle_events(self, group: str, outcomes: Sequence[EventOutcome]) -> int:
        return await self.events.settle_events(group, outcomes)

    async def wait_for_events(self, groups: Sequence[str], timeout: float) -> None:
        await self.events.wait_for_events(groups, timeout)

    async def event_groups(self) -> list[GroupStats]:
        return await self.events.event_groups()

    async def event_dead_letters(self, group: str, limit: int = 100) -> list[EventDeadLetter]:
        return await self.events.event_dead_letters(group, limit)

    async def replay_events(self, group: str, keys: Sequence[str] | None = None) -> int:
        return await self.events.replay_events(group, keys)
