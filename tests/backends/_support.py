"""Helpers of the conformance suite: envelopes for the broker contract, bounded waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from dromos.brokers.base import EnqueueRequest
from dromos.message import Message, encode, new_job_id, utcnow

__all__ = ["SkewedClock", "eventually", "request"]


def request(
    task: str = "t",
    *,
    queue: str = "default",
    priority: int = 0,
    delay: float | None = None,
    key: str | None = None,
    args: list[Any] | None = None,
    payload: bytes | None = None,
    window: float = 3600.0,
    callback: str | None = None,
) -> EnqueueRequest:
    """One job as the app would hand it to a broker (``payload`` overrides the encoding)."""
    now = utcnow()
    message = Message(
        id=new_job_id(),
        task=task,
        queue=queue,
        args=args or [],
        priority=priority,
        eta=None if delay is None else now + timedelta(seconds=delay),
        created_at=now,
        headers={} if key is None else {"idempotency_key": key},
    )
    if callback is not None:
        message.headers["callback_url"] = callback
    return EnqueueRequest(message, encode(message) if payload is None else payload, window)


def eta_of(req: EnqueueRequest) -> float:
    """The request's eta as Unix time."""
    assert req.message.eta is not None
    return req.message.eta.timestamp()


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 10.0,
    what: str = "condition",
) -> None:
    """Poll ``check`` (sync or async) until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.01)


def utc_in(seconds: float) -> datetime:
    """An aware datetime ``seconds`` from now."""
    return datetime.now(UTC) + timedelta(seconds=seconds)


class SkewedClock:
    """The ``time`` module as a process whose wall clock is ``skew`` seconds off sees it
    (patched over a module's ``time``): RELIABILITY #13."""

    def __init__(self, skew: float) -> None:
        self._skew = skew

    def time(self) -> float:
        return time.time() + self._skew

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)  # monotonic, perf_counter ...: as they are
