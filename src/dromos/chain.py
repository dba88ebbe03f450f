"""Chains: jobs run one after another, each given the result of the one before.

``(fetch.call(url) | transform.step() | load.step()).enqueue()`` (or
``app.chain(fetch.call(url), transform.step(), load.step())``) queues the first step and
writes the others into its ``chain`` header; every step's job id is chosen up front, so the
:class:`ChainHandle` knows them all at once. When a step succeeds, the worker queues the next
one, the result first among its arguments, *before* it reports the step's end: a worker that
dies in between runs the step again and queues the next one again, and the next step's
idempotency key (``dromos:chain:<its id>``) keeps that to one job. A step that fails for good
(or is cancelled) stops the chain: the later steps are never queued, and the handle says
which step it was. The chain's state lives in the broker (the jobs and their headers), so it
survives worker restarts.

Steps after the first are checked when they are queued, not before (their first argument is
a result not known yet): one whose arguments do not fit its task is dead-lettered with the
reason, which stops the chain there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from dromos.context import refuse_blocking_wait
from dromos.errors import ConfigurationError, JobFailed, ResultTimeout
from dromos.message import Message, encode, new_job_ids, utcnow

if TYPE_CHECKING:
    from dromos.app import App
    from dromos.brokers.base import EnqueueRequest
    from dromos.job import Job, JobStatus
    from dromos.task import Call

__all__ = ["CHAIN_HEADER", "Chain", "ChainHandle", "ChainStatus", "next_step"]

CHAIN_HEADER = "chain"  # the steps after this one, as JSON: [{"id", "task", "args", ...}]
CHAIN_ID_HEADER = "chain_id"  # the first step's id: every step carries it


class _Step(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    task: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    queue: str | None = None
    priority: int | None = None
    timeout: float | None = None
    retries: int | None = None


_steps = msgspec.json.Decoder(list[_Step])


class Chain:
    """Steps not queued yet; ``|`` adds one, ``enqueue`` / ``aenqueue`` starts it."""

    def __init__(self, steps: list[Call[Any]]) -> None:
        if len(steps) < 2:
            raise ConfigurationError("a chain has two steps or more")
        apps = {id(s.task.app) for s in steps}
        if len(apps) > 1:
            raise ConfigurationError("the steps of a chain belong to one app")
        for s in steps[1:]:
            o = s.options
            if any((o.delay, o.eta, o.idempotency_key, o.callback_url, o.connection,
                    o.depends_on)):  # fmt: skip
                raise ConfigurationError(
                    f"step {s.task.name!r}: only queue, priority, timeout and retries can be "
                    "set on a step after the first"
                )
        self.steps = steps

    def __or__(self, other: Call[Any] | Chain) -> Chain:
        return Chain([*self.steps, *(other.steps if isinstance(other, Chain) else [other])])

    def then(self, step: Call[Any]) -> Chain:
        """This chain and one more step (``|`` reads the same)."""
        return self | step

    def _first(self, ids: list[str]) -> Call[Any]:
        """The first step, carrying the others in its headers."""
        from dromos.task import Call

        first = self.steps[0]
        rest = [
            _Step(
                id=i,
                task=s.task.name,
                args=list(s.args),
                kwargs=dict(s.kwargs),
                queue=s.options.queue,
                priority=s.options.priority,
                timeout=s.options.timeout,
                retries=s.options.retries,
            )
            for i, s in zip(ids[1:], self.steps[1:], strict=True)
        ]
        try:
            header = msgspec.json.encode(rest).decode()
        except (TypeError, msgspec.EncodeError) as exc:
            raise ConfigurationError(
                f"a step's arguments cannot be carried as JSON: {exc}"
            ) from exc
        headers = {**(first.options.headers or {}), CHAIN_HEADER: header, CHAIN_ID_HEADER: ids[0]}
        options = msgspec.structs.replace(first.options, headers=headers)
        return Call(first.task, first.args, first.kwargs, options)

    async def aenqueue(self) -> ChainHandle:
        """Queue the first step; return the handle of every step."""
        app = self.steps[0].task.app
        ids = new_job_ids(len(self.steps))
        first = self._first(ids)
        request = first.task.request(first, app.idempotency_window, ids[0])  # checked here
        await (await app.abroker()).enqueue([request])
        return ChainHandle(app, [s.task.handle(i) for s, i in zip(self.steps, ids, strict=True)])

    def enqueue(self) -> ChainHandle:
        """Blocking twin of :meth:`aenqueue`."""
        app = self.steps[0].task.app
        return app.portal.call(self.aenqueue)


@dataclass(frozen=True)
class ChainStatus:
    """Where a chain is: each step's status (None: not queued yet), and how it stands."""

    steps: list[JobStatus | None]

    @property
    def failed_step(self) -> int | None:
        """The index of the step that stopped the chain (failed or cancelled), if one did."""
        for k, s in enumerate(self.steps):
            if s is not None and s.state.terminal and s.state.value != "succeeded":
                return k
        return None

    @property
    def done(self) -> bool:
        """Every step succeeded."""
        last = self.steps[-1]
        return last is not None and last.state.value == "succeeded"


class ChainHandle:
    """The jobs of a chain, in order (their ids were chosen when it was queued)."""

    def __init__(self, app: App, jobs: list[Job[Any]]) -> None:
        self._app = app
        self.jobs = jobs

    @property
    def id(self) -> str:
        """The chain's id: its first step's job id."""
        return self.jobs[0].id

    async def astatus(self) -> ChainStatus:
        broker = await self._app.abroker()
        return ChainStatus([await broker.status(j.id) for j in self.jobs])

    def status(self) -> ChainStatus:
        return self._app.portal.call(self.astatus)

    async def aresult(self, timeout: float | None = None) -> Any:
        """The last step's result; raise the :class:`JobFailed` of the step that stopped it
        (its ``status.task`` and ``status.id`` say which), or :class:`ResultTimeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        result: Any = None
        for job in self.jobs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                result = await job.aresult(left)
            except JobFailed:
                raise
            except ResultTimeout:
                raise ResultTimeout(self.id, timeout or 0.0) from None
        return result

    def result(self, timeout: float | None = None) -> Any:
        refuse_blocking_wait("chain.result()", "await chain.aresult()")
        return self._app.portal.call(self.aresult, timeout)


def next_step(app: App, message: Message, result: bytes) -> EnqueueRequest | None:
    """The request of the step after ``message`` (whose result is ``result``), or None.

    Built as it travels, not through the task's signature: a step whose arguments do not fit
    is dead-lettered by the worker that picks it up, which stops the chain there and says so.
    """
    from dromos.brokers.base import EnqueueRequest

    header = message.headers.get(CHAIN_HEADER)
    if not header:
        return None
    step, *rest = _steps.decode(header)
    task = app.tasks.get(step.task)
    headers = {CHAIN_ID_HEADER: message.headers.get(CHAIN_ID_HEADER, message.id),
               "idempotency_key": f"dromos:chain:{step.id}"}  # fmt: skip
    if rest:
        headers[CHAIN_HEADER] = msgspec.json.encode(rest).decode()
    retries = step.retries if step.retries is not None else (task.retries if task else 0)
    next_message = Message(
        id=step.id, task=step.task,
        queue=step.queue or (task.queue if task else message.queue),
        args=[msgspec.json.decode(result), *step.args], kwargs=step.kwargs,
        max_attempts=retries + 1,
        priority=step.priority if step.priority is not None else (task.priority if task else 0),
        timeout=step.timeout, created_at=utcnow(), headers=headers,
    )  # fmt: skip
    return EnqueueRequest(next_message, encode(next_message), app.idempotency_window)
