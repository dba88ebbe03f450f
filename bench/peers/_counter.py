"""The benchmark task's one side effect, the same in every system's task module.

Each task takes an int, INCRs ``bench:count`` on the private Redis and returns the int: the
driver counts completions from that counter. One client per worker process, made on first
use (a forking worker's children each make their own). Imports only redis-py, which every
peer's virtualenv has.
"""

from __future__ import annotations

import os
from typing import Any

COUNTER = "bench:count"
_MAX_CONNECTIONS = 1024  # one per job a worker runs at once, at most
SHARED_PORT = 6379  # the shared server: never used here


def private_port() -> int:
    """``$BENCH_REDIS_PORT``, the benchmark's private server; the shared one is refused."""
    port = int(os.environ.get("BENCH_REDIS_PORT", "0"))
    if port == SHARED_PORT:
        raise RuntimeError("refusing the shared Redis")
    return port


_sync: dict[int, Any] = {}
_async: dict[int, Any] = {}


def incr_counter() -> None:
    """INCR the counter (a sync task: threads, processes)."""
    pid = os.getpid()
    if pid not in _sync:
        import redis

        _sync[pid] = redis.Redis(host="127.0.0.1", port=private_port())
    _sync[pid].incr(COUNTER)


async def aincr_counter() -> None:
    """INCR the counter (an async task: one event loop per worker process)."""
    pid = os.getpid()
    if pid not in _async:
        import redis.asyncio as aioredis

        # redis-py's asyncio pool refuses a connection past 100 by default (redis-py 8:
        # MaxConnectionsError); a worker running more jobs at once than that would fail
        # some of them on the counter, not on its own work.
        _async[pid] = aioredis.Redis(
            host="127.0.0.1", port=private_port(), max_connections=_MAX_CONNECTIONS
        )
    await _async[pid].incr(COUNTER)
