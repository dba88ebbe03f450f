"""Waiting for jobs on SQLite: one watcher per event loop tells every waiter of its end.

A settle in this process wakes its waiters at once (the broker's ``Notifier``). A commit by
another process shows only in ``PRAGMA data_version``, which each waiter used to poll on its
own, reading its job's status again after every commit anywhere. With many waiters (a
gateway holding thousands of ``Prefer: wait`` requests) that was a status read per waiter per
commit, each through the broker's one I/O thread: 2,000 callers enqueueing and waiting at
once took 10 s on this machine, 11.6 reads per job, against 0.3 s in memory.

Here one task per event loop polls the data version for all of the loop's waiters (1 ms after
a change, doubling up to 25 ms) and, after each change, reads which of their jobs ended in one
query, then wakes those waiters through the same ``Notifier``. A waiter reads its full status
only when it starts and when woken.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator

__all__ = ["EAGER", "FIRST_POLL", "IDLE_POLL", "EndWatch"]

log = logging.getLogger("dromos.sqlite")

# How often a waiter (this watcher, and an idle worker in sqlite.py) reads the data version:
FIRST_POLL = 0.001  # seconds between looks while a wait is young or after a change
IDLE_POLL = 0.025  # the longest between looks, once nothing changed for a while
EAGER = 0.05  # seconds the looks stay FIRST_POLL after a wait begins or a change is seen


class _Loop:
    """What one event loop watches: its waiters' job ids (counted), and its watcher."""

    def __init__(self) -> None:
        self.watched: collections.Counter[str] = collections.Counter()
        self.task: asyncio.Task[None] | None = None
        self.eager_until = 0.0


class EndWatch:
    """The jobs waited on in each event loop, and the task that watches them there.

    ``version`` reads the data version (cheap, in the caller's thread); ``ended`` returns which
    of the given job ids ended or are gone (one query); ``wake`` wakes their waiters.
    """

    def __init__(
        self,
        version: Callable[[], int],
        ended: Callable[[list[str]], Awaitable[set[str]]],
        wake: Callable[[Iterable[str]], None],
    ) -> None:
        self._version, self._ended, self._wake = version, ended, wake
        self._loops: dict[asyncio.AbstractEventLoop, _Loop] = {}

    @contextlib.contextmanager
    def watching(self, job_id: str) -> Iterator[None]:
        """Watch ``job_id`` while in the block. Enter it before the waiter's first read of the
        status: a commit after that read then shows as a change to the watcher."""
        loop = asyncio.get_running_loop()
        state = self._loops.setdefault(loop, _Loop())
        state.watched[job_id] += 1
        state.eager_until = loop.time() + EAGER  # a new wait: its job may end at once
        if state.task is None or state.task.done():
            # The baseline is read now, before the waiter reads its status, not when the
            # task first runs: a commit in between would otherwise go unseen.
            state.task = loop.create_task(self._watch(loop, state, self._version()))
        try:
            yield
        finally:
            state.watched[job_id] -= 1
            if state.watched[job_id] <= 0:
                del state.watched[job_id]

    async def _watch(self, loop: asyncio.AbstractEventLoop, state: _Loop, version: int) -> None:
        poll = FIRST_POLL
        try:
            while state.watched:
                await asyncio.sleep(poll)
                now = self._version()
                if now == version:
                    if loop.time() >= state.eager_until:
                        poll = min(poll * 2, IDLE_POLL)
                    continue
                version, poll = now, FIRST_POLL
                state.eager_until = loop.time() + EAGER
                try:
                    ended = await self._ended(list(state.watched))
                except Exception as exc:  # the waiters re-check on their own meanwhile
                    log.debug(
                        "reading ended jobs for %d waiter(s) failed: %s", len(state.watched), exc
                    )
                    continue
                if ended:
                    self._wake(ended)
        finally:
            if not state.watched and self._loops.get(loop) is state:
                del self._loops[loop]
