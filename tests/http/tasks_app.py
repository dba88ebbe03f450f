"""The tasks the gateway's tests submit over HTTP: one app per broker URL (``cli_app.py``
makes one for ``dromos serve`` and ``dromos worker`` in subprocesses)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel

import dromos

__all__ = ["Item", "create_app"]


class Item(BaseModel):
    """An order line: a nested model, so that the task's schema has a component of its own."""

    sku: str
    quantity: int = 1


def create_app(url: str) -> dromos.App:
    """An app on ``url`` with the tasks the tests use."""
    # A short lease: heartbeats (which carry cancel requests to the worker) come every ~0.7 s.
    app = dromos.App("httptest", broker=url, lease=2.0)

    @app.task
    async def add(x: int, y: int = 0) -> int:
        """Add two numbers."""
        return x + y

    @app.task(retries=0)
    async def slow(seconds: float) -> str:
        """Sleep, then say so."""
        await asyncio.sleep(seconds)
        return "slept"

    @app.task
    async def steps(n: int, pause: float = 0.05) -> int:
        """Report progress n times."""
        job = dromos.current_job()
        for i in range(n):
            await asyncio.sleep(pause)
            await job.progress((i + 1) / n, f"step {i + 1} of {n}")
        await asyncio.sleep(pause)
        return n

    @app.task(retries=0)
    async def fail(reason: str) -> None:
        """Fail at once, for good."""
        raise ValueError(reason)

    @app.task
    def order(item: Item, *notes: str, express: bool = False) -> str:
        """A plain function with a model, *args and a keyword-only parameter."""
        time.sleep(0.001)
        return f"{item.quantity} x {item.sku}" + (" express" if express else "")

    @app.task
    async def batch_done(summary: dict[str, Any], label: str = "") -> str:
        """A batch's on_complete: says what the summary counted."""
        return f"{label}{summary['succeeded']}/{summary['total']} ok, {summary['failed']} failed"

    app.topic("orders.created", Item)  # a declared topic: publish validates, AsyncAPI shows

    @app.subscriber("audit.#", group="http-audit")
    async def audit(event: dromos.Event[Item]) -> None:
        """A subscriber the worker runs (its group shows in the AsyncAPI document)."""

    return app
