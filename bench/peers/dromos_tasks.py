"""dromos's side of the shared benchmark task: INCR the counter, return the int."""

from __future__ import annotations

import os
from typing import Any

import redis.asyncio as aioredis

import dromos

PORT = int(os.environ.get("BENCH_REDIS_PORT", "0"))
app = dromos.App("bench", os.environ.get("DROMOS_BROKER"))
_clients: dict[int, Any] = {}


def _client() -> Any:
    # one client per worker process (the worker runs one event loop)
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = aioredis.Redis(host="127.0.0.1", port=PORT)
    return _clients[pid]


@app.task
async def noop(i: int) -> int:
    """The benchmark's task: count the completion on the private Redis."""
    await _client().incr("bench:count")
    return i
