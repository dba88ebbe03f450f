"""The dromos app the benchmark drives: one no-op task (takes an int, returns it).

The broker comes from ``$DROMOS_BROKER`` (the benchmark points it at a fresh file).
"""

from __future__ import annotations

import dromos

app = dromos.App("bench")


@app.task
async def noop(i: int) -> int:
    """Return the argument: the job costs only what dromos adds around it."""
    return i


@app.task
def noop_sync(i: int) -> int:
    """The same in a worker thread (plain ``def``)."""
    return i
