"""Code that swallows a cancellation, as redis-py does by accident on Python 3.11 (its
socket writes go through ``asyncio.wait_for``, which drops a cancellation that lands as the
write ends): what dromos's time limits and shutdown must still end."""

from __future__ import annotations

import asyncio


async def swallowing_loop(swallowed: list[int] | None = None) -> None:
    """Loop forever; swallow the first cancellation (noted in ``swallowed``), obey the next."""
    caught = swallowed if swallowed is not None else []
    while True:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if caught:
                raise
            caught.append(1)
