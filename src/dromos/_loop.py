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
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

__all__ = ["cancel_and_wait", "close_per_loop", "loop_factory", "new_loop", "tune_gc"]

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
