"""Wake coroutines that wait in any event loop, from any thread.

Brokers are shared between the app's blocking portal (its own thread and loop) and the
user's loop, so an in-process wake-up must cross loops: each waiter is a future of its own
loop, resolved with ``call_soon_threadsafe`` (or at once, when notified from that loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Hashable, Iterable
from typing import Any

__all__ = ["Listener", "Notifier"]

_ANY = object()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Notifier:
    """Waiters keyed by a topic (a queue, a job id); ``notify`` wakes every waiter of a key.

    Check-then-wait must not lose a wake-up that lands between the check and the wait, so
    callers that check something first hold a listener (:meth:`listen`) across the check::

        with notifier.listen([job_id]) as listener:
            while not done():                 # a notify from here on is kept
                await listener.wait(timeout)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[Hashable, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]]
        self._waiters = {}

    def listen(self, keys: Iterable[Hashable]) -> Listener:
        """Start listening now; use as a context manager so it stops listening at the end."""
        return Listener(self, list(keys) or [_ANY])

    async def wait(self, keys: Iterable[Hashable], timeout: float | None) -> bool:
        """Wait until one of ``keys`` is notified from now on; False on timeout."""
        with self.listen(keys) as listener:
            return await listener.wait(timeout)

    def _add(self, keys: list[Hashable], entry: tuple[asyncio.AbstractEventLoop, Any]) -> None:
        with self._lock:
            for key in keys:
                self._waiters.setdefault(key, []).append(entry)

    def _remove(self, keys: list[Hashable], fut: asyncio.Future[None]) -> None:
        with self._lock:
            for key in keys:
                entries = self._waiters.get(key)
                if entries is None:
                    continue
                entries[:] = [e for e in entries if e[1] is not fut]
                if not entries:
                    del self._waiters[key]

    def has(self, key: Hashable) -> bool:
        """True if somebody listens for ``key`` now (a hint: they may stop at any moment)."""
        return key in self._waiters

    def notify(self, keys: Iterable[Hashable]) -> None:
        """Wake the waiters of each key (and those waiting on no key in particular)."""
        with self._lock:
            if not self._waiters:
                return
            woken: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
            for key in (*keys, _ANY):
                woken.extend(self._waiters.pop(key, ()))
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for loop, fut in woken:
            if loop is here:  # this thread's loop: no hand-over (a wake-up of its selector)
                _wake(fut)
                continue
            # A closed loop raises RuntimeError: nobody is waiting there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_wake, fut)


class Listener:
    """A registration that keeps every notification from its creation until it is closed."""

    def __init__(self, notifier: Notifier, keys: list[Hashable]) -> None:
        self._notifier = notifier
        self._keys = keys
        self._loop = asyncio.get_running_loop()
        self._fut: asyncio.Future[None] = self._loop.create_future()
        notifier._add(keys, (self._loop, self._fut))

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self._notifier._remove(self._keys, self._fut)

    async def wait(self, timeout: float | None) -> bool:
        """True as soon as a notification came since the last wait (or the start)."""
        if not self._fut.done():
            await asyncio.wait({self._fut}, timeout=timeout)  # does not cancel the future
        if not self._fut.done():
            return False
        # Consumed: listen again on a fresh future (notify unregistered the old one).
        self._notifier._remove(self._keys, self._fut)
        self._fut = self._loop.create_future()
        self._notifier._add(self._keys, (self._loop, self._fut))
        return True
