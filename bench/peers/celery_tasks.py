"""Celery's side of the shared benchmark task: INCR the counter, return the int.

The app is configured here, from the environment the peer's ``worker()`` hands the worker
(and the peer process sets before importing this module), so that client and worker share
one configuration:

- ``BENCH_REDIS_PORT``: the private Redis; broker and result backend both live there
  (``redis://127.0.0.1:<port>/0``), as the brief asks of every system.
- ``BENCH_CELERY_RESULTS``: ``0`` sets ``task_ignore_result`` (the drain: results off, which
  the Celery docs list as the way not to store results); anything else keeps them.
- ``BENCH_CELERY_PREFETCH``: ``worker_prefetch_multiplier``. The Celery guide "Optimizing"
  (Prefetch Limits) says that with many short-running tasks, where throughput or round-trip
  latency matters, "this number should be large ... Say 64, or 128"; the peer passes 64.
"""

from __future__ import annotations

import os

from _counter import incr_counter, private_port
from celery import Celery

PORT = private_port()  # read when the module is imported, in the process that runs it

URL = f"redis://127.0.0.1:{PORT}/0"

app = Celery("bench", broker=URL, backend=URL)
app.conf.update(
    task_ignore_result=os.environ.get("BENCH_CELERY_RESULTS", "1") == "0",
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "64")),
    # Only silences the start-up deprecation warning; the value is Celery's own default.
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.count")
def count(i: int) -> int:
    """The benchmark's task: count the completion on the private Redis."""
    incr_counter()
    return i
