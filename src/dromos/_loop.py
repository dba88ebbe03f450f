"""The event loop dromos starts for itself (the worker, the blocking API's portal).

uvloop when it is installed (``pip install 'dromos[fast]'``): its loop, written in C on
libuv, spends less per callback and per socket read than asyncio's, which is most of what a
worker does per job. ``DROMOS_UVLOOP=0`` keeps asyncio's own loop. A loop the user runs
(``asyncio.run`` in their service) is theirs: dromos never replaces it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

__all__ = ["loop_factory", "new_loop"]


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
