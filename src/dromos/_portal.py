"""The blocking portal: how the synchronous API calls the async core.

One event loop in a daemon thread per app. ``enqueue()`` and ``result()`` from plain code
(a Django view, a script, a plain task in a worker thread) hand their coroutine to it and wait
for the answer, so one async implementation serves both worlds.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from dromos._loop import new_loop

__all__ = ["Portal", "in_portal"]

P = ParamSpec("P")
T = TypeVar("T")


_local = threading.local()


def in_portal() -> bool:
    """True on a portal's own thread, where every caller is blocked waiting anyway.

    A broker may then do blocking I/O right there instead of handing it to another thread:
    the handoff would cost more than the I/O, and nothing else runs on that loop meanwhile
    that cannot wait.
    """
    return getattr(_local, "portal", False)


class Portal:
    """An event loop running in its own thread, started on first use."""

    def __init__(self, name: str = "dromos-portal") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = new_loop()
                ready = threading.Event()

                def _serve() -> None:
                    _local.portal = True
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=_serve, name=self._name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def call(
        self, fn: Callable[P, Coroutine[Any, Any, T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn(*args)`` on the portal's loop and block until it returns."""
        loop = self._start()
        if threading.current_thread() is self._thread:
            raise RuntimeError("a blocking dromos call was made from the portal's own loop")
        return asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), loop).result()

    def stop(self) -> None:
        """Stop the loop and its thread (the app can start a new one later)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            loop.close()
