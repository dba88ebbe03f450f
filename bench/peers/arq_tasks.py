"""arq's side of the shared benchmark task: INCR the counter, return the int.

``WorkerSettings`` is what ``arq arq_tasks.WorkerSettings`` runs; the settings come from the
environment the peer gives the worker: ``$BENCH_REDIS_PORT`` (the private server),
``$BENCH_RESULTS`` (``0``: ``keep_result=0``, results not kept: the drain; otherwise arq's
default of an hour), ``$BENCH_ARQ_MAX_JOBS`` and ``$BENCH_ARQ_POLL_DELAY`` (see
``arq_peer.py`` for the values and why). ``LOG_CONFIG`` is arq's own default log config at
WARNING instead of INFO (``--custom-log-dict``): at INFO arq logs two lines per job.
"""

from __future__ import annotations

import os
from typing import Any

from _counter import aincr_counter, private_port
from arq.connections import RedisSettings
from arq.logs import default_log_config

PORT = private_port()  # read when the module is imported, in the process that runs it


async def noop(ctx: dict[str, Any], i: int) -> int:
    """The benchmark's task: count the completion on the private Redis."""
    await aincr_counter()
    return i


class WorkerSettings:
    functions = [noop]
    redis_settings = RedisSettings(host="127.0.0.1", port=PORT)
    max_jobs = int(os.environ.get("BENCH_ARQ_MAX_JOBS", "10"))
    poll_delay = float(os.environ.get("BENCH_ARQ_POLL_DELAY", "0.5"))
    keep_result = 0 if os.environ.get("BENCH_RESULTS") == "0" else 3600


LOG_CONFIG = default_log_config(verbose=False)
LOG_CONFIG["handlers"]["arq.standard"]["level"] = "WARNING"
LOG_CONFIG["loggers"]["arq"]["level"] = "WARNING"
