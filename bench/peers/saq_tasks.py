"""SAQ's side of the shared benchmark task: INCR the counter, return the int.

``settings`` is what ``saq saq_tasks.settings`` reads; the queue is built from
``BENCH_REDIS_PORT`` when the module is imported, in each worker process (``--workers 2``
forks before importing it, so no connection is shared between processes).
"""

from __future__ import annotations

import os
from typing import Any

import redis.asyncio as aioredis
from saq import Queue

PORT = int(os.environ.get("BENCH_REDIS_PORT", "0"))
if PORT == 6379:
    raise RuntimeError("refusing the shared Redis")
URL = f"redis://127.0.0.1:{PORT}/0"
QUEUE = "bench"
CONCURRENCY = 32  # as dromos's -c 32 (SAQ's default is 10)

_clients: dict[int, Any] = {}


def _client() -> Any:
    # one client per worker process (each runs one event loop)
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = aioredis.Redis(host="127.0.0.1", port=PORT)
    return _clients[pid]


async def noop(ctx: dict[str, Any], *, i: int) -> int:
    """The benchmark's task: count the completion on the private Redis."""
    await _client().incr("bench:count")
    return i


def queue() -> Queue:
    return Queue.from_url(URL, name=QUEUE)


settings = {
    "queue": queue(),
    "functions": [noop],
    "concurrency": CONCURRENCY,
}
