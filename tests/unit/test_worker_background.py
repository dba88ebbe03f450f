"""The worker's background loops end at shutdown even when one swallows a cancellation
(redis-py's asyncio client can, when it lands mid-command), instead of holding the exit."""

from __future__ import annotations

import asyncio
import time

from dromos.worker.runtime import _cancel_all


async def test_a_loop_that_swallows_its_first_cancellation_still_ends_promptly() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # as a client library that caught it mid-command

    async def plain() -> None:
        await asyncio.sleep(60)

    tasks = [asyncio.create_task(stubborn()), asyncio.create_task(plain())]
    await asyncio.sleep(0)
    began = time.monotonic()
    await _cancel_all(tasks)
    assert time.monotonic() - began < 5.0
    assert all(t.done() for t in tasks)
    assert swallowed == 1
