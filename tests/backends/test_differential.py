"""Each broker against the memory reference, driven by Hypothesis (RELIABILITY #15).

A stateful test draws a sequence of broker calls (enqueue with priorities, delays,
idempotency keys and callbacks; dependents of earlier jobs; batches with and without a
completion callback; claim; settle as succeeded, retrying, failed or cancelled, fresh or with
a stale attempt; release; extend; progress; cancel; replay) and makes each call on the
backend under test and on ``memory://``, the reference. After each call the two must answer
alike (or fail alike), and every job's status, every batch's counts and jobs, the queue
counts and the listings must match; claimed jobs must carry the same payload (a batch
callback's summary is filled in by the broker). The event bus is driven the same way
(publish, claim, acknowledge, retry, dead-letter, settle stale, replay; group counts and dead
letters compared). Hypothesis shrinks a divergence to the
shortest sequence that shows it when asked (see ``SHRINK``).

What the contract leaves open is not compared: where a retried, replayed or readied job (a
dependent, a batch callback) stands among the ready jobs of its priority, and the order of
equal priorities across queues (those claims take everything ready and are compared as
sets, and by each queue's order); how many of the ready jobs a claim returns ("up to" its
limit: the reference claims as many as the backend did, and must have the same ones); which
dependency a dependent's entry names when two of its dependencies ended in one write. Times
are not compared, only whether a job has an eta. Every lease is long (5 minutes): no lease
runs out during a run, so what the brokers do is decided by the calls alone, not by the
clock.

Each example opens a broker on the test's store and works in two queues of its own (the
reference in a fresh memory store), so that examples cost no new schema or server; on
RabbitMQ each example's quorum queues are deleted with it. ``DROMOS_DIFFERENTIAL_EXAMPLES``
and ``DROMOS_DIFFERENTIAL_STEPS`` draw more (the suite runs 15 of 30 calls on each backend,
for jobs and for events).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from dromos import Broker, JobState
from dromos.brokers import create_broker
from dromos.brokers.base import (
    DEPENDS_ON_HEADER,
    SUMMARY_PLACEHOLDER,
    BatchRecord,
    BrokerOptions,
    Delivery,
    EnqueueRequest,
    EventDelivery,
    EventOutcome,
    EventRecord,
    Lease,
    Outcome,
    ProgressUpdate,
)
from dromos.errors import DromosError
from dromos.events import encode_event
from dromos.job import JobError, JobStatus
from dromos.message import encode, new_job_id, utcnow
from tests.backends._support import request
from tests.backends.conftest import Target

try:
    from dromos.brokers.rabbitmq_transport import BANDS, AmqpTransport
    from dromos.brokers.rabbitmq_url import Name
except ImportError:  # aio-pika absent: the RabbitMQ backend skips (or fails under CI) itself
    pass

T = TypeVar("T")

LEASE = 300.0  # seconds: no lease runs out while an example runs
FAR = 3600.0  # seconds: a delay that stays in the future while an example runs
# One priority per band: RabbitMQ orders exactly by priority only what a worker holds, and
# holds a band's oldest first (docs/brokers.md), so two priorities of one band could come
# out of age order there without breaking its contract.
PRIORITIES = st.sampled_from([-1, 0, 1])
EXAMPLES = int(os.environ.get("DROMOS_DIFFERENTIAL_EXAMPLES", "15"))
STEPS = int(os.environ.get("DROMOS_DIFFERENTIAL_STEPS", "30"))
# A divergence is reported as found, the whole sequence of calls: shrinking it replays the
# calls on real servers for minutes. DROMOS_DIFFERENTIAL_SHRINK=1 shrinks it to the shortest.
SHRINK = os.environ.get("DROMOS_DIFFERENTIAL_SHRINK") == "1"
PHASES = [p for p in Phase if SHRINK or p is not Phase.shrink]
_examples = itertools.count()
_PLACEHOLDER = msgspec.json.decode(SUMMARY_PLACEHOLDER)


async def _open(url: str, backend: str | None) -> Broker:
    broker = create_broker(url, BrokerOptions(), backend)
    await broker.open()
    return broker


def _runs(deliveries: list[Delivery]) -> list[tuple[str, int, int, bytes]]:
    """What must be alike of claimed jobs: the run, and the payload (a batch callback's
    carries the batch's summary, filled in by the broker)."""
    return [(d.job_id, d.attempt, d.failures, d.payload) for d in deliveries]


def _status(status: JobStatus | None) -> Any:
    """What must be alike of one job's status on every broker (no times, only their presence)."""
    if status is None:
        return None
    return (
        status.id, status.task, status.queue, status.state, status.attempts, status.priority,
        status.result, status.progress, status.message, status.cancel_requested,
        status.eta is not None, [_error(e) for e in status.errors],
    )  # fmt: skip


def _error(error: JobError) -> tuple[str, str | None, int]:
    # A dependent reached through two of its dependencies in one write may name either.
    named = None if error.type.startswith("Dependency") else error.message
    return error.type, named, error.attempt


class Divergence(RuleBasedStateMachine):
    """Calls made on ``target`` and ``reference`` alike; ``loop`` runs both."""

    loop: asyncio.AbstractEventLoop
    where: Target

    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        n = next(_examples)
        self.queues = [f"d{n}a", f"d{n}b"]
        self.keys = [f"d{n}k1", f"d{n}k2"]
        self.reference = self._run(_open("memory://", None))
        self.target = self._run(_open(self.where.broker, self.where.backend))
        self.ids: list[str] = []  # every job id enqueued, in order
        self.queue_of: dict[str, str] = {}
        self.held: dict[str, int] = {}  # job id -> the attempt of its current lease
        self.stale: list[Lease] = []  # leases that ended: settling them must change nothing
        self.floating = False  # a retried or replayed job may be ready: claims take all
        self.batches: list[str] = []

    def _run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    def both(self, call: Callable[[Broker], Awaitable[T]]) -> tuple[T, T]:
        """``call`` on the reference, then on the backend: (reference's, backend's) answer."""
        return self._run(call(self.reference)), self._run(call(self.target))

    def both_or_error(self, call: Callable[[Broker], Awaitable[T]]) -> tuple[Any, Any]:
        """:meth:`both`, an error standing for its class: both must fail alike."""

        async def answer(broker: Broker) -> Any:
            try:
                return await call(broker)
            except DromosError as exc:
                return type(exc)

        return self._run(answer(self.reference)), self._run(answer(self.target))

    def _known(self, ids: list[str], requests: list[EnqueueRequest]) -> None:
        for job_id, req in zip(ids, requests, strict=True):
            if job_id not in self.queue_of:
                self.ids.append(job_id)
                self.queue_of[job_id] = req.message.queue

    def teardown(self) -> None:
        self._run(self.reference.close())
        self._run(self.target.close())
        if self.where.broker.startswith("amqp"):
            # Quorum queues are costly to keep: each example's go with it.
            transport = AmqpTransport(self.where.broker)
            names = {
                Name("queue", transport.names.queue(q, band)) for q in self.queues for band in BANDS
            }  # fmt: skip
            self._run(transport.delete_names(names))

    # -- producing ----------------------------------------------------------------------
    @initialize()
    def start(self) -> None:
        pass

    @rule(
        target=jobs,
        specs=st.lists(
            st.tuples(
                st.integers(0, 1), PRIORITIES, st.booleans(), st.sampled_from([None, 0, 1]),
                st.booleans(),
            ),
            min_size=1, max_size=3,
        ),
    )  # fmt: skip
    def enqueue(self, specs: list[tuple[int, int, bool, int | None, bool]]) -> Any:
        # A callback URL takes another path through some brokers' inserts (never called here).
        requests = [
            request(
                "t", queue=self.queues[q], priority=priority, delay=FAR if delayed else None,
                key=None if key is None else self.keys[key], args=[i],
                callback="http://127.0.0.1:9/hook" if hook else None,
            )
            for i, (q, priority, delayed, key, hook) in enumerate(specs)
        ]  # fmt: skip
        expected, got = self.both(lambda b: b.enqueue(requests))
        assert got == expected, "enqueue returned other ids (idempotency keys?)"
        self._known(got, requests)
        return multiple(*got)

    @precondition(lambda self: self.ids)
    @rule(target=jobs, data=st.data(), priority=PRIORITIES)
    def enqueue_dependent(self, data: st.DataObject, priority: int) -> Any:
        # Dependencies in the dependent's queue (a Cluster keeps them in one slot); some may
        # be a batch callback not inserted yet: then both must refuse it.
        first = data.draw(st.sampled_from(self.ids))
        queue = self.queue_of[first]
        same = [i for i in self.ids if self.queue_of[i] == queue]
        deps = data.draw(st.lists(st.sampled_from(same), max_size=2, unique=True))
        req = request("t", queue=queue, priority=priority)
        req.message.headers[DEPENDS_ON_HEADER] = ",".join(dict.fromkeys([first, *deps]))
        expected, got = self.both_or_error(lambda b: b.enqueue([req]))
        assert got == expected, "enqueue of a dependent answered otherwise"
        if isinstance(got, list):
            self._known(got, [req])
            self.floating = True  # readied when its dependencies end, wherever that puts it
            return multiple(*got)
        return multiple()

    @rule(
        target=jobs, q=st.integers(0, 1), size=st.integers(1, 3), callback=st.booleans(),
        priority=PRIORITIES,
    )  # fmt: skip
    def enqueue_batch(self, q: int, size: int, callback: bool, priority: int) -> Any:
        batch_id = new_job_id()
        requests = [
            request("t", queue=self.queues[q], priority=priority, args=[i]) for i in range(size)
        ]
        for req in requests:
            req.message.headers["batch_id"] = batch_id
        then = None
        if callback:  # in the batch's queue: a Cluster keeps a batch in one slot
            then = request("t", queue=self.queues[q], payload=b"")
            message = msgspec.structs.replace(then.message, args=[_PLACEHOLDER])
            then = EnqueueRequest(message, encode(message), then.idempotency_window)
        record = BatchRecord(batch_id, size, then)
        expected, got = self.both(lambda b: b.enqueue_batch(record, requests))
        assert got == expected, "enqueue_batch returned other ids"
        self._known(got, requests)
        self.batches.append(batch_id)
        if then is not None:
            # Its status is None on both until the batch's last job ends and inserts it.
            self._known([then.message.id], [then])
            self.floating = True
        return multiple(*got)

    # -- consuming ----------------------------------------------------------------------
    @rule(which=st.sampled_from([(0,), (1,), (0, 1)]), limit=st.integers(1, 4))
    def claim(self, which: tuple[int, ...], limit: int) -> None:
        queues = [self.queues[i] for i in which]
        if self.floating or len(queues) > 1:
            # Open in the contract: where a retried or replayed job stands, and the order of
            # equal priorities across queues. Take everything ready on both; compare what
            # was taken, and each queue's order when nothing floats.
            ready, got = self._ready(queues), []
            for _ in range(40):  # bounded: claims until the reference's count (see below)
                batch = self._run(self.target.claim(queues, 100, LEASE, "w"))
                got += batch
                if len(got) >= ready:
                    break
                if not batch:
                    self._run(asyncio.sleep(0.05))
            expected = self._run(self.reference.claim(queues, 100, LEASE, "w"))
            assert sorted(_runs(got)) == sorted(_runs(expected)), f"claim of {queues} differs"
            if not self.floating:
                for queue in queues:
                    mine = [r for d, r in zip(got, _runs(got), strict=True) if self._in(d, queue)]
                    theirs = [
                        r for d, r in zip(expected, _runs(expected), strict=True)
                        if self._in(d, queue)
                    ]  # fmt: skip
                    assert mine == theirs, f"claim of {queues}: {queue} out of order"
        else:
            # "Up to" its limit: the reference takes as many as the backend did, and must
            # take the same ones, in the same order.
            got = self._run(self.target.claim(queues, limit, LEASE, "w"))
            for _ in range(20):  # bounded: 1 s
                if got or not self._ready(queues):
                    break
                # On RabbitMQ a claim that dropped the messages of ended jobs may return
                # before those behind them arrive; their arrival wakes a worker, which claims
                # again (docs/brokers.md): so does this test, a few times.
                self._run(asyncio.sleep(0.05))
                got = self._run(self.target.claim(queues, limit, LEASE, "w"))
            expected = self._run(self.reference.claim(queues, len(got) or limit, LEASE, "w"))
            assert _runs(got) == _runs(expected), f"claim of {queues} (limit {limit}) differs"
        for d in got:
            self.held[d.job_id] = d.attempt

    def _ready(self, queues: list[str]) -> int:
        """How many jobs of ``queues`` the reference has ready (a due one shows queued)."""
        stats = self._run(self.reference.queues())
        return sum(s.counts.get("queued", 0) for s in stats if s.queue in queues)

    def _in(self, delivery: Delivery, queue: str) -> bool:
        return self.queue_of[delivery.job_id] == queue

    @precondition(lambda self: self.held)
    @rule(
        data=st.data(),
        how=st.sampled_from(["succeeded", "retry-now", "retry-later", "failed", "cancelled"]),
    )
    def settle(self, data: st.DataObject, how: str) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.held)))
        attempt = self.held.pop(job_id)
        error = JobError(type="Boom", message=f"attempt {attempt}", attempt=attempt)
        outcome = {
            "succeeded": Outcome(job_id, attempt, JobState.SUCCEEDED, result=b'{"ok":1}'),
            "retry-now": Outcome(job_id, attempt, JobState.RETRYING, error=error, delay=0.0),
            "retry-later": Outcome(job_id, attempt, JobState.RETRYING, error=error, delay=FAR),
            "failed": Outcome(job_id, attempt, JobState.FAILED, error=error),
            "cancelled": Outcome(job_id, attempt, JobState.CANCELLED),
        }[how]
        expected, got = self.both(lambda b: b.settle([outcome]))
        assert got == expected == 1, f"settle {how} applied {got}, the reference {expected}"
        self.stale.append(Lease(job_id, attempt))
        if how == "retry-now":
            self.floating = True

    @precondition(lambda self: self.stale)
    @rule(data=st.data())
    def settle_stale(self, data: st.DataObject) -> None:
        lease = data.draw(st.sampled_from(self.stale))
        outcome = Outcome(lease.job_id, lease.attempt, JobState.SUCCEEDED, result=b"1")
        expected, got = self.both(lambda b: b.settle([outcome]))
        assert got == expected == 0, "a settle with a stale attempt applied"

    @precondition(lambda self: self.held)
    @rule(data=st.data(), later=st.booleans())
    def release(self, data: st.DataObject, later: bool) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.held)), min_size=1, unique=True))
        leases = [Lease(i, self.held.pop(i)) for i in ids]
        self.both(lambda b: b.release(leases, delay=FAR if later else None))
        self.stale += leases

    @precondition(lambda self: self.held or self.stale)
    @rule()
    def extend(self) -> None:
        # A worker holds one run of a job at most: a stale lease of a job held again is left
        # out (the reply names job ids, which could not tell the two runs apart).
        stale = [s for s in self.stale[-3:] if s.job_id not in self.held]
        leases = [Lease(i, a) for i, a in self.held.items()] + stale
        expected, got = self.both(lambda b: b.extend(leases, LEASE))
        assert (got.lost, got.cancel) == (expected.lost, expected.cancel), "heartbeat differs"

    @precondition(lambda self: self.held)
    @rule(data=st.data(), progress=st.sampled_from([0.25, 0.5, 1.0]))
    def progress(self, data: st.DataObject, progress: float) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.held)))
        update = ProgressUpdate(job_id, self.held[job_id], progress, f"at {progress}")
        self.both(lambda b: b.progress([update]))

    # -- control ------------------------------------------------------------------------
    @rule(job_id=jobs)
    def cancel(self, job_id: str) -> None:
        expected, got = self.both(lambda b: b.cancel(job_id))
        assert got == expected, f"cancel left {got}, the reference {expected}"

    @rule(data=st.data(), every=st.booleans())
    def replay(self, data: st.DataObject, every: bool) -> None:
        ids = None if every or not self.ids else data.draw(st.lists(st.sampled_from(self.ids)))
        expected, got = self.both(lambda b: b.replay(ids))
        # Every dead letter (None) of the backend's store includes earlier examples' (ended,
        # so replaying them changes nothing here): compare this example's.
        mine = set(self.ids)
        assert sorted(i for i in got if i in mine) == sorted(expected), "replay moved others"
        if got:
            self.floating = True

    # -- what must always be alike ---------------------------------------------------------
    @invariant()
    def statuses_match(self) -> None:
        for job_id in self.ids:
            expected, got = self.both(lambda b, j=job_id: b.status(j))
            assert _status(got) == _status(expected), f"job {job_id} differs"

    @invariant()
    def batches_match(self) -> None:
        for batch_id in self.batches:
            expected, got = self.both(lambda b, i=batch_id: b.batch_status(i))
            assert expected is not None
            assert got is not None
            assert (
                got.total, got.succeeded, got.failed, got.cancelled, got.callback_id,
                got.finished_at is None,
            ) == (
                expected.total, expected.succeeded, expected.failed, expected.cancelled,
                expected.callback_id, expected.finished_at is None,
            ), f"batch {batch_id} differs"  # fmt: skip
            expected_ids, got_ids = self.both(lambda b, i=batch_id: b.batch_jobs(i))
            assert got_ids == expected_ids, f"batch {batch_id}'s jobs differ"

    @invariant()
    def counts_and_listings_match(self) -> None:
        expected, got = self.both(lambda b: b.queues())
        mine = set(self.queues)

        def counts(stats: Any) -> dict[str, dict[str, int]]:
            return {
                s.queue: {k: v for k, v in s.counts.items() if v}
                for s in stats if s.queue in mine and any(s.counts.values())
            }  # fmt: skip

        assert counts(got) == counts(expected), "queue counts differ"
        for queue in self.queues:
            for state in (None, JobState.QUEUED, JobState.RETRYING, JobState.FAILED):
                expected, got = self.both(
                    lambda b, q=queue, s=state: b.jobs(queue=q, state=s, limit=100)
                )
                assert [s.id for s in got] == [s.id for s in expected], (
                    f"listing of {queue} ({state}) differs"
                )


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def drive(machine: type[RuleBasedStateMachine], loop: Any, backend: Target) -> None:
    """Run ``machine``'s examples with its calls on ``loop`` and the backend ``backend``."""
    bound = type(machine.__name__, (machine,), {"loop": loop, "where": backend})
    run_state_machine_as_test(
        bound,
        settings=settings(
            max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
            suppress_health_check=list(HealthCheck), phases=PHASES,
        ),
    )  # fmt: skip


def test_each_broker_answers_as_the_reference_does(
    backend: Target, loop: asyncio.AbstractEventLoop
) -> None:
    drive(Divergence, loop, backend)


class EventDivergence(RuleBasedStateMachine):
    """The event bus the same way: two groups of the example's own topics on each broker.

    An event's key is the broker's own (a row, a stream id), so a delivery is known by its
    payload, and each side is settled with its own key. Lag is not compared: on the
    backend's store it counts other examples' events too.
    """

    loop: asyncio.AbstractEventLoop
    where: Target

    def __init__(self) -> None:
        super().__init__()
        n = next(_examples)
        self.topics = [f"e{n}.orders.created", f"e{n}.orders.eu.paid", f"e{n}.payments.done"]
        self.groups = {f"e{n}a": [f"e{n}.orders.*"], f"e{n}b": [f"e{n}.#"]}
        self.reference = self._run(_open("memory://", None))
        self.target = self._run(_open(self.where.broker, self.where.backend))
        for group, patterns in self.groups.items():
            for broker in (self.reference, self.target):
                self._run(broker.join_group(group, patterns, "latest"))
        # (group, payload) -> (the reference's key, the backend's key, attempt)
        self.held: dict[tuple[str, bytes], tuple[str, str, int]] = {}
        # Settled deliveries: (group, payload, the reference's key, the backend's key, attempt).
        self.stale: list[tuple[str, bytes, str, str, int]] = []
        self.floating = False  # a retry may be due: claims take all, compared as sets

    def _run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        for group in self.groups:
            self._run(self.target.leave_group(group))
        self._run(self.reference.close())
        self._run(self.target.close())

    @rule(topics=st.lists(st.integers(0, 2), min_size=1, max_size=3))
    def publish(self, topics: list[int]) -> None:
        records = []
        for i in topics:
            event_id = new_job_id()
            topic = self.topics[i]
            body = encode_event(topic, i, event_id=event_id, source="/test", time=utcnow())
            records.append(EventRecord(topic, event_id, body))
        for broker in (self.reference, self.target):
            self._run(broker.publish(records))

    @rule(which=st.integers(0, 1), limit=st.integers(1, 4))
    def claim(self, which: int, limit: int) -> None:
        group = sorted(self.groups)[which]
        if self.floating:
            got: list[EventDelivery] = []
            for _ in range(40):  # bounded
                batch = self._run(self.target.claim_events(group, 100, LEASE))
                got += batch
                if not batch:
                    break
            expected = self._run(self.reference.claim_events(group, 100, LEASE))
            seen = sorted((d.payload, d.attempt, d.topic) for d in got)
            assert seen == sorted((d.payload, d.attempt, d.topic) for d in expected), (
                f"claim of {group} differs"
            )
        else:
            got = self._run(self.target.claim_events(group, limit, LEASE))
            expected = self._run(self.reference.claim_events(group, len(got) or limit, LEASE))
            assert [(d.payload, d.attempt, d.topic) for d in got] == [
                (d.payload, d.attempt, d.topic) for d in expected
            ], f"claim of {group} (limit {limit}) differs"
        theirs = {d.payload: d.key for d in expected}
        for d in got:
            self.held[(group, d.payload)] = (theirs[d.payload], d.key, d.attempt)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), how=st.sampled_from(["ack", "retry-now", "retry-later", "dead"]))
    def settle(self, data: st.DataObject, how: str) -> None:
        group, payload = data.draw(st.sampled_from(sorted(self.held)))
        ref_key, key, attempt = self.held.pop((group, payload))
        error = JobError(type="Boom", message=f"attempt {attempt}", attempt=attempt)

        def outcome(k: str) -> EventOutcome:
            if how == "ack":
                return EventOutcome(k, attempt)
            if how == "dead":
                return EventOutcome(k, attempt, error)
            wait = 0.0 if how == "retry-now" else FAR
            return EventOutcome(k, attempt, error, retry_at=time.time() + wait, retry_in=wait)

        expected = self._run(self.reference.settle_events(group, [outcome(ref_key)]))
        got = self._run(self.target.settle_events(group, [outcome(key)]))
        assert got == expected == 1, f"settle {how} applied {got}, the reference {expected}"
        self.stale.append((group, payload, ref_key, key, attempt))
        if how == "retry-now":
            self.floating = True

    @precondition(lambda self: self.stale)
    @rule(data=st.data())
    def settle_stale(self, data: st.DataObject) -> None:
        group, _, ref_key, key, attempt = data.draw(st.sampled_from(self.stale))
        expected = self._run(self.reference.settle_events(group, [EventOutcome(ref_key, attempt)]))
        got = self._run(self.target.settle_events(group, [EventOutcome(key, attempt)]))
        assert got == expected == 0, "a settle with a stale attempt applied"

    @rule(which=st.integers(0, 1), every=st.booleans(), data=st.data())
    def replay(self, which: int, every: bool, data: st.DataObject) -> None:
        group = sorted(self.groups)[which]
        dead = self._dead(group)
        if every or not dead:
            keys: tuple[list[str] | None, list[str] | None] = (None, None)
            payloads = sorted(dead)
        else:
            payloads = data.draw(st.lists(st.sampled_from(sorted(dead)), min_size=1, unique=True))
            keys = ([dead[p][0] for p in payloads], [dead[p][1] for p in payloads])
        # A replayed event's attempts start over (the contract), so its key and attempt name
        # a settled delivery and the next one alike on every bus: its stale settles are not
        # drawn any more (noticed by this test, see the session note).
        self.stale = [t for t in self.stale if (t[0], t[1]) not in {(group, p) for p in payloads}]
        expected = self._run(self.reference.replay_events(group, keys[0]))
        got = self._run(self.target.replay_events(group, keys[1]))
        assert got == expected, f"replay of {group} moved {got}, the reference {expected}"
        if got:
            self.floating = True

    def _dead(self, group: str) -> dict[bytes, tuple[str, str]]:
        """The group's dead letters: payload -> (the reference's key, the backend's key)."""
        ref = self._run(self.reference.event_dead_letters(group))
        mine = self._run(self.target.event_dead_letters(group))
        keys = {d.payload: d.key for d in mine}
        return {d.payload: (d.key, keys.get(d.payload, "?")) for d in ref}

    @invariant()
    def groups_and_dead_letters_match(self) -> None:
        def stats(broker: Broker) -> dict[str, tuple[int, int]]:
            # Not "retrying": RabbitMQ hands a due retry or a replay back to the group's queue
            # at once (no longer retrying), where the other buses count it until a claim.
            found = self._run(broker.event_groups())
            return {g.group: (g.running, g.dead) for g in found if g.group in self.groups}

        assert stats(self.target) == stats(self.reference), "group counts differ"
        for group in self.groups:

            def letters(broker: Broker, g: str = group) -> list[Any]:
                return [
                    (d.topic, d.payload, d.attempts, [_error(e) for e in d.errors])
                    for d in self._run(broker.event_dead_letters(g))
                ]

            # Sorted: their order is a bus's own (publishing, or dead-lettering on RabbitMQ).
            assert sorted(letters(self.target)) == sorted(letters(self.reference)), (
                f"{group}'s dead letters differ"
            )


def test_each_event_bus_answers_as_the_reference_does(
    backend: Target, loop: asyncio.AbstractEventLoop
) -> None:
    drive(EventDivergence, loop, backend)
