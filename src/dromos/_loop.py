"""The event loop dromos starts for itself (the worker, the blocking API's portal).

uvloop when it is installed (``pip install 'dromos[fast]'``): its loop, written in C on
libuv, spends less per callback and per socket read than asyncio's, which is most of what a
worker does per job. ``DROMOS_UVLOOP=0`` keeps asyncio's own loop. A loop the user runs
(``asyncio.run`` in their service) is theirs: dromos never replaces it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["close_per_loop", "loop_factory", "new_loop"]

S = TypeVar("S")


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
