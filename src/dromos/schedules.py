"""Periodic tasks: a cron expression or a fixed interval, fired by one worker at a time.

``@app.periodic(cron="*/5 * * * *")`` or ``@app.periodic(every=timedelta(minutes=5))``
registers a task and its schedule. Every worker runs a :class:`Scheduler`; only the one
holding the broker's named lease ``dromos:scheduler:<app>`` fires, and another takes over
within :data:`LEASE_TTL` seconds when that worker dies.

Exactly once per tick, without a central clock: a tick is enqueued with the idempotency key
``dromos:periodic:<task>:<tick time>``, so two schedulers that both believe they hold the
lease (a worker paused past its lease) still queue one job per tick. A scheduler that takes
the lease over looks back ``misfire_grace`` seconds and enqueues the ticks it finds there
(those already queued are not queued again): ticks missed while no scheduler ran are run late
if they are at most that old (``catch_up=False``: only the latest of them), older ones are
skipped. The default grace, 10 s, covers a takeover (the lease runs out within 5 s); a longer
one also replays, on a fresh start, the ticks of that long ago (nothing records that no
scheduler ran then). Intervals are aligned to the Unix epoch (``every=60`` fires at :00 of
each minute on every machine); cron expressions are read in ``timezone`` (DST handled by
``cronsim``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dromos.errors import ConfigurationError

if TYPE_CHECKING:
    from dromos.app import App
    from dromos.brokers.base import Broker
    from dromos.task import Call, Task

__all__ = ["LEASE_TTL", "Periodic", "Scheduler"]

log = logging.getLogger("dromos.schedules")

LEASE_TTL = 5.0  # seconds the scheduler's lease lasts without renewal
_RENEW = 1.0  # seconds between two renewals (and looks at the clock) at most
_MAX_TICKS = 10_000  # ticks one pass enqueues at most (a huge misfire_grace on every=1)


@dataclass(frozen=True)
class Periodic:
    """One task's schedule."""

    task: Task[Any, Any]
    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    misfire_grace: float = 10.0
    catch_up: bool = True

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ConfigurationError("a periodic task needs either cron= or every=, not both")
        if self.every is not None and self.every <= 0:
            raise ConfigurationError("every= must be a positive interval")
        if self.misfire_grace < 0:
            raise ConfigurationError("misfire_grace must be 0 or more seconds")
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # a worker without cron needs none

        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigurationError(f"unknown timezone {self.timezone!r}") from exc
        if self.cron is not None:
            from cronsim import CronSim, CronSimError

            try:
                next(CronSim(self.cron, datetime.now(zone)))
            except (CronSimError, StopIteration) as exc:
                raise ConfigurationError(f"bad cron expression {self.cron!r}: {exc}") from exc
        window = self.task.app.idempotency_window
        if self.misfire_grace + LEASE_TTL > window:
            raise ConfigurationError(
                f"misfire_grace ({self.misfire_grace:g}s) must stay within the app's "
                f"idempotency_window ({window:g}s): it is what keeps a tick from running twice"
            )

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def schedule(self) -> str:
        """The schedule in words, for listings."""
        if self.cron is not None:
            return f"cron {self.cron} ({self.timezone})"
        return f"every {timedelta(seconds=self.every or 0)}"

    def ticks(self, after: float, until: float) -> Iterator[datetime]:
        """The fire times in ``(after, until]`` (Unix seconds), as aware datetimes, in order."""
        if self.every is not None:
            k = math.floor(after / self.every) + 1
            while k * self.every <= until:
                yield datetime.fromtimestamp(k * self.every, UTC)
                k += 1
            return
        from zoneinfo import ZoneInfo

        from cronsim import CronSim

        assert self.cron is not None
        zone = ZoneInfo(self.timezone)
        for moment in CronSim(self.cron, datetime.fromtimestamp(after, zone)):
            if moment.timestamp() > until:
                return
            yield moment

    def next_runs(self, count: int, now: float | None = None) -> list[datetime]:
        """The next ``count`` fire times after ``now``."""
        start = time.time() if now is None else now
        out: list[datetime] = []
        for tick in self.ticks(start, math.inf):
            out.append(tick)
            if len(out) == count:
                break
        return out

    def call(self, tick: datetime) -> Call[Any]:
        """The job of one tick: its idempotency key makes it one job per tick, whoever fires."""
        from dromos.task import Call

        stamp = tick.astimezone(UTC).isoformat()
        bound = self.task.options(
            idempotency_key=f"dromos:periodic:{self.name}:{stamp}",
            headers={"periodic": self.name, "scheduled_for": stamp},
        )
        return Call(self.task, tuple(self.args), dict(self.kwargs), bound.opts)


class Scheduler:
    """Fires an app's periodic tasks while it holds the app's scheduler lease."""

    def __init__(self, app: App, broker: Broker, holder: str) -> None:
        self.app = app
        self.broker = broker
        self.holder = holder
        self.lease = f"dromos:scheduler:{app.name}"
        self.held = False
        self.fired = 0
        self._horizon: dict[str, float] = {}  # periodic -> the tick time enqueued up to
        self._fresh: set[str] = set()  # periodics not fired since this holder took over

    async def run(self, stopping: asyncio.Event) -> None:
        """Until ``stopping`` is set; the lease is dropped on the way out."""
        try:
            while not stopping.is_set():
                await self._step()
                wait = self._until_next(time.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), wait)
        finally:
            if self.held:
                try:
                    await self.broker.drop_lease(self.lease, self.holder)
                except Exception as exc:  # it runs out on its own
                    log.warning("dropping the scheduler lease failed: %s", exc)

    async def _step(self) -> None:
        try:
            last = await self.broker.hold_lease(self.lease, self.holder, LEASE_TTL)
        except Exception as exc:
            log.warning("the scheduler lease could not be renewed (%s)", exc)
            last = None
        now = time.time()
        if last is not None and not self.held:
            log.info("this worker now fires the periodic tasks of %s", self.app.name)
            self.take_over(now, last)
        self.held = last is not None
        if self.held:
            await self.fire(now)

    def take_over(self, now: float, last: float) -> None:
        """Where this holder starts: the ticks since the lease was last held (0: never, so
        none), at most ``misfire_grace`` back; the previous holder's last second again, as
        it may have died before firing it (a tick it did fire is found by its key)."""
        self._horizon = {
            p.name: now if last == 0 else max(now - p.misfire_grace, min(now, last - _RENEW))
            for p in self.app.periodics
        }
        self._fresh = {p.name for p in self.app.periodics}

    async def fire(self, now: float) -> int:
        """Enqueue every tick due by ``now`` not enqueued by this scheduler yet (one already
        queued by another is found by its idempotency key); return how many ticks."""
        calls = []
        for p in self.app.periodics:
            since = self._horizon.get(p.name, now - p.misfire_grace)
            due = list(_first(p.ticks(since, now), _MAX_TICKS))
            if due and not p.catch_up and p.name in self._fresh:
                due = due[-1:]  # missed ticks coalesce into one run
            calls += [p.call(tick) for tick in due]
            self._horizon[p.name] = now
        self._fresh = set()
        if not calls:
            return 0
        try:
            await self.app.aenqueue_many(calls)
        except Exception as exc:
            log.warning("enqueueing %d periodic job(s) failed (%s); will retry", len(calls), exc)
            for p in self.app.periodics:  # look back again next time: keys drop duplicates
                self._horizon[p.name] = now - p.misfire_grace
            return 0
        self.fired += len(calls)
        return len(calls)

    def _until_next(self, now: float) -> float:
        """Seconds to sleep: to the next tick, at most until the lease needs renewing."""
        soonest = _RENEW
        if self.held:
            for p in self.app.periodics:
                for tick in p.ticks(now, now + _RENEW):
                    soonest = min(soonest, max(0.0, tick.timestamp() - now))
                    break
        return soonest


def _first(items: Iterator[datetime], n: int) -> Iterator[datetime]:
    for k, item in enumerate(items):
        if k >= n:
            return
        yield item


def describe(periodics: Sequence[Periodic], runs: int = 3) -> list[tuple[str, str, list[datetime]]]:
    """(task, schedule, next runs) of each periodic task, for ``dromos schedules``."""
    now = time.time()
    return [(p.name, p.schedule, p.next_runs(runs, now)) for p in periodics]
