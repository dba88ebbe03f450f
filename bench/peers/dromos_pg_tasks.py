"""dromos's side of the PostgreSQL benchmark task: count the completion, return the int."""

from __future__ import annotations

import os

from _pgcounter import aincr_counter

import dromos

app = dromos.App("bench", os.environ.get("DROMOS_BROKER"))


@app.task
async def noop(i: int) -> int:
    """The benchmark's task: ``UPDATE bench.counter SET n = n + 1`` on the private cluster."""
    await aincr_counter()
    return i
