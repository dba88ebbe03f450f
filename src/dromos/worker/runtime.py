"""The worker: one asyncio loop that claims jobs in batches, runs them, and reports back.

Four loops cooperate in one process:

* **fetch** claims up to ``concurrency + prefetch`` jobs at once and starts each as an
  asyncio task that waits for one of ``concurrency`` slots;
* **flush** writes outcomes and progress in batches (whatever accumulated while the last
  write was in flight), so a busy worker makes few round trips;
* **heartbeat** extends the leases of every job held and learns which were cancelled or lost;
* **maintain** deletes ended jobs whose retention passed.

Shutdown (``stop()``, SIGTERM): stop claiming, hand back jobs not started, give running ones
``grace`` seconds, then interrupt them and hand them back too. Nothing is lost: a job leaves
the broker only through ``settle``, and a job this worker can no longer report on is either
released or recovered by another worker when its lease expires.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from dromos._failures import EXITS, error_of, stored_text, words
from dromos._loop import TimeLimit, cancel_and_wait
from dromos.brokers.base import Broker, Delivery, EventRecord, Lease, Outcome, ProgressUpdate
from dromos.chain import CHAIN_HEADER, next_step
from dromos.context import JobContext, reset_current, set_current
from dromos.errors import ConfigurationError, Retry, ValidationError
from dromos.events.lifecycle import job_event
from dromos.job import JobError, JobState
from dromos.message import DecodeError, Message, decode
from dromos.webhooks import Deliverer
from dromos.worker.executors import Executors

if TYPE_CHECKING:
    from dromos.app import App
    from dromos.events.runner import EventRunner
    from dromos.schedules import Scheduler
    from dromos.task import Task

__all__ = ["Worker"]

log = logging.getLogger("dromos.worker")
#: A job ready to run: its envelope, its task, and its arguments loaded.
_Ready = tuple[Message, "Task[Any, Any]", list[Any], dict[str, Any]]


class _Deferred:
    """What :meth:`Worker._throttle` returns for a job it handed back until its turn."""


_DEFERRED = _Deferred()
#: A job of a batch task waiting for its batch's call, and where its outcome will be set.
_Entry = tuple["_Run", _Ready, "asyncio.Future[Outcome]"]
_S = JobState
# Rate limits: a job starts at most this long after the start the broker reserved for it
# (later, it reserves again), and the broker counts each start for its period plus this: so
# no window of one period holds more starts than the limit, measured at the starts, also
# when a busy process wakes a job late or a slot frees late.
_RATE_SLACK = 0.05


class _Exited(Exception):
    """``sys.exit()`` (or a ``KeyboardInterrupt``) raised by a task's own code: a failure of its
    job, reported as what was raised. Let through, it ended the worker's event loop and so the
    whole process, with every job it held, and again on each attempt of that job."""

    def __init__(self, exit: SystemExit | KeyboardInterrupt) -> None:
        super().__init__(repr(exit))
        self.exit = exit


class _TimeLimit(Exception):  # reported as the job's TimeoutError
    """An attempt ran past its time limit."""


# Errors of a write that no retry can cure: something in it cannot be encoded or stored.
_UNWRITABLE: tuple[type[Exception], ...] = (
    UnicodeError,
    TypeError,
    OverflowError,
    msgspec.EncodeError,
)


def _limit_message(timeout: float | None) -> str:
    return f"the attempt exceeded its time limit of {timeout or 0:g}s"


class _Run:
    """One job this worker holds, from claim until its outcome is written."""

    __slots__ = ("ctx", "delivery", "lease", "reason", "start_by", "started", "task")

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.lease = Lease(delivery.job_id, delivery.attempt)
        self.task: asyncio.Task[None] | None = None
        self.ctx: JobContext | None = None
        self.started = False
        self.start_by = 0.0  # rate limits: the monotonic time its reserved start ends (0: none)
        # Why the worker interrupted it: "cancel" (asked for), "lost" (lease gone),
        # "shutdown" (hand it back); None while nobody interrupted it.
        self.reason: str | None = None


class Worker:
    """Runs an app's jobs from ``queues`` with ``concurrency`` at a time.

    ``prefetch`` extra jobs are claimed ahead (default: as many as ``concurrency``) so that a
    slot never waits for a round trip; ``lease`` defaults to the app's. ``await run()``
    returns after :meth:`stop` once everything held has been settled or handed back.
    """

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = 16,
        prefetch: int | None = None,
        lease: float | None = None,
        grace: float = 30.0,
        name: str | None = None,
        groups: Sequence[str] | None = None,
        schedules: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.app = app
        self.queues = list(queues) if queues else sorted({t.queue for t in app.tasks.values()})
        self.queues = self.queues or ["default"]
        self.concurrency = concurrency
        # The subscribers this worker runs: those of ``groups`` (all when None, none for []).
        known = {sub.group for sub in app.subscribers}
        unknown = set(groups or ()) - known
        if unknown:
            raise ConfigurationError(
                f"no subscriber of {app.name!r} is in group(s) {sorted(unknown)} "
                f"(groups: {sorted(known) or 'none'})"
            )
        self.subscribers = [s for s in app.subscribers if groups is None or s.group in groups]
        self.capacity = concurrency + (concurrency if prefetch is None else max(0, prefetch))
        sizes = [
            t.batch_size for t in app.tasks.values() if t.batch_size and t.queue in self.queues
        ]
        if any(sizes):  # room to hold a whole batch beside the jobs running
            self.capacity = max(self.capacity, concurrency + max(sizes))
        self.lease = app.lease if lease is None else lease
        self.heartbeat = min(self.lease / 3, 1.0)
        self.grace = grace
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.counts: collections.Counter[str] = collections.Counter()
        self._running: dict[str, _Run] = {}
        self._unsettled: dict[str, Lease] = {}
        self._outcomes: list[Outcome] = []
        self._progress: dict[str, ProgressUpdate] = {}
        self._to_release: list[Lease] = []
        self._hooked: set[str] = set()  # jobs held whose end makes a webhook due
        self._eventful: dict[str, Task[Any, Any]] = {}  # jobs held that announce their changes
        self._lifecycle: list[EventRecord] = []  # lifecycle events to publish with the next flush
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id = 0
        self._stop_requested = threading.Event()
        self.executors: Executors | None = None
        self.event_runner: EventRunner | None = None
        self.schedules = schedules  # whether this worker may fire the periodic tasks
        self.scheduler: Scheduler | None = None
        # Batch consumption: per task, the jobs gathered for its next call, and its timer.
        self._gathering: dict[str, list[_Entry]] = {}
        self._gathered = 0  # jobs gathered (held, not busy: the fetcher claims beside them)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._batch_calls: set[asyncio.Task[None]] = set()
        # Rate limits: the longest wait for a reserved start this worker holds a job for.
        self.rate_hold = 2.0

    # -- control --------------------------------------------------------------------------
    def stop(self, *, now: bool = False) -> None:
        """Ask the worker to shut down gracefully (``now``: without the grace period).

        Safe to call from any thread and from signal handlers.
        """
        self._stop_requested.set()
        if now:
            self.grace = 0.0
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        self._set(self._stopping)
        self._room.set()
        if self.grace == 0.0:
            self._set(self._hurry)

    def _set(self, event: asyncio.Event) -> None:
        """Set ``event`` and end the waits that it cuts short (see :meth:`_until_stopped`)."""
        event.set()
        for task in self._cut.pop(event, ()):
            task.cancel()

    @property
    def held(self) -> int:
        """Jobs this worker holds right now (running, waiting for a slot, or unsettled)."""
        return len(self._running) + len(self._unsettled)

    # -- the main loop ----------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until :meth:`stop`; then drain, settle, hand back, and return."""
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self._stopping = asyncio.Event()
        self._room = asyncio.Event()
        self._hurry = asyncio.Event()
        self._cut: dict[asyncio.Event, set[asyncio.Future[Any]]] = {}
        self._flush_wanted = asyncio.Event()
        self._closing = False
        self._slots = asyncio.Semaphore(self.concurrency)
        self.executors = Executors(self.concurrency)
        if self._stop_requested.is_set():
            self._wake_all()
        broker = self._broker = await self.app.abroker()
        self._deliverer = Deliverer(broker, self.app.webhooks, f"/dromos/{self.app.name}")
        log.info("worker %s serving %s (concurrency %d)", self.name, self.queues, self.concurrency)
        flusher = asyncio.create_task(self._flusher(), name="dromos-flush")
        events = asyncio.create_task(self._events(broker), name="dromos-events")
        scheduling = asyncio.create_task(self._schedule(broker), name="dromos-scheduler")
        background = [
            asyncio.create_task(self._heartbeat(), name="dromos-heartbeat"),
            asyncio.create_task(self._maintain(), name="dromos-maintain"),
            asyncio.create_task(self._deliver(), name="dromos-webhooks"),
        ]
        try:
            await self._fetch()
            try:
                await broker.stop_claiming(self.queues, self.name)
            except Exception as exc:  # what it held comes back when the leases run out
                log.warning("stopping claims failed (%s)", exc)
            await self._drain()
        finally:
            self._closing = True
            self._flush_wanted.set()
            await asyncio.gather(flusher, return_exceptions=True)
            self._set(self._stopping)  # the subscribers stop too, when the jobs failed
            await asyncio.gather(events, scheduling, return_exceptions=True)
            await cancel_and_wait([*background, *self._batch_calls])
            if self._to_release:
                await broker.release(self._to_release)
                self.counts["released"] += len(self._to_release)
            self.executors.shutdown()
            log.info("worker %s stopped: %s", self.name, dict(self.counts))

    async def _schedule(self, broker: Broker) -> None:
        """Fire the app's periodic tasks while this worker holds the scheduler's lease."""
        if not (self.app.periodics and self.schedules):
            return
        from dromos.schedules import Scheduler

        self.scheduler = Scheduler(self.app, broker, self.name)
        try:
            await self.scheduler.run(self._stopping)
        except NotImplementedError as exc:
            log.error("periodic tasks not fired: %s", exc)
        except Exception:
            log.exception("the scheduler stopped")

    async def _events(self, broker: Broker) -> None:
        """Run the subscribers (if any) until the worker stops; they get the same grace."""
        if not self.subscribers:
            return
        from dromos.events.runner import EventRunner

        runner = self.event_runner = EventRunner(
            broker, self.subscribers, self.concurrency, self.lease
        )
        groups = sorted(runner.groups)
        log.info("worker %s runs the subscribers of %s", self.name, groups)
        try:
            await runner.run(self._stopping, self.grace)
        except NotImplementedError as exc:
            log.error("subscribers of %s not run: %s", groups, exc)
        except Exception:
            log.exception("the subscribers of %s stopped", groups)

    async def _until_stopped(self, awaitable: Awaitable[Any], event: asyncio.Event) -> None:
        """Await ``awaitable`` unless ``event`` is set first (set through :meth:`_set`).

        The event cancels the wait rather than racing it: an idle worker's wait for work ends
        on every new job, and a second task to watch the event, then cancelling it and waiting
        for its end, cost more than the rest of the wake-up (some 50 us a job at low load). A
        wait whose cancellation is lost (see :func:`cancel_and_wait`) still ends by its own
        timeout, and the caller waits for it: it never runs on past its caller.
        """
        if event.is_set():
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # else "coroutine ... was never awaited" at shutdown
            return
        current = asyncio.current_task()
        assert current is not None
        asked = current.cancelling()
        task = asyncio.ensure_future(awaitable)
        cut = self._cut.setdefault(event, set())
        cut.add(task)
        try:
            await task
        except asyncio.CancelledError:
            if current.cancelling() > asked:
                raise  # this task itself is cancelled, not only the wait
        finally:
            cut.discard(task)

    async def _fetch(self) -> None:
        broker, backoff = self._broker, 0.1
        while not self._stopping.is_set():
            # Claim only when the prefetch buffer has run low, so that batches stay large.
            # Also wait when full (prefetch=0): a claim of 0 jobs would idle until new work.
            busy = len(self._running) - self._gathered
            if busy > self.concurrency or len(self._running) >= self.capacity:
                self._room.clear()
                await self._until_stopped(self._room.wait(), self._stopping)
                continue
            try:
                room = self.capacity - len(self._running)
                deliveries = await broker.claim(self.queues, room, self.lease, self.name)
                backoff = 0.1
            except ConfigurationError:
                raise  # no retry mends it (a queue whose name RabbitMQ cannot hold): stop
            except Exception as exc:
                log.warning("claim failed (%s); retrying in %.1fs", exc, backoff)
                await self._until_stopped(asyncio.sleep(backoff), self._stopping)
                backoff = min(backoff * 2, 5.0)
                continue
            short = len(deliveries) < room  # the queues ran dry: wait instead of asking again
            for delivery in deliveries:
                run = _Run(delivery)
                self._running[delivery.job_id] = run
                run.task = asyncio.create_task(self._execute(run))
            if short:
                try:
                    waiting = broker.wait_for_work(self.queues, 1.0)
                    await self._until_stopped(waiting, self._stopping)
                except Exception as exc:  # as for a failed claim: back off, never crash
                    log.warning("waiting for work failed (%s); retrying in %.1fs", exc, backoff)
                    await self._until_stopped(asyncio.sleep(backoff), self._stopping)
                    backoff = min(backoff * 2, 5.0)

    async def _drain(self) -> None:
        # Jobs not started go back to the queue at once, for other workers to take while the
        # running ones use the grace period.
        waiting = [r for r in self._running.values() if not r.started]
        for run in waiting:
            self._interrupt(run, "shutdown")
        await asyncio.gather(*(r.task for r in waiting if r.task), return_exceptions=True)
        for run in waiting:
            # A task cancelled before its first step (claimed just before stop()) never ran
            # _execute's cleanup: without this its job would stay running until its lease ends.
            if self._running.pop(run.delivery.job_id, None) is not None:
                self._to_release.append(run.lease)
        await self._hand_back()
        active = [r.task for r in self._running.values() if r.task is not None]
        if active and self.grace > 0:
            log.info("waiting up to %gs for %d running job(s)", self.grace, len(active))
            await self._until_stopped(asyncio.wait(active, timeout=self.grace), self._hurry)
        for run in list(self._running.values()):
            self._interrupt(run, "shutdown")
        await asyncio.gather(*active, return_exceptions=True)

    async def _hand_back(self) -> None:
        """Release the jobs set aside for release; on failure ``run`` tries again at exit."""
        leases, self._to_release = self._to_release, []
        if not leases:
            return
        try:
            await self._broker.release(leases)
        except Exception as exc:
            log.warning("handing back %d job(s) failed (%s); will retry", len(leases), exc)
            self._to_release[:0] = leases
            return
        self.counts["released"] += len(leases)

    def _interrupt(self, run: _Run, reason: str) -> None:
        if run.reason is None:
            run.reason = reason
        if run.ctx is not None:
            run.ctx._cancel()
        if run.task is not None:
            run.task.cancel()

    # -- one job ----------------------------------------------------------------------------
    async def _execute(self, run: _Run) -> None:
        outcome: Outcome | None = None
        try:
            ready = self._prepare(run)
            if isinstance(ready, Outcome):
                outcome = ready
            else:
                task = ready[1]
                if task.rate_limit is not None:  # waits for its turn without taking a slot
                    gate = await self._throttle(run, ready)
                    if isinstance(gate, _Deferred):
                        self._hooked.discard(run.delivery.job_id)
                        return  # handed back until its turn: not held meanwhile
                    outcome = gate
                if outcome is None and task.batch_size:
                    outcome = await self._gather(run, ready)
                elif outcome is None:
                    async with self._slots:
                        if run.start_by and time.monotonic() > run.start_by:
                            await self._retime(run, ready)  # its reserved start passed
                        outcome = await self._attempt(run, ready)
        except asyncio.CancelledError:
            if run.reason is None:
                raise
            if run.reason == "cancel":
                outcome = self._ended(run.delivery, _S.CANCELLED, "Cancelled", "cancelled")
            elif run.reason == "shutdown":
                self._to_release.append(run.lease)
        finally:
            del self._running[run.delivery.job_id]
            if len(self._running) <= self.concurrency:
                self._room.set()
        if outcome is not None:
            if run.delivery.job_id in self._eventful and outcome.state is not _S.RETRYING:
                self._announce(
                    outcome.state.value, outcome.job_id, outcome.attempt,
                    result=outcome.result, error=outcome.error,
                )  # fmt: skip
                del self._eventful[outcome.job_id]
            self._unsettled[outcome.job_id] = run.lease
            self._outcomes.append(outcome)
            self._flush_wanted.set()
            self.counts[outcome.state.value] += 1

    def _prepare(self, run: _Run) -> Outcome | _Ready:
        """Decode the job and load its arguments, or the outcome of a job that cannot run."""
        d = run.delivery
        try:
            msg = decode(d.payload)
        except DecodeError as exc:
            return self._ended(d, _S.FAILED, "DecodeError", str(exc))
        if "callback_url" in msg.headers:
            self._hooked.add(d.job_id)  # its end makes a webhook due: wake the deliverer then
        task = self.app.tasks.get(msg.task)
        if task is None:
            return self._ended(
                d, _S.FAILED, "UnknownTask",
                f"no task named {msg.task!r} is registered with app {self.app.name!r}",
            )  # fmt: skip
        try:
            args, kwargs = task.signature.load(msg.args, msg.kwargs)
        except ValidationError as exc:
            return self._ended(d, _S.FAILED, "InvalidArguments", str(exc))
        run.ctx = JobContext(
            d.job_id, task.name, queue=msg.queue, attempt=d.attempt, headers=msg.headers,
            report=self._report,
        )  # fmt: skip
        return msg, task, args, kwargs

    async def _throttle(self, run: _Run, ready: _Ready) -> Outcome | _Deferred | None:
        """Wait for the start the broker reserves under the task's rate limit (dromos.rate).

        A start further off than ``rate_hold`` seconds is not reserved: the job is handed
        back until then (``scheduled``), so that a busy key does not fill this worker with
        jobs that wait while others could run. An outcome instead if the job cannot be
        limited (its key function raised)."""
        msg, task, args, kwargs = ready
        limit, backoff = task.rate_limit, 0.1
        assert limit is not None
        try:
            key = task.rate_key_of(args, kwargs)
        except Exception as exc:
            return self._failure(run, task, msg.max_attempts, exc)
        while True:
            # Its reserved start is no earlier than the call's start plus the wait (the
            # broker's clock read in between): the slack is counted from there, strictly.
            asked = time.monotonic()
            try:
                wait = await self._broker.throttle(
                    key, limit.count, limit.period + _RATE_SLACK, self.rate_hold
                )
                break
            except NotImplementedError as exc:
                return self._ended(run.delivery, _S.FAILED, "ConfigurationError", str(exc))
            except Exception as exc:  # as for a failed claim: back off, never lose the job
                log.warning(
                    "rate limit of %s unknown (%s); asking again in %.1fs", key, exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        if wait > self.rate_hold:
            # Back when its turn would have come, give or take: the crowd spreads out.
            try:  # a delay, on the broker's clock: this worker's may be off
                await self._broker.release([run.lease], delay=wait * random.uniform(1.0, 1.1))
                self.counts["deferred"] += 1
                return _DEFERRED
            except Exception as exc:  # kept, then: it waits here for a reserved start
                log.warning("deferring job %s failed (%s); holding it", run.delivery.job_id, exc)
                asked = time.monotonic()
                wait = await self._broker.throttle(key, limit.count, limit.period + _RATE_SLACK)
        run.start_by = asked + wait + _RATE_SLACK
        if wait > 0:
            self.counts["throttled"] += 1
            await asyncio.sleep(wait)
        return None

    async def _retime(self, run: _Run, ready: _Ready) -> None:
        """A job that missed its reserved start (woken late, or a slot freed late) reserves
        another and waits for it, holding its slot now: its start must stay within the slack
        of a reserved one for the limit to hold at the starts."""
        task = ready[1]
        limit = task.rate_limit
        assert limit is not None
        key = task.rate_key_of(ready[2], ready[3])
        while time.monotonic() > run.start_by:
            self.counts["retimed"] += 1
            asked = time.monotonic()
            wait = await self._broker.throttle(key, limit.count, limit.period + _RATE_SLACK)
            run.start_by = asked + wait + _RATE_SLACK
            await asyncio.sleep(wait)

    def _started(self, run: _Run, task: Task[Any, Any]) -> None:
        run.started = True
        if task.events:
            self._eventful[run.delivery.job_id] = task
            self._announce("started", run.delivery.job_id, run.delivery.attempt)

    async def _attempt(self, run: _Run, ready: _Ready) -> Outcome:
        msg, task, args, kwargs = ready
        assert run.ctx is not None
        self._started(run, task)
        timeout = msg.timeout if msg.timeout is not None else task.timeout
        try:
            result = await self._call(task, run.ctx, args, kwargs, timeout)
            payload = task.signature.dump_result(result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._failure(run, task, msg.max_attempts, exc)
        return await self._succeeded(run, task, msg, payload)

    async def _succeeded(
        self, run: _Run, task: Task[Any, Any], msg: Message, payload: bytes
    ) -> Outcome:
        d = run.delivery
        if CHAIN_HEADER in msg.headers:
            # The next step is queued before this one is reported ended: a worker dying in
            # between runs this step again, and the next step's idempotency key keeps it one.
            try:
                step = next_step(self.app, msg, payload)
                if step is not None:
                    await self._broker.enqueue([step])
            except Exception as exc:
                return self._failure(run, task, msg.max_attempts, exc)
        return Outcome(d.job_id, d.attempt, _S.SUCCEEDED, result=payload)

    # -- batch consumption (``batch_size=``): one call for many jobs, an outcome for each ----
    async def _gather(self, run: _Run, ready: _Ready) -> Outcome:
        """Wait, without a slot, until the task's batch is full or ``batch_wait`` passed since
        its first job came; then the batch is called and this job gets its own outcome."""
        task = ready[1]
        entry: _Entry = (run, ready, asyncio.get_running_loop().create_future())
        waiting = self._gathering.setdefault(task.name, [])
        waiting.append(entry)
        self._gathered += 1
        if len(waiting) >= task.batch_size:
            self._call_batch(task)
        elif task.name not in self._timers:
            loop = asyncio.get_running_loop()
            self._timers[task.name] = loop.call_later(task.batch_wait, self._call_batch, task)
        try:
            return await entry[2]
        finally:
            if entry in self._gathering.get(task.name, ()):  # interrupted before its call
                self._gathering[task.name].remove(entry)
                self._gathered -= 1

    def _call_batch(self, task: Task[Any, Any]) -> None:
        timer = self._timers.pop(task.name, None)
        if timer is not None:
            timer.cancel()
        entries = self._gathering.pop(task.name, [])
        self._gathered -= len(entries)
        if entries:
            call = asyncio.create_task(self._run_batch(task, entries))
            self._batch_calls.add(call)
            call.add_done_callback(self._batch_calls.discard)
        self._room.set()  # the jobs gathered now count as busy, or were handed out

    async def _run_batch(self, task: Task[Any, Any], entries: list[_Entry]) -> None:
        async with self._slots:
            live = [e for e in entries if not e[2].done()]
            if not live:
                return
            runs = [run for run, _, _ in live]
            for run in runs:
                self._started(run, task)

            def report(_: JobContext, fraction: float, message: str | None) -> None:
                for run in runs:  # the batch's progress is each of its jobs' progress
                    assert run.ctx is not None
                    self._report(run.ctx, fraction, message)

            first = runs[0].ctx
            assert first is not None
            ctx = JobContext(first.id, task.name, queue=first.queue, attempt=first.attempt,
                             headers=first.headers, report=report)  # fmt: skip
            items = [ready[2][0] for _, ready, _ in live]  # each job's one argument
            try:
                results = await self._call(task, ctx, [items], {}, task.timeout)
                outcomes = await self._batch_outcomes(task, live, results)
            except Exception as exc:
                outcomes = [self._failure(run, task, ready[0].max_attempts, exc)
                            for run, ready, _ in live]  # fmt: skip
        for (_, _, done), outcome in zip(live, outcomes, strict=True):
            if not done.done():  # else interrupted meanwhile (cancelled, lease lost)
                done.set_result(outcome)

    async def _batch_outcomes(
        self, task: Task[Any, Any], live: list[_Entry], results: Any
    ) -> list[Outcome]:
        """One outcome per job from the batch's return value: a list with one result per
        item, in order (an exception in it fails that job alone), or None for all."""
        if results is None:
            results = [None] * len(live)
        if not isinstance(results, list | tuple) or len(results) != len(live):
            got = f"{len(results)} results" if isinstance(results, list | tuple) else repr(results)
            raise TypeError(
                f"batch task {task.name!r} returned {got[:200]} for {len(live)} item(s): "
                "return a list with one result per item, in order, or None"
            )
        outcomes = []
        for (run, ready, _), result in zip(live, results, strict=True):
            if isinstance(result, Exception):
                outcomes.append(self._failure(run, task, ready[0].max_attempts, result))
                continue
            try:
                payload = task.signature.dump_result(result)
            except Exception as exc:
                outcomes.append(self._failure(run, task, ready[0].max_attempts, exc))
                continue
            outcomes.append(await self._succeeded(run, task, ready[0], payload))
        return outcomes

    async def _call(
        self,
        task: Task[Any, Any],
        ctx: JobContext,
        args: list[Any],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        assert self.executors is not None
        if task.is_async:
            token = set_current(ctx)
            limit = None
            try:
                if timeout is None:  # the common case: no timer to arm and disarm
                    return await task.func(*args, **kwargs)
                async with TimeLimit(timeout) as limit:
                    return await task.func(*args, **kwargs)
            except TimeoutError:
                if limit is not None and limit.expired:
                    ctx._cancel()
                    raise _TimeLimit(_limit_message(timeout)) from None
                raise
            except EXITS as exc:
                raise _Exited(exc) from exc
            finally:
                reset_current(token)
        future = self.executors.submit(task, ctx, args, kwargs)
        try:
            if timeout is None:
                return await future
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            if not future.cancelled():
                raise  # the function itself raised TimeoutError
            ctx._cancel()
            self.executors.abandon_thread()
            raise _TimeLimit(_limit_message(timeout)) from None
        except asyncio.CancelledError:
            ctx._cancel()
            if task.executor == "thread":
                self.executors.abandon_thread()
            raise
        except EXITS as exc:
            raise _Exited(exc) from exc

    def _failure(
        self, run: _Run, task: Task[Any, Any], max_attempts: int, exc: Exception
    ) -> Outcome:
        d = run.delivery
        if isinstance(exc, _Exited):
            error = error_of(exc.exit, d.attempt)
        else:
            error = error_of(
                exc, d.attempt, "TimeoutError" if isinstance(exc, _TimeLimit) else None
            )
        kind = error.type
        if run.reason == "cancel":
            return Outcome(d.job_id, d.attempt, _S.CANCELLED, error=error)
        failures = d.failures + 1
        if isinstance(exc, Retry):
            retryable, delay = True, exc.delay
        else:
            retryable = task.retry_on is None or isinstance(exc, task.retry_on)
            delay = None
        if retryable and failures < max_attempts:
            if delay is None:
                delay = task.retry_delay(failures)
            log.info("job %s (%s) failed with %s; retry in %.2fs", d.job_id, task.name, kind, delay)
            return Outcome(d.job_id, d.attempt, _S.RETRYING, error=error, delay=delay)
        log.warning("job %s (%s) failed for good: %s: %s", d.job_id, task.name, kind, error.message)
        return Outcome(d.job_id, d.attempt, _S.FAILED, error=error)

    def _ended(self, d: Delivery, state: JobState, kind: str, message: str) -> Outcome:
        if state is _S.FAILED:
            log.warning("job %s dead-lettered: %s: %s", d.job_id, kind, message)
        error = JobError(type=kind, message=message, attempt=d.attempt)
        return Outcome(d.job_id, d.attempt, state, error=error)

    def _report(self, ctx: JobContext, fraction: float, message: str | None) -> None:
        update = ProgressUpdate(ctx.id, ctx.attempt, fraction, message and stored_text(message))
        if threading.get_ident() == self._thread_id:
            self._record(update)
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(self._record, update)

    def _record(self, update: ProgressUpdate) -> None:
        self._progress[update.job_id] = update
        if update.job_id in self._eventful:
            self._announce("progress", update.job_id, update.attempt,
                           progress=update.progress, message=update.message)  # fmt: skip
        self._flush_wanted.set()

    def _announce(self, kind: str, job_id: str, attempt: int, **more: Any) -> None:
        """Queue a lifecycle event of a held job for the next flush (see events.lifecycle)."""
        task = self._eventful[job_id]
        self._lifecycle.append(job_event(
            self.app.event_source, kind, job_id=job_id, task=task.name, queue=task.queue,
            attempt=attempt, **more,
        ))  # fmt: skip
        self._flush_wanted.set()

    # -- background loops -----------------------------------------------------------------
    async def _flusher(self) -> None:
        delay = 0.05
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted.clear()
            if await self._flush():
                delay = 0.05
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._flush_wanted.set()
                if self._closing and delay >= 5.0:
                    log.error("giving up on %d unsettled outcome(s)", len(self._outcomes))
                    return
            if self._closing and not self._outcomes and not self._progress and not self._lifecycle:
                return

    async def _flush(self) -> bool:
        """Write pending progress and outcomes; on failure keep them for the next try."""
        progress, self._progress = self._progress, {}
        outcomes, self._outcomes = self._outcomes, []
        announced, self._lifecycle = self._lifecycle, []
        try:
            if announced:  # before the settle: an end is announced at least once, never lost
                await self._broker.publish(announced)
                announced = []
            if progress:
                await self._broker.progress(list(progress.values()))
                progress = {}
            if outcomes:
                await self._broker.settle(outcomes)
        except Exception as exc:
            try:
                if not isinstance(exc, _UNWRITABLE):
                    raise
                # Not the broker's trouble but something in the batch it cannot take: a retry
                # of the batch would fail forever and hold back every later outcome. They are
                # written one by one; what still cannot be written ends failed, saying why.
                log.error("writing %d outcome(s) failed (%s); one by one", len(outcomes), exc)
                outcomes = await self._settle_apart(outcomes, announced, progress)
            except Exception as again:
                log.warning("writing %d outcome(s) failed (%s); will retry", len(outcomes), again)
                self._outcomes[:0] = outcomes
                self._progress = {**progress, **self._progress}
                self._lifecycle[:0] = announced
                return False
        for outcome in outcomes:
            self._unsettled.pop(outcome.job_id, None)
        if self._hooked:
            ended = {o.job_id for o in outcomes if o.state is not _S.RETRYING}
            if ended & self._hooked:
                self._hooked -= ended
                self._deliverer.poke()
        return True

    async def _settle_apart(
        self,
        outcomes: list[Outcome],
        announced: list[EventRecord],
        progress: dict[str, ProgressUpdate],
    ) -> list[Outcome]:
        """After a batch the broker could not take: announcements and progress updates that
        cannot be written are dropped; each outcome is settled alone, and one that
        cannot be written is replaced by its failure (``OutcomeNotWritten``). Returns the
        outcomes settled; a transient error on the way raises, and the caller keeps the rest."""
        for record in announced:
            with contextlib.suppress(*_UNWRITABLE):
                await self._broker.publish([record])
        for update in progress.values():
            with contextlib.suppress(*_UNWRITABLE):
                await self._broker.progress([update])
        settled = []
        for outcome in outcomes:
            try:
                await self._broker.settle([outcome])
            except _UNWRITABLE as exc:
                reason = f"the worker could not write this outcome: {words(exc)}"
                error = JobError(type="OutcomeNotWritten", message=reason, attempt=outcome.attempt)
                failed = Outcome(outcome.job_id, outcome.attempt, _S.FAILED, error=error)
                log.error("job %s: %s; it fails", outcome.job_id, reason)
                try:
                    await self._broker.settle([failed])
                except _UNWRITABLE:  # its lease ends, and another worker recovers it
                    log.error("job %s: its failure could not be written either", outcome.job_id)
            settled.append(outcome)
        return settled

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            leases = [r.lease for r in self._running.values()] + list(self._unsettled.values())
            if not leases:
                continue
            try:
                reply = await self._broker.extend(leases, self.lease)
            except Exception as exc:
                log.warning("heartbeat failed (%s)", exc)
                continue
            for job_id in reply.lost:
                if (run := self._running.get(job_id)) is not None:
                    log.warning("lost the lease of job %s; abandoning this attempt", job_id)
                    self._interrupt(run, "lost")
            for job_id in reply.cancel:
                if (run := self._running.get(job_id)) is not None:
                    self._interrupt(run, "cancel")

    async def _deliver(self) -> None:
        """Completion webhooks from the broker's outbox (see ``dromos.webhooks``)."""
        await self._deliverer.run(self._stopping)

    async def _maintain(self) -> None:
        while True:
            try:
                purged = await self._broker.purge()
                if purged:
                    log.info("purged %d job(s) past their retention", purged)
            except Exception as exc:
                log.warning("purge failed (%s)", exc)
            await asyncio.sleep(60.0)

    _broker: Broker
    _deliverer: Deliverer
