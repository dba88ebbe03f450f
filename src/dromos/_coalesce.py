"""Group commit for enqueues: calls that arrive while one is in flight share the next.

Sixty-four coroutines that each ``await task.aenqueue(...)`` at once would otherwise make 64
round trips one after another. Here the first call is sent at once (an idle caller waits for
nothing), and every call that arrives while it is in flight waits for the next send, which
carries all of them as one batch: one round trip for many jobs, as ``enqueue_many`` is.

A batch is all or none per queue, as one ``enqueue_many`` is; when it fails, every caller in
it gets the error (none of its jobs was queued). A caller cancelled while waiting leaves its
jobs in the batch: like a cancelled ``enqueue``, its jobs may or may not have been queued.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from dromos.brokers.base import EnqueueRequest

__all__ = ["Coalescer"]

_MAX_BATCH = 1000  # requests per send: bounds one script call's size and time
Send = Callable[[list[EnqueueRequest]], Awaitable[list[str]]]


class Coalescer:
    """Sends enqueue requests through ``send`` in batches, one send at a time.

    Bound to the event loop it is first used on (its futures are).
    """

    def __init__(self, send: Send) -> None:
        self._send = send
        self._pending: list[tuple[Sequence[EnqueueRequest], asyncio.Future[list[str]]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def enqueue(self, requests: Sequence[EnqueueRequest]) -> list[str]:
        """The ids of ``requests`` once stored, sent together with whatever else is waiting."""
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._pending.append((requests, future))
        if self._sender is None:
            # A task of its own, not the first caller's coroutine: cancelling that caller
            # must not strand the others.
            self._sender = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        try:
            while self._pending:
                batch = self._take()
                flat = [r for requests, _ in batch for r in requests]
                try:
                    ids = await self._send(flat)
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for requests, future in batch:
                    end = start + len(requests)
                    if not future.done():
                        future.set_result(ids[start:end])
                    start = end
        finally:
            self._sender = None
            for _, future in self._pending:  # only if this task itself was cancelled
                if not future.done():
                    future.cancel()
            self._pending = []

    def _take(self) -> list[tuple[Sequence[EnqueueRequest], asyncio.Future[list[str]]]]:
        """The waiting calls, up to about ``_MAX_BATCH`` requests (at least one call)."""
        taken, size = 0, 0
        for requests, _ in self._pending:
            if taken and size + len(requests) > _MAX_BATCH:
                break
            taken += 1
            size += len(requests)
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch
