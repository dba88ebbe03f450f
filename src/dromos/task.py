"""``Task[P, R]``: a registered function, typed, that can be enqueued or called inline.

``resize.enqueue(42, width=640)`` is checked by mypy against ``resize``'s own signature
(ParamSpec) and at run time against its type hints (pydantic); ``job.result()`` is typed ``R``.
``resize.options(delay=10).enqueue(...)`` sets per-job options; ``resize.call(...)`` makes a
deferred call for ``enqueue_many``.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar

import msgspec

from dromos._signature import Signature, one_item
from dromos.brokers.base import DEPENDS_ON_HEADER, EnqueueRequest
from dromos.context import JobContext, reset_current, run_as, set_current
from dromos.errors import ConfigurationError, ValidationError
from dromos.job import Job
from dromos.message import Message, encode, new_job_id, utcnow
from dromos.rate import key_function, parse_rate
from dromos.webhooks import check_url

if TYPE_CHECKING:
    from dromos.app import App
    from dromos.batch import Batch
    from dromos.chain import Chain

__all__ = ["AsyncTask", "BatchTask", "Call", "Options", "SyncTask", "Task"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

Executor = Literal["thread", "process"]


class Options(msgspec.Struct, frozen=True):
    """Per-job options; ``None`` means the task's default."""

    delay: float | None = None
    eta: datetime | None = None
    priority: int | None = None
    idempotency_key: str | None = None
    queue: str | None = None
    timeout: float | None = None
    retries: int | None = None
    callback_url: str | None = None
    headers: Mapping[str, str] | None = None
    connection: Any = None
    """The caller's own database connection to enqueue in (its open transaction)."""
    depends_on: tuple[str, ...] = ()
    """Ids of the jobs that must succeed before this one is queued (the ``depends_on``
    header)."""


_NO_OPTIONS = Options()


class Call(msgspec.Struct, Generic[R], frozen=True):
    """A call of a task not yet enqueued: what ``enqueue_many`` takes."""

    task: Task[Any, R]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: Options = _NO_OPTIONS

    def __or__(self, other: Call[Any] | Chain) -> Chain:
        """A chain: this call, then ``other`` with this one's result as its first argument."""
        from dromos.chain import Chain

        return Chain([self, *(other.steps if isinstance(other, Chain) else [other])])


#: Priorities span this range on every broker (Redis packs them with the enqueue order).
MAX_PRIORITY = 4095


def _priority(value: int) -> int:
    if not -MAX_PRIORITY <= value <= MAX_PRIORITY:
        raise ConfigurationError(
            f"priority {value} is out of range: use -{MAX_PRIORITY} to {MAX_PRIORITY}"
        )
    return value


def _seconds(value: float | timedelta | None) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else value


def _dependency_ids(items: Iterable[Job[Any] | str]) -> tuple[str, ...]:
    """The ids of ``depends_on=`` (``Job`` handles or id strings), in order, each once."""
    if isinstance(items, str | Job):
        items = [items]  # one dependency given alone
    ids: dict[str, None] = {}
    for item in items:
        job_id = item.id if isinstance(item, Job) else item
        if not isinstance(job_id, str) or not job_id.strip() or "," in job_id:
            raise ConfigurationError(
                f"depends_on= takes dromos.Job handles or job ids, not {item!r}"
            )
        ids[job_id.strip()] = None
    return tuple(ids)


class Task(Generic[P, R]):
    """A function registered with an app; see the module docstring."""

    def __init__(
        self,
        app: App,
        func: Callable[P, Any],
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
    ) -> None:
        self.app = app
        self._events = events
        self.func = func
        self.name = name or func.__name__
        self.queue = queue
        if retries < 0:
            raise ConfigurationError(f"task {self.name!r}: retries must be 0 or more")
        self.retries = retries
        self.retry_on = retry_on
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.priority = _priority(priority)
        self.executor: Executor = executor
        self.is_async = inspect.iscoroutinefunction(func)
        if self.is_async and executor == "process":
            raise ConfigurationError(
                f"task {self.name!r}: executor='process' is for plain functions; "
                "an async function already runs without blocking the worker"
            )
        # Batch consumption: the function takes a list of items, each job carries one.
        self.batch_size = batch_size or 0
        self.batch_wait = _seconds(batch_wait) or 0.0
        if batch_size is not None and (batch_size < 1 or self.batch_wait < 0):
            raise ConfigurationError(
                f"task {self.name!r}: batch_size must be 1 or more and batch_wait 0 or more"
            )
        if batch_size is not None and rate_limit_key is not None:
            raise ConfigurationError(
                f"task {self.name!r}: rate_limit_key= is not supported on a batch task "
                "(its rate_limit= counts its jobs, whatever their keys)"
            )
        self.signature = Signature(self.name, one_item(self.name, func) if batch_size else func)
        # Starts allowed per period across every worker (per key value with rate_limit_key).
        self.rate_limit = None if rate_limit is None else parse_rate(rate_limit)
        if rate_limit_key is not None and self.rate_limit is None:
            raise ConfigurationError(f"task {self.name!r}: rate_limit_key= needs a rate_limit=")
        self.rate_key = (
            None if rate_limit_key is None else key_function(self.name, func, rate_limit_key)
        )
        self.__doc__ = func.__doc__
        self.__wrapped__ = func

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue}>"

    # -- enqueueing -----------------------------------------------------------------------
    def options(
        self,
        *,
        delay: float | timedelta | None = None,
        eta: datetime | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        queue: str | None = None,
        timeout: float | timedelta | None = None,
        retries: int | None = None,
        callback_url: str | None = None,
        headers: Mapping[str, str] | None = None,
        connection: Any = None,
        depends_on: Iterable[Job[Any] | str] | None = None,
    ) -> Bound[P, R]:
        """This task with per-job options, ready to ``enqueue``.

        ``connection``: your own open database connection (a psycopg ``AsyncConnection`` on
        the PostgreSQL broker, with ``aenqueue``): the job is inserted in its current
        transaction, so it exists, and runs, only if that transaction commits.

        ``depends_on``: jobs (``Job`` handles or ids, already enqueued) that must all succeed
        first: the job waits ``scheduled`` until the last one did, and ends ``failed`` (or
        ``cancelled``) without running if one of them does. See ``docs/workflows.md``.
        """
        if delay is not None and eta is not None:
            raise ConfigurationError("give either delay= or eta=, not both")
        deps = () if depends_on is None else _dependency_ids(depends_on)
        if deps and (delay is not None or eta is not None):
            raise ConfigurationError(
                "depends_on= cannot be combined with delay= or eta=: the job is queued when "
                "its dependencies succeeded"
            )
        if eta is not None and eta.tzinfo is None:
            raise ConfigurationError("eta= must be timezone-aware, e.g. datetime.now(UTC)")
        opts = Options(
            delay=_seconds(delay), eta=eta, idempotency_key=idempotency_key,
            priority=None if priority is None else _priority(priority),
            queue=queue, timeout=_seconds(timeout), retries=retries,
            callback_url=callback_url, headers=headers, connection=connection, depends_on=deps,
        )  # fmt: skip
        return Bound(self, opts)

    @property
    def events(self) -> bool:
        """Whether this task's jobs announce their changes on the bus (``dromos.job.*``):
        its own ``events=`` setting, else the app's ``job_events``."""
        return self.app.job_events if self._events is None else self._events

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Check the arguments and queue one job; returns at once with its handle."""
        return self.app.enqueue_many([Call(self, args, kwargs)])[0]

    async def aenqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """asyncio twin of :meth:`enqueue`."""
        return (await self.app.aenqueue_many([Call(self, args, kwargs)]))[0]

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call[R]:
        """A deferred call (checked when enqueued), for ``enqueue_many``."""
        return Call(self, args, kwargs)

    def step(self, *args: Any, **kwargs: Any) -> Call[R]:
        """A later step of a chain: its arguments *after* the previous step's result, which
        comes first (``fetch.call(url) | parse.step() | store.step("table")``)."""
        return Call(self, args, kwargs)

    def enqueue_many(self, calls: Iterable[Call[R] | tuple[Any, ...]]) -> list[Job[R]]:
        """Queue many jobs of this task in one round trip: all are checked, then all queued.

        Each item is a :meth:`call` or a tuple of positional arguments.
        """
        return self.app.enqueue_many([self._as_call(c) for c in calls])

    async def aenqueue_many(self, calls: Iterable[Call[R] | tuple[Any, ...]]) -> list[Job[R]]:
        """asyncio twin of :meth:`enqueue_many`."""
        return await self.app.aenqueue_many([self._as_call(c) for c in calls])

    def _as_call(self, item: Call[R] | tuple[Any, ...]) -> Call[R]:
        return item if isinstance(item, Call) else Call(self, tuple(item), {})

    def map(
        self,
        items: Iterable[Any],
        *,
        on_complete: Task[Any, Any] | Call[Any] | None = None,
        **options: Any,
    ) -> Batch[R]:
        """Queue one job per item as a batch, in one write (all or none); return its handle.

        Each item is a :meth:`call`, a tuple of positional arguments, or one positional
        argument. ``options`` are :meth:`options`' (``queue=``, ``priority=`` ...), for the
        items that are not calls. ``on_complete`` (a task, or a call of one) is queued once,
        when every job ended; it gets the summary ``{"batch_id", "total", "succeeded",
        "failed", "cancelled"}`` as its first argument. See ``dromos.batch``.
        """
        return self.app.batch(self._map_calls(items, options), on_complete=on_complete)

    async def amap(
        self,
        items: Iterable[Any],
        *,
        on_complete: Task[Any, Any] | Call[Any] | None = None,
        **options: Any,
    ) -> Batch[R]:
        """asyncio twin of :meth:`map`."""
        return await self.app.abatch(self._map_calls(items, options), on_complete=on_complete)

    def _map_calls(self, items: Iterable[Any], options: dict[str, Any]) -> list[Call[R]]:
        opts = self.options(**options).opts if options else _NO_OPTIONS
        calls: list[Call[R]] = []
        for item in items:
            if isinstance(item, Call):
                calls.append(item)
            else:
                args = item if isinstance(item, tuple) else (item,)
                calls.append(Call(self, args, {}, opts))
        return calls

    # -- what the app and the worker use ----------------------------------------------------
    def request(
        self,
        call: Call[R],
        window: float,
        job_id: str | None = None,
        now: datetime | None = None,
        batch_id: str | None = None,
    ) -> EnqueueRequest:
        """Check one call and build its envelope (raises ``ValidationError``).

        An ``enqueue_many`` passes its ``job_id`` (from one ``new_job_ids``) and one ``now``
        for all; a batch (``map``) also its ``batch_id``, which goes in the headers.
        """
        args, kwargs = self.signature.dump(call.args, call.kwargs)
        o = call.options
        now = now or utcnow()
        if o is _NO_OPTIONS:  # the common case: every field from the task
            message = Message(
                id=job_id or new_job_id(), task=self.name, queue=self.queue, args=args,
                kwargs=kwargs, max_attempts=self.retries + 1, priority=self.priority,
                created_at=now, headers={} if batch_id is None else {"batch_id": batch_id},
            )  # fmt: skip
            return EnqueueRequest(message, self._encoded(message), window)
        headers = dict(o.headers or {})
        if batch_id is not None:
            headers["batch_id"] = batch_id
        if o.idempotency_key is not None:
            headers["idempotency_key"] = o.idempotency_key
        if o.callback_url is not None:
            refused = check_url(o.callback_url, self.app.webhooks.hosts)
            if refused is not None:
                problem = {"loc": ("callback_url",), "msg": refused, "type": "callback_url"}
                raise ValidationError(self.name, [problem])
            headers["callback_url"] = o.callback_url
        if o.depends_on:
            headers[DEPENDS_ON_HEADER] = ",".join(o.depends_on)
        eta = o.eta.astimezone(UTC) if o.eta else None
        if o.delay:
            eta = now + timedelta(seconds=o.delay)
        retries = self.retries if o.retries is None else o.retries
        message = Message(
            id=job_id or new_job_id(), task=self.name, queue=o.queue or self.queue, args=args,
            kwargs=kwargs, max_attempts=retries + 1, eta=eta,
            priority=self.priority if o.priority is None else o.priority,
            timeout=o.timeout, created_at=now, headers=headers,
        )  # fmt: skip
        return EnqueueRequest(message, self._encoded(message), window, o.delay or None)

    def _encoded(self, message: Message) -> bytes:
        """The envelope's JSON; text that JSON cannot carry is the caller's error, refused
        like any other bad argument (422 at the gateway), not a crash of the enqueue."""
        try:
            return encode(message)
        except UnicodeEncodeError as exc:  # a lone surrogate: os.fsdecode of a non-UTF-8 name
            problem = {
                "loc": (),
                "msg": f"text that is not valid UTF-8 cannot be queued ({exc.reason}: "
                f"{exc.object[exc.start : exc.end]!r})",
                "type": "string_unicode",
            }
            raise ValidationError(self.name, [problem]) from None

    def rate_key_of(self, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
        """The broker's name for the window a job of this task starts in."""
        if self.rate_key is None:
            return f"{self.app.name}:{self.name}"
        return f"{self.app.name}:{self.name}:{self.rate_key(args, kwargs)}"

    def retry_delay(self, failures: int) -> float:
        """Backoff before the next attempt after ``failures`` failed ones: exponential, jittered.

        ``backoff * 2**(failures-1)`` capped at ``max_backoff``, then scaled by a random factor
        in [0.5, 1] so that jobs failing together do not retry together.
        """
        # The exponent is bounded: 2.0 ** 1024 overflows (a task with thousands of retries).
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** min(max(0, failures - 1), 1000))
        return ceiling * random.uniform(0.5, 1.0)

    def handle(self, job_id: str) -> Job[R]:
        """A typed handle on a job of this task."""
        return Job(self.app, job_id, self.signature.load_result)


class AsyncTask(Task[P, R]):
    """A task whose function is ``async def``; calling it returns the coroutine."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        """Run the function inline (no queue); ``current_job()`` works and reports nowhere."""
        ctx = JobContext("inline", self.name)

        async def _inline() -> R:
            return await run_as(ctx, self.func, *args, **kwargs)  # type: ignore[no-any-return]

        return _inline()


class SyncTask(Task[P, R]):
    """A task whose function is a plain ``def``."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function inline (no queue); ``current_job()`` works and reports nowhere."""
        return run_as(JobContext("inline", self.name), self.func, *args, **kwargs)  # type: ignore[no-any-return]


class BatchTask(Task[[T], R]):
    """A task of ``batch_size=``: its function takes a list of items and returns a list of
    results; a job carries one item (``insert.enqueue(row)``) and has its own status and
    result. The worker gathers up to ``batch_size`` jobs (waiting at most ``batch_wait``
    seconds after the first) and calls the function once for all of them."""

    def __call__(self, items: list[T]) -> Any:
        """Run the function inline on ``items`` (no queue): its list of results, or the
        coroutine of an ``async def``."""
        ctx = JobContext("inline", self.name)
        func: Callable[..., Any] = self.func  # typed by the jobs' one item, takes the list
        if not self.is_async:
            return run_as(ctx, func, items)

        async def inline() -> Any:
            token = set_current(ctx)
            try:
                return await func(items)
            finally:
                reset_current(token)

        return inline()


class Bound(Generic[P, R]):
    """A task with per-job options (from ``task.options(...)``)."""

    __slots__ = ("opts", "task")

    def __init__(self, task: Task[P, R], opts: Options) -> None:
        self.task = task
        self.opts = opts

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Queue one job with these options."""
        return self.task.app.enqueue_many([Call(self.task, args, kwargs, self.opts)])[0]

    def step(self, *args: Any, **kwargs: Any) -> Call[R]:
        """A later step of a chain with these options (see :meth:`Task.step`)."""
        return Call(self.task, args, kwargs, self.opts)

    async def aenqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """asyncio twin of :meth:`enqueue`."""
        calls = [Call(self.task, args, kwargs, self.opts)]
        return (await self.task.app.aenqueue_many(calls))[0]

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call[R]:
        """A deferred call with these options, for ``enqueue_many``."""
        return Call(self.task, args, kwargs, self.opts)
