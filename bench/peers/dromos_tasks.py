"""dromos's side of the shared benchmark task: INCR the counter, return the int."""

from __future__ import annotations

import os

from _counter import aincr_counter

import dromos

app = dromos.App("bench", os.environ.get("DROMOS_BROKER"))


@app.task
async def noop(i: int) -> int:
    """The benchmark's task: count the completion on the private Redis."""
    await aincr_counter()
    return i
