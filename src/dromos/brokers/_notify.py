"""Wake coroutines that wait in any event loop, from any thread.

Brokers are shared between the app's blocking portal (its own thread and loop) and the
user's loop, so an in-process wake-up must cross loops: each waiter is a future of its own
loop, resolved with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Hashable, Iterable

__all__ = ["Notifier"]

_ANY = object()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Notifier:
    """Waiters keyed by a topic (a queue, a job id); ``notify`` wakes every waiter of a key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[Hashable, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]]
        self._waiters = {}

    async def wait(self, keys: Iterable[Hashable], timeout: float | None) -> bool:
        """Wait until one of ``keys`` is notified; False on timeout."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        keys = list(keys) or [_ANY]
        with self._lock:
            for key in keys:
                self._waiters.setdefault(key, []).append((loop, fut))
        try:
            async with asyncio.timeout(timeout):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                for key in keys:
                    entries = self._waiters.get(key)
                    if entries is None:
                        continue
                    entries[:] = [e for e in entries if e[1] is not fut]
                    if not entries:
                        del self._waiters[key]

    def notify(self, keys: Iterable[Hashable]) -> None:
        """Wake the waiters of each key (and those waiting on no key in particular)."""
        with self._lock:
            if not self._waiters:
                return
            woken: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
            for key in (*keys, _ANY):
                woken.extend(self._waiters.pop(key, ()))
        for loop, fut in woken:
            # A closed loop raises RuntimeError: nobody is waiting there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_wake, fut)
