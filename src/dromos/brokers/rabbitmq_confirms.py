"""Publishing with confirms on RabbitMQ, shared by the jobs' transport and the event bus.

A publish is confirmed when the broker has the message (``basic.ack``). Awaiting confirms one
message at a time costs a round trip each; sending everything first floods a slow broker. So
up to :data:`WINDOW` publishes are in flight, each freed slot taken by the next message at
once. And a big batch on a slow but working broker must not fail for its size (a thousand
enqueues coalesced under load took 5 s), while a stuck broker must fail as soon as a single
message would: so the :class:`Deadline` runs ``publish_timeout`` from the start, is pushed back
by every confirm, and never passes ``publish_limit``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from dromos.brokers.rabbitmq_url import AmqpSettings

__all__ = ["WINDOW", "Deadline", "publish_confirmed"]

WINDOW = 256  # publishes in flight at once within a batch

_T = TypeVar("_T")


class Deadline:
    """When a publish gives up (loop time): ``publish_timeout`` after it began, then after the
    last confirm (:meth:`extend`), but never past its ``publish_limit``. One deadline spans
    every attempt of a publish (reconnections included)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: AmqpSettings) -> None:
        self.loop, self.timeout = loop, settings.publish_timeout
        now = loop.time()
        self.at = now + self.timeout
        self.limit = now + settings.publish_limit

    def extend(self) -> float:
        """A confirm came: the deadline is ``publish_timeout`` from now (within the limit)."""
        self.at = min(self.loop.time() + self.timeout, self.limit)
        return self.at

    def passed(self) -> bool:
        return self.loop.time() >= self.at

    def remaining(self) -> float:
        return max(self.at - self.loop.time(), 0.0)


async def publish_confirmed(
    items: Sequence[_T],
    publish: Callable[[_T], Awaitable[Any]],
    deadline: Deadline,
    failures: tuple[type[BaseException], ...],
) -> tuple[list[_T], BaseException | None]:
    """Publish ``items`` through the window, awaiting each confirm: (the items not confirmed,
    the last error). An error among ``failures`` (a nack, a return, a closed channel) leaves
    its item unconfirmed; any other is raised. When ``deadline`` passes, whatever is still
    unconfirmed is returned with the :class:`TimeoutError`: what was confirmed stays so, and
    the caller publishes again only the rest.
    """
    window = asyncio.Semaphore(WINDOW)
    confirmed = [False] * len(items)

    async def one(index: int, item: _T) -> None:
        async with window:
            await publish(item)
        confirmed[index] = True
        timer.reschedule(deadline.extend())

    try:
        async with asyncio.timeout_at(deadline.at) as timer:
            results = await asyncio.gather(
                *(one(i, item) for i, item in enumerate(items)), return_exceptions=True
            )
    except TimeoutError as exc:
        return [item for item, done in zip(items, confirmed, strict=True) if not done], exc
    failed: list[_T] = []
    last: BaseException | None = None
    for item, result in zip(items, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, failures):
                raise result
            failed.append(item)
            last = result
    return failed, last
