"""``TimeLimit`` holds when the code inside swallows its cancellation (redis-py does, by
accident, on Python 3.11), where ``asyncio.timeout`` let such code run on and succeed."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from dromos._loop import TimeLimit
from tests.cancellation import swallowing_loop as _swallowing_loop


async def test_code_that_swallows_the_first_cancellation_still_ends_at_the_limit() -> None:
    swallowed: list[int] = []
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        async with TimeLimit(0.1) as limit:
            await _swallowing_loop(swallowed)
    assert limit.expired
    assert swallowed == [1]
    assert time.monotonic() - began < 5  # one more cancellation, a second later
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_asyncio_timeout_does_not_end_it_which_is_why() -> None:
    swallowed: list[int] = []
    ended = asyncio.Event()

    async def looping() -> None:
        async with asyncio.timeout(0.1):
            await _swallowing_loop(swallowed)
        ended.set()

    task = asyncio.create_task(looping())
    await asyncio.sleep(1.0)
    assert swallowed == [1]
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not ended.is_set()


async def test_code_that_swallows_it_and_returns_still_fails_with_timeout_error() -> None:
    async def swallow_then_return() -> str:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)
        return "done anyway"

    with pytest.raises(TimeoutError):
        async with TimeLimit(0.05):
            await swallow_then_return()


async def test_a_timeout_error_of_the_code_itself_is_not_the_limits() -> None:
    with pytest.raises(TimeoutError, match="its own"):
        async with TimeLimit(5) as limit:
            raise TimeoutError("its own")
    assert not limit.expired


async def test_within_the_limit_nothing_is_cancelled() -> None:
    async with TimeLimit(5) as limit:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.01)  # no cancellation left behind
    assert not limit.expired
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_cancellation_from_outside_wins() -> None:
    async def limited() -> None:
        async with TimeLimit(5):
            await asyncio.sleep(10)

    task = asyncio.create_task(limited())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
