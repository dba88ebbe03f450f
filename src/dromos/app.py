"""``App``: the task registry, the configuration, and the public entry point.

An app names where jobs travel (the broker URL) and which functions are tasks. It holds no
global state: two apps in one process are independent, and each process (a web server, a
worker) makes its own by importing the module that defines it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, overload

import msgspec

from dromos._coalesce import Coalescer
from dromos._portal import Portal
from dromos.batch import Batch
from dromos.brokers import NO_BACKEND, create_broker, keeps_status
from dromos.brokers.base import (
    SUMMARY_PLACEHOLDER,
    BatchRecord,
    Broker,
    BrokerOptions,
    EnqueueRequest,
    EventRecord,
    Waited,
)
from dromos.errors import ConfigurationError, JobNotFound, UnknownTaskError
from dromos.events.envelope import Event
from dromos.events.lifecycle import job_event
from dromos.events.publisher import Topics, as_record, records
from dromos.events.subscriber import Subscriber
from dromos.job import Job
from dromos.message import encode, new_job_id, new_job_ids, utcnow
from dromos.schedules import Periodic
from dromos.task import AsyncTask, BatchTask, Call, Executor, Options, SyncTask, Task
from dromos.webhooks import DEFAULT_BACKOFF, WebhookSettings

if TYPE_CHECKING:
    from dromos.chain import Chain
    from dromos.http import Gateway
    from dromos.worker.runtime import Worker

__all__ = ["App"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

DEFAULT_BROKER = "sqlite:///./dromos.db"


class TaskDecorator(Protocol):
    """What ``@app.task(...)`` with options returns: a decorator that keeps the types."""

    @overload
    def __call__(self, func: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, func: Callable[P, R], /) -> SyncTask[P, R]: ...


class BatchTaskDecorator(Protocol):
    """What ``@app.task(batch_size=...)`` returns: a function of a list of items becomes a
    task whose jobs each carry one item (``BatchTask[item, result]``)."""

    @overload
    def __call__(
        self, func: Callable[[list[T]], Coroutine[Any, Any, None]], /
    ) -> BatchTask[T, None]: ...
    @overload
    def __call__(
        self, func: Callable[[list[T]], Coroutine[Any, Any, Sequence[R] | None]], /
    ) -> BatchTask[T, R]: ...
    @overload
    def __call__(self, func: Callable[[list[T]], None], /) -> BatchTask[T, None]: ...
    @overload
    def __call__(self, func: Callable[[list[T]], Sequence[R] | None], /) -> BatchTask[T, R]: ...


def _connection(calls: list[Call[Any]]) -> Any:
    """The one connection the calls are to be enqueued in (None: the broker's own)."""
    connections = {id(c.options.connection): c.options.connection for c in calls}
    if len(connections) > 1:
        raise ConfigurationError(
            "the calls of one enqueue_many go in one transaction: give them all the same "
            "connection= (or none)"
        )
    return next(iter(connections.values()), None)


_PLACEHOLDER_ARG = msgspec.json.decode(SUMMARY_PLACEHOLDER)


def _batch_options(what: str, options: Options, callback: bool = False) -> None:
    """Refuse the options a job of a batch (or its callback) cannot have."""
    headers = options.headers or {}
    if options.idempotency_key is not None or "idempotency_key" in headers:
        raise ConfigurationError(
            f"{what}: no idempotency key in a batch (a deduplicated job would not belong to it)"
        )
    if "batch_id" in headers:
        raise ConfigurationError(f"{what}: the batch_id header is the batch's to set")
    if options.connection is not None:
        raise ConfigurationError(f"{what}: a batch cannot be enqueued in your transaction")
    if callback and (options.delay is not None or options.eta is not None or options.depends_on):
        raise ConfigurationError(
            f"{what}: the callback runs when the batch ends (no delay=/eta=/depends_on=)"
        )


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class App:
    """A dromos application: tasks plus where their jobs travel.

    ``broker`` is a URL (``sqlite:///path.db``, ``memory://``); ``$DROMOS_BROKER`` overrides
    it, so operators can point the same code elsewhere. ``result_ttl`` is how long results
    and ended jobs are kept, ``lease`` how long a worker may go silent before its jobs are
    handed to another, and ``idempotency_window`` how long an idempotency key names its job.

    Jobs enqueued with a ``callback_url`` get a signed webhook when they end: ``webhook_secret``
    (``$DROMOS_WEBHOOK_SECRET``, ``whsec_...``) signs it, ``webhook_hosts``
    (``$DROMOS_WEBHOOK_HOSTS``) limits where it may go, and a refused delivery is tried again on
    ``webhook_backoff`` for ``webhook_retry_for`` after the job ended; an attempt may take
    ``webhook_timeout`` seconds (see ``dromos.webhooks``).

    Events (``publish``, ``@app.subscriber``) stay on the bus for ``event_retention``;
    ``job_events`` makes every task announce its jobs' changes there (``dromos.job.*``).
    """

    def __init__(
        self,
        name: str = "dromos",
        broker: str | None = None,
        *,
        backend: str | None = None,
        result_ttl: float | timedelta = timedelta(days=7),
        dead_letter_ttl: float | timedelta = timedelta(days=30),
        lease: float | timedelta = 30.0,
        idempotency_window: float | timedelta = timedelta(days=1),
        max_recoveries: int = 3,
        webhook_secret: str | None = None,
        webhook_hosts: Sequence[str] | None = None,
        webhook_retry_for: float | timedelta = timedelta(days=1),
        webhook_backoff: Sequence[float] = DEFAULT_BACKOFF,
        webhook_timeout: float | timedelta = 10.0,
        job_events: bool = False,
        event_retention: float | timedelta = timedelta(days=7),
    ) -> None:
        self.name = name
        self.job_events = job_events
        self.broker_url = os.environ.get("DROMOS_BROKER") or broker or DEFAULT_BROKER
        backend = os.environ.get("DROMOS_BACKEND") or backend
        if keeps_status(self.broker_url) and backend not in (None, self.broker_url):
            raise ConfigurationError(
                f"backend={backend!r}: this broker keeps status and results itself; a separate "
                "backend is only for brokers that keep none (RabbitMQ). Leave backend unset."
            )
        if not keeps_status(self.broker_url) and backend is None:
            raise ConfigurationError(NO_BACKEND)
        self.backend_url = None if keeps_status(self.broker_url) else backend
        self.lease = _seconds(lease)
        if self.lease <= 0:
            raise ConfigurationError("lease must be a positive number of seconds")
        self.idempotency_window = _seconds(idempotency_window)
        self.broker_options = BrokerOptions(
            result_ttl=_seconds(result_ttl),
            dead_letter_ttl=_seconds(dead_letter_ttl),
            max_recoveries=max_recoveries,
            event_retention=_seconds(event_retention),
        )
        self.webhooks = WebhookSettings.from_env(
            webhook_secret, webhook_hosts, retry_for=_seconds(webhook_retry_for),
            backoff=tuple(webhook_backoff), timeout=_seconds(webhook_timeout),
        )  # fmt: skip
        if self.webhooks.timeout <= 0:
            raise ConfigurationError("webhook_timeout must be a positive number of seconds")
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.subscribers: list[Subscriber] = []
        self.periodics: list[Periodic] = []
        self.topics = Topics()
        self.event_source = f"/dromos/{name}"
        # Made now (it connects on first use) so that a bad URL fails here, not at the first
        # enqueue in production.
        self._broker: Broker | None = create_broker(
            self.broker_url, self.broker_options, self.backend_url
        )
        self._opened = False
        self._lock = threading.Lock()
        self._coalescers: dict[asyncio.AbstractEventLoop, Coalescer] = {}
        self.portal = Portal(f"dromos-portal-{name}")

    def __repr__(self) -> str:
        return f"<App {self.name} broker={self.broker_url}>"

    # -- registering tasks ------------------------------------------------------------------
    @overload
    def task(self, func: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...  # type: ignore[overload-overlap]
    @overload
    def task(self, func: Callable[P, R], /) -> SyncTask[P, R]: ...
    @overload
    def task(
        self,
        /,
        *,
        batch_size: int,
        batch_wait: float | timedelta = 0.5,
        name: str | None = None,
        queue: str = "default",
        retries: int = 3,
        retry_on: tuple[type[BaseException], ...] | None = None,
        backoff: float = 1.0,
        max_backoff: float = 600.0,
        timeout: float | None = None,
        priority: int = 0,
        executor: Executor = "thread",
        events: bool | None = None,
        rate_limit: str | None = None,
    ) -> BatchTaskDecorator: ...
    @overload
    def task(
        self,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        retries: int = 3,
        retry_on: tuple[type[BaseException], ...] | None = None,
        backoff: float = 1.0,
        max_backoff: float = 600.0,
        timeout: float | None = None,
        priority: int = 0,
        executor: Executor = "thread",
        events: bool | None = None,
        rate_limit: str | None = None,
        rate_limit_key: str | Callable[..., Any] | None = None,
    ) -> TaskDecorator: ...
    def task(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        retries: int = 3,
        retry_on: tuple[type[BaseException], ...] | None = None,
        backoff: float = 1.0,
        max_backoff: float = 600.0,
        timeout: float | None = None,
        priority: int = 0,
        executor: Executor = "thread",
        events: bool | None = None,
        rate_limit: str | None = None,
        rate_limit_key: str | Callable[..., Any] | None = None,
        batch_size: int | None = None,
        batch_wait: float | timedelta = 0.5,
    ) -> Any:
        """Register a function (``async def`` or plain ``def``) as a task.

        ``retries`` failed attempts are retried with jittered exponential ``backoff`` (only
        exceptions in ``retry_on``, when given); ``timeout`` limits one attempt; plain
        functions run in the worker's threads, or in a process pool with
        ``executor="process"`` (for CPU-bound work). ``events`` (default: the app's
        ``job_events``) announces the jobs' changes on the event bus (``dromos.job.*``).
        ``rate_limit="100/s"`` caps its starts across every worker (per value of the argument
        ``rate_limit_key`` names, or of what that function of the arguments returns); see
        ``dromos.rate``. ``batch_size=100, batch_wait=0.5``: the function takes a list of
        items and returns a list of results; each job carries one item, and a worker calls
        the function with up to ``batch_size`` of them (waiting at most ``batch_wait`` seconds
        for more after the first); see :class:`~dromos.task.BatchTask`.
        """

        def register(fn: Callable[..., Any]) -> Task[Any, Any]:
            cls: type[Task[Any, Any]] = (
                BatchTask if batch_size is not None
                else AsyncTask if asyncio.iscoroutinefunction(fn)
                else SyncTask
            )  # fmt: skip
            task = cls(
                self, fn, name=name, queue=queue, retries=retries, retry_on=retry_on,
                backoff=backoff, max_backoff=max_backoff, timeout=timeout, priority=priority,
                executor=executor, events=events, rate_limit=rate_limit,
                rate_limit_key=rate_limit_key, batch_size=batch_size, batch_wait=batch_wait,
            )  # fmt: skip
            if task.name in self.tasks:
                raise ConfigurationError(
                    f"a task named {task.name!r} is already registered; pass name= to tell "
                    "them apart"
                )
            self.tasks[task.name] = task
            return task

        return register if func is None else register(func)

    def periodic(
        self,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        timezone: str = "UTC",
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        misfire_grace: float | timedelta = 10.0,
        catch_up: bool = True,
        **task_options: Any,
    ) -> Callable[[Callable[..., Any]], Task[Any, Any]]:
        """Register a task that runs on a schedule: ``cron="*/5 * * * *"`` (in ``timezone``)
        or ``every=timedelta(minutes=5)`` (aligned to the epoch), with ``args``/``kwargs``.

        The workers fire it, one at a time across every process and machine; each tick runs
        once. A tick missed while no worker ran is run late if at most ``misfire_grace`` old
        (all of them, or only the latest with ``catch_up=False``). ``task_options`` are
        :meth:`task`'s (``queue=``, ``retries=`` ...). See ``dromos.schedules``.
        """

        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            task: Task[Any, Any] = self.task(**task_options)(func)
            try:
                periodic = Periodic(
                    task, cron=cron, every=None if every is None else _seconds(every),
                    timezone=timezone, args=tuple(args), kwargs=dict(kwargs or {}),
                    misfire_grace=_seconds(misfire_grace), catch_up=catch_up,
                )  # fmt: skip
            except BaseException:
                del self.tasks[task.name]
                raise
            self.periodics.append(periodic)
            return task

        return register

    def chain(self, *steps: Call[Any]) -> Chain:
        """Steps run one after another, each given the previous result as its first argument
        (``app.chain(fetch.call(url), transform.step(), load.step()).enqueue()``, the same as
        ``fetch.call(url) | transform.step() | load.step()``); see ``dromos.chain``."""
        from dromos.chain import Chain

        return Chain(list(steps))

    def get_task(self, name: str) -> Task[Any, Any]:
        """The task registered under ``name``; raise :class:`UnknownTaskError` otherwise."""
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTaskError(name, list(self.tasks)) from None

    # -- the broker ---------------------------------------------------------------------------
    @property
    def broker(self) -> Broker:
        """The broker instance (not yet connected until first used)."""
        with self._lock:
            if self._broker is None:
                self._broker = create_broker(self.broker_url, self.broker_options, self.backend_url)
            return self._broker

    async def abroker(self) -> Broker:
        """The broker, connected."""
        broker = self.broker
        if not self._opened:
            await broker.open()
            self._opened = True
        return broker

    async def aclose(self) -> None:
        """Disconnect from the broker (it reconnects on next use)."""
        broker, self._broker = self._broker, None
        self._opened = False
        if broker is not None:
            await broker.close()

    def close(self) -> None:
        """Blocking twin of :meth:`aclose`; also stops the blocking portal's thread."""
        if self._opened:
            self.portal.call(self.aclose)
        self.portal.stop()

    # -- events -----------------------------------------------------------------------------
    def topic(self, name: str, data_type: Any) -> None:
        """Declare the type of a topic's data: ``publish`` validates (and converts) against it,
        and the AsyncAPI document describes it."""
        self.topics.declare(name, data_type)

    def subscriber(
        self,
        *patterns: str,
        group: str | None = None,
        retries: int = 3,
        timeout: float = 60.0,
        backoff: float = 1.0,
        max_backoff: float = 300.0,
        start: str | float = "latest",
        batch: int | None = None,
    ) -> Callable[[Callable[..., Any]], Subscriber]:
        """Handle the events of ``patterns`` (``orders.created``, ``orders.*``, ``orders.#``)
        in the consumer group ``group`` (default: the function's import path).

        Every group gets every matching event; workers running the same group share them. A
        failing handler is retried ``retries`` times with exponential backoff, then its event
        is dead-lettered for the group (``dromos events dlq``). A new group starts at the
        ``latest`` event, or at the ``earliest`` the bus keeps, or at a Unix time.

        ``batch=N``: the handler takes a list of up to N events (``list[dromos.Event[T]]`` or
        ``list[T]``) per call, for bulk writes; they succeed or fail together (each event
        keeps its own attempts), and such a subscriber is alone in its group.
        """

        def register(func: Callable[..., Any]) -> Subscriber:
            name = group or f"{func.__module__}.{func.__qualname__}"
            sub = Subscriber(
                func, patterns, group=name, retries=retries, timeout=timeout,
                backoff=backoff, max_backoff=max_backoff, start=start, batch=batch,
            )  # fmt: skip
            mates = [s for s in self.subscribers if s.group == name]
            if mates and (batch is not None or any(s.batch is not None for s in mates)):
                raise ConfigurationError(
                    f"group {name!r}: a batch subscriber (batch=) is alone in its group"
                )
            self.subscribers.append(sub)
            return sub

        return register

    def publish(
        self,
        topic: str,
        data: Any = None,
        *,
        id: str | None = None,
        subject: str | None = None,
        extensions: dict[str, Any] | None = None,
        source: str | None = None,
    ) -> str:
        """Publish one event (checked against the topic's declared type); return its id.

        ``source`` (CloudEvents) defaults to ``/dromos/<app name>``."""
        record = as_record(self.topics, source or self.event_source, topic, data, event_id=id,
                           subject=subject, extensions=extensions)  # fmt: skip
        self._publish_blocking([record])
        return record.id

    async def apublish(
        self,
        topic: str,
        data: Any = None,
        *,
        id: str | None = None,
        subject: str | None = None,
        extensions: dict[str, Any] | None = None,
        source: str | None = None,
    ) -> str:
        """asyncio twin of :meth:`publish`."""
        record = as_record(self.topics, source or self.event_source, topic, data, event_id=id,
                           subject=subject, extensions=extensions)  # fmt: skip
        await self._publish([record])
        return record.id

    def publish_many(self, events: Iterable[tuple[str, Any] | Event[Any]]) -> list[str]:
        """Publish many events in one round trip, all or none: ``(topic, data)`` pairs or
        :class:`dromos.Event` objects. Return their ids."""
        batch = records(self.topics, self.event_source, events)
        if batch:
            self._publish_blocking(batch)
        return [r.id for r in batch]

    def _publish_blocking(self, batch: list[EventRecord]) -> None:
        # From this thread when the broker can (no hop to the portal and back), as enqueue.
        if not (self._opened and self.broker.publish_blocking(batch)):
            self.portal.call(self._publish, batch)

    async def apublish_many(self, events: Iterable[tuple[str, Any] | Event[Any]]) -> list[str]:
        """asyncio twin of :meth:`publish_many`."""
        batch = records(self.topics, self.event_source, events)
        if batch:
            await self._publish(batch)
        return [r.id for r in batch]

    async def _publish(self, batch: list[EventRecord]) -> None:
        await (await self.abroker()).publish(batch)

    # -- jobs -----------------------------------------------------------------------------
    def job(self, job_id: str) -> Job[Any]:
        """A handle for a job id received elsewhere (its result is plain JSON)."""
        return Job(self, job_id)

    def _requests(self, calls: list[Call[Any]]) -> list[EnqueueRequest]:
        """Check every call and build its envelope; raise before anything is queued."""
        window, now = self.idempotency_window, utcnow()
        ids = new_job_ids(len(calls))
        requests = [c.task.request(c, window, i, now) for c, i in zip(calls, ids, strict=True)]
        for c in calls:
            if c.task.app is not self:
                raise ConfigurationError(f"task {c.task.name!r} belongs to another app")
        return requests

    async def _enqueue(self, requests: list[EnqueueRequest]) -> list[str]:
        return await (await self.abroker()).enqueue(requests)

    async def _enqueue_together(self, requests: list[EnqueueRequest]) -> list[str]:
        """``_enqueue``, sharing a round trip with the calls that arrive while one is out."""
        loop = asyncio.get_running_loop()
        coalescer = self._coalescers.get(loop)
        if coalescer is None:
            if len(self._coalescers) > 16:  # loops come and go (asyncio.run per call)
                self._coalescers = {k: v for k, v in self._coalescers.items() if not k.is_closed()}
            coalescer = self._coalescers[loop] = Coalescer(self._enqueue)
        return await coalescer.enqueue(requests)

    async def aenqueue_many(self, calls: Iterable[Call[Any]]) -> list[Job[Any]]:
        """Check every call, then queue them all in one round trip (all or none)."""
        calls = list(calls)
        requests = self._requests(calls)
        if not requests:
            return []
        connection = _connection(calls)
        if connection is not None:  # in the caller's transaction: its commit decides
            broker = await self.abroker()
            ids = await broker.enqueue_in(connection, requests)
            return [c.task.handle(i) for c, i in zip(calls, ids, strict=True)]
        ids = await self._enqueue_together(requests)
        queued = self._queued_events(calls, requests, ids)
        if queued:
            await self._publish(queued)
        return [c.task.handle(i) for c, i in zip(calls, ids, strict=True)]

    def _wait_blocking(self, job_id: str, timeout: float | None) -> Waited:
        """:meth:`Broker.wait_blocking` once the broker is open (``False``: not served)."""
        return self.broker.wait_blocking(job_id, timeout) if self._opened else False

    def enqueue_many(self, calls: Iterable[Call[Any]]) -> list[Job[Any]]:
        """Blocking twin of :meth:`aenqueue_many`."""
        calls = list(calls)
        requests = self._requests(calls)
        if not requests:
            return []
        connection = _connection(calls)
        if connection is not None:  # in the caller's transaction, in the caller's thread
            if not self._opened:
                self.portal.call(self.abroker)  # connects (and migrates) the broker
            held = self.broker.enqueue_in_blocking(connection, requests)
            return [c.task.handle(i) for c, i in zip(calls, held, strict=True)]
        # A broker that can insert in this thread spares the hop to the portal and back;
        # the first call goes through the portal, which connects the broker.
        ids = self.broker.enqueue_blocking(requests) if self._opened else None
        if ids is None:
            ids = self.portal.call(self._enqueue, requests)
        queued = self._queued_events(calls, requests, ids)
        if queued:
            self._publish_blocking(queued)
        return [c.task.handle(i) for c, i in zip(calls, ids, strict=True)]

    # -- batches --------------------------------------------------------------------------
    def _batch(
        self, calls: Iterable[Call[Any]], on_complete: Task[Any, Any] | Call[Any] | None
    ) -> tuple[list[Call[Any]], BatchRecord, list[EnqueueRequest]]:
        """Check every call and the callback; build the batch record and the envelopes."""
        calls = list(calls)
        if not calls:
            raise ConfigurationError("a batch needs at least one call")
        for c in calls:
            _batch_options(f"task {c.task.name!r}", c.options)
        window, now, batch_id = self.idempotency_window, utcnow(), new_job_id()
        ids = new_job_ids(len(calls) + 1)  # the last one is the callback's
        requests = [
            c.task.request(c, window, i, now, batch_id) for c, i in zip(calls, ids, strict=False)
        ]
        for c in calls:
            if c.task.app is not self:
                raise ConfigurationError(f"task {c.task.name!r} belongs to another app")
        callback = None
        if on_complete is not None:
            callback = self._callback(on_complete, batch_id, len(calls), ids[-1], window)
        return calls, BatchRecord(batch_id, len(requests), callback), requests

    def _callback(
        self, on_complete: Task[Any, Any] | Call[Any], batch_id: str, total: int, job_id: str,
        window: float,
    ) -> EnqueueRequest:  # fmt: skip
        """The callback's envelope, the placeholder as its first argument (checked against
        the task's signature with a summary of the right shape)."""
        call = on_complete if isinstance(on_complete, Call) else Call(on_complete, (), {})
        if call.task.app is not self:
            raise ConfigurationError(f"task {call.task.name!r} belongs to another app")
        _batch_options(f"on_complete {call.task.name!r}", call.options, callback=True)
        sample = {"batch_id": batch_id, "total": total, "succeeded": 0, "failed": 0,
                  "cancelled": 0}  # fmt: skip
        checked = call.task.request(
            Call(call.task, (sample, *call.args), call.kwargs, call.options), window, job_id
        )
        args = [_PLACEHOLDER_ARG, *checked.message.args[1:]]
        message = msgspec.structs.replace(checked.message, args=args)
        return EnqueueRequest(message, encode(message), window)

    async def abatch(
        self,
        calls: Iterable[Call[Any]],
        *,
        on_complete: Task[Any, Any] | Call[Any] | None = None,
    ) -> Batch[Any]:
        """Queue calls of any tasks (``task.call(...)``, ``task.options(...).call(...)``) as
        one batch, in one write (all or none); ``on_complete`` as in ``Task.map``."""
        calls, record, requests = self._batch(calls, on_complete)
        ids = await (await self.abroker()).enqueue_batch(record, requests)
        queued = self._queued_events(calls, requests, ids)
        if queued:
            await self._publish(queued)
        return self._batch_handle(record, calls, ids)

    def batch(
        self,
        calls: Iterable[Call[Any]],
        *,
        on_complete: Task[Any, Any] | Call[Any] | None = None,
    ) -> Batch[Any]:
        """Blocking twin of :meth:`abatch`."""
        calls, record, requests = self._batch(calls, on_complete)
        ids = self.portal.call(self._enqueue_batch, record, requests)
        queued = self._queued_events(calls, requests, ids)
        if queued:
            self._publish_blocking(queued)
        return self._batch_handle(record, calls, ids)

    async def _enqueue_batch(
        self, record: BatchRecord, requests: list[EnqueueRequest]
    ) -> list[str]:
        return await (await self.abroker()).enqueue_batch(record, requests)

    def _batch_handle(
        self, record: BatchRecord, calls: list[Call[Any]], ids: list[str]
    ) -> Batch[Any]:
        return Batch(self, record.id, [c.task.handle(i) for c, i in zip(calls, ids, strict=True)])

    async def aget_batch(self, batch_id: str) -> Batch[Any]:
        """A handle for a batch id received elsewhere (its results are plain JSON); raise
        :class:`JobNotFound` if the broker has no such batch."""
        ids = await (await self.abroker()).batch_jobs(batch_id)
        if ids is None:
            raise JobNotFound(batch_id)
        return Batch(self, batch_id, [Job(self, i) for i in ids])

    def get_batch(self, batch_id: str) -> Batch[Any]:
        """Blocking twin of :meth:`aget_batch`."""
        return self.portal.call(self.aget_batch, batch_id)

    def _queued_events(
        self, calls: list[Call[Any]], requests: list[EnqueueRequest], ids: list[str]
    ) -> list[EventRecord]:
        """``dromos.job.queued`` for the new jobs of tasks with events (an idempotent repeat
        created no job: it announces nothing)."""
        if not self.job_events and not any(c.task.events for c in calls):
            return []
        return [
            job_event(
                self.event_source,
                "queued",
                job_id=job_id,
                task=req.message.task,
                queue=req.message.queue,
                attempt=0,
            )
            for call, req, job_id in zip(calls, requests, ids, strict=True)
            if call.task.events and job_id == req.message.id
        ]

    def worker(
        self,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = 16,
        prefetch: int | None = None,
        grace: float = 30.0,
        groups: Sequence[str] | None = None,
        schedules: bool = True,
    ) -> Worker:
        """A worker for this app (``await worker.run()``); see :class:`dromos.Worker`.

        It runs the subscribers of ``groups`` too (default: every subscriber's group), and
        takes its turn firing the periodic tasks unless ``schedules=False``."""
        from dromos.worker.runtime import Worker

        return Worker(
            self, queues=queues, concurrency=concurrency, prefetch=prefetch, grace=grace,
            groups=groups, schedules=schedules,
        )  # fmt: skip

    def asgi(self, **settings: Any) -> Gateway:
        """This app's HTTP gateway, an ASGI app to serve or mount (``pip install dromos[http]``).

        ``settings`` are :func:`dromos.http.gateway`'s (``api_keys=``, ``rate_limit=`` ...)::

            starlette_app.mount("/jobs", app.asgi(api_keys="k...:enqueue+read"))
        """
        from dromos.http import gateway

        return gateway(self, **settings)
