"""The event loop dromos starts for itself (the worker, the blocking API's portal).

uvloop when it is installed (``pip install 'dromos[fast]'``): its loop, written in C on
libuv, spends less per callback and per socket read than asyncio's, which is most of what a
worker does per job. ``DROMOS_UVLOOP=0`` keeps asyncio's own loop. A loop the user runs
(``asyncio.run`` in their service) is theirs: dromos never replaces it.

The garbage collector of a process dromos owns (``dromos worker``): see :func:`tune_gc`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

__all__ = [
    "TimeLimit",
    "cancel_and_wait",
    "close_per_loop",
    "finish",
    "first_of",
    "loop_factory",
    "new_loop",
    "tune_gc",
]

S = TypeVar("S")
log = logging.getLogger("dromos")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's ``new_event_loop`` if installed and not turned off, else asyncio's."""
    if os.environ.get("DROMOS_UVLOOP", "1") != "0":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


# Young collections every this many new container objects (Python's default: 700). A worker
# makes a few dozen per job or event (tasks, futures, dicts), nearly all freed by reference
# counting; at 700 it ran a young collection every 10-20 jobs, and an older one every 10 of
# those, each also walking what survived the last.
GC_YOUNG = 5000


def tune_gc() -> None:
    """Set the collector for a long-running worker process, once it has started up: what is
    alive now (modules, the app, the broker's client: nearly all of it for the process's
    life) is moved out of the collector's sight (``gc.freeze``: no later collection walks it
    again), and young collections run every ``GC_YOUNG`` new objects instead of 700. In the
    event benchmark this took 6-15% off the worker's CPU per event. ``DROMOS_GC=0`` keeps
    Python's settings. Cycles are still collected, only a little later; objects made before
    the freeze that become garbage in a cycle are not (reference counting still frees the
    rest)."""
    if os.environ.get("DROMOS_GC", "1") == "0":
        return
    gc.collect()  # what is garbage already is not frozen
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, older, oldest)


def new_loop() -> asyncio.AbstractEventLoop:
    """A new event loop from :func:`loop_factory`."""
    return loop_factory()()


async def close_per_loop(
    states: dict[asyncio.AbstractEventLoop, S],
    close: Callable[[S], Coroutine[Any, Any, None]],
    abandon: Callable[[S], None] | None = None,
) -> None:
    """Close the per-loop state of a client used from several loops, each on its own loop
    (connections belong to the loop that made them): this loop's at once, a running loop's
    through it (up to 5 s), and ``abandon`` (when given) for one that failed or whose loop is
    gone, which must let go of its sockets without that loop."""
    current = asyncio.get_running_loop()
    for loop, state in states.items():
        if loop is current:
            await close(state)
        elif loop.is_running():
            done = asyncio.run_coroutine_threadsafe(close(state), loop)
            try:
                await asyncio.wait_for(asyncio.wrap_future(done), 5.0)
            except Exception:
                if abandon is not None:
                    abandon(state)
        elif abandon is not None:
            abandon(state)


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has ended; their errors are logged (debug).

    Cancelled again every 0.1 s while one runs on: on Python 3.11, ``asyncio.wait_for`` drops
    a cancellation that lands just as what it waits for finishes (CPython gh-86296, fixed in
    3.12), and redis-py wraps each socket write in it: in a probe, 7 of 10 cancellations of a
    task looping on Redis commands were swallowed so. A task cancelled once and not awaited
    then ran on past its owner's end: a worker's idle wait opened a new RabbitMQ connection
    after the app was closed, left open when its event loop ended.
    """
    given = list(tasks)
    pending = [t for t in given if not t.done()]
    while pending:
        for task in pending:
            task.cancel()
        _, still = await asyncio.wait(pending, timeout=0.1)
        pending = list(still)
    for task in given:
        if not task.cancelled() and task.exception() is not None:
            log.debug("%r ended with %r", task, task.exception())


async def first_of(*awaitables: Awaitable[Any]) -> asyncio.Future[Any]:
    """Wait until the first of ``awaitables`` ends, cancel the others and wait until they
    ended too (:func:`cancel_and_wait`: a broker's wait must not run on past its caller);
    return the first, whose error is the caller's to raise or to ignore."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(tasks)
    return next(t for t in tasks if t in done)


async def finish(aw: Coroutine[Any, Any, None], limit: float = 5.0) -> None:
    """Await a clean-up to its end even when cancelled meanwhile (for up to ``limit``
    seconds), then raise the cancellation.

    For a ``finally`` in a task that :func:`cancel_and_wait` ends: it cancels again every
    0.1 s, which would cut a slow close short (an HTTP client's connections left open on a
    loaded machine, their sockets reported unclosed at garbage collection).
    """
    task = asyncio.ensure_future(aw)
    loop = asyncio.get_running_loop()
    cancelled_at: float | None = None
    while True:
        try:
            await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():  # the clean-up itself was cancelled
                raise
            now = loop.time()
            cancelled_at = now if cancelled_at is None else cancelled_at
            if now - cancelled_at >= limit:
                task.cancel()
                raise
    if cancelled_at is not None:
        raise asyncio.CancelledError


class TimeLimit:
    """``async with TimeLimit(seconds) as limit:`` -- :func:`asyncio.timeout` that holds when
    the code inside swallows the cancellation.

    ``asyncio.timeout`` cancels its task once. Code that catches that cancellation and goes on
    (redis-py does, by accident, on Python 3.11: see :func:`cancel_and_wait`) then runs past
    the limit, and ends as if none was set: a task looping on Redis commands outlived its time
    limit and succeeded. Here the task is cancelled again every second (a ``finally`` gets
    that long to clean up) until the block ends, and a block that ends after the limit raises
    :class:`TimeoutError`, also when it returned normally. ``limit.expired`` tells the limit's
    ``TimeoutError`` from one the code raised itself. A cancellation from outside wins.
    """

    AGAIN = 1.0  # seconds between cancellations once the limit has passed

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._cancels = 0
        self._cancelling = 0

    async def __aenter__(self) -> TimeLimit:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("TimeLimit must be used inside a task")
        self._task, self._cancelling = task, task.cancelling()
        self._timer = asyncio.get_running_loop().call_later(self.seconds, self._fire)
        return self

    def _fire(self) -> None:
        assert self._task is not None
        self.expired = True
        self._cancels += 1
        self._task.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.AGAIN, self._fire)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.expired:
            return
        assert self._task is not None
        for _ in range(self._cancels):
            self._task.uncancel()
        if self._task.cancelling() > self._cancelling:
            return  # cancelled from outside too: that cancellation goes on
        if exc_type is None or issubclass(exc_type, asyncio.CancelledError):
            raise TimeoutError(f"time limit of {self.seconds:g}s passed") from exc
