"""RQ's side of the shared benchmark task: INCR the counter, return the int.

RQ jobs name a plain importable function (``rq_tasks.count``); the worker imports this module
from its working directory (``bench/peers``, passed with ``--path``).
"""

from __future__ import annotations

import os
from typing import Any

import redis

_clients: dict[int, Any] = {}


def _client() -> Any:
    """One sync client per process, created lazily.

    Keyed by pid: RQ's forking ``Worker`` runs every job in a freshly forked work horse, which
    then opens its own connection (redis-py would not reuse the parent's across a fork anyway);
    ``SimpleWorker`` runs jobs in the worker process and keeps one client for its life."""
    pid = os.getpid()
    if pid not in _clients:
        port = int(os.environ["BENCH_REDIS_PORT"])
        if port == 6379:
            raise RuntimeError("refusing the shared Redis")
        _clients[pid] = redis.Redis(host="127.0.0.1", port=port)
    return _clients[pid]


def count(i: int) -> int:
    """The benchmark's task: count the completion on the private Redis."""
    _client().incr("bench:count")
    return i
