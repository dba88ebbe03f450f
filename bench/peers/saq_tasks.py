"""SAQ's side of the shared benchmark task: INCR the counter, return the int.

``settings`` is what ``saq saq_tasks.settings`` reads; the queue is built from
``BENCH_REDIS_PORT`` when the module is imported, in each worker process (``--workers 2``
forks before importing it, so no connection is shared between processes).
"""

from __future__ import annotations

from typing import Any

from _counter import aincr_counter, private_port
from saq import Queue

PORT = private_port()  # read when the module is imported, in the process that runs it

URL = f"redis://127.0.0.1:{PORT}/0"
QUEUE = "bench"
CONCURRENCY = 32  # as dromos's -c 32 (SAQ's default is 10)


async def noop(ctx: dict[str, Any], *, i: int) -> int:
    """The benchmark's task: count the completion on the private Redis."""
    await aincr_counter()
    return i


def queue() -> Queue:
    return Queue.from_url(URL, name=QUEUE)


settings = {
    "queue": queue(),
    "functions": [noop],
    "concurrency": CONCURRENCY,
}
