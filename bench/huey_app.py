"""The huey peer: SqliteHuey with the same no-op task (imported by huey's own consumer).

Runs in huey's own venv (``bench/.venvs/huey``), never in dromos's. The database file comes
from ``$BENCH_HUEY_DB``. Each completion time is appended by a signal handler to
``$BENCH_HUEY_DB.times.<pid>`` (one file per consumer process), so that the drain is timed
from the first completion to the last, as for dromos.
"""

from __future__ import annotations

import os
import threading
import time

from huey import SqliteHuey, signals

DB = os.environ.get("BENCH_HUEY_DB", "huey.db")
# fsync=True: synchronous=FULL, the same durability as dromos's default.
huey = SqliteHuey("bench", filename=DB, fsync=True)
_lock = threading.Lock()


@huey.task()
def noop(i: int) -> int:
    return i


@huey.signal(signals.SIGNAL_COMPLETE)
def _completed(signal: str, task: object, *args: object, **kwargs: object) -> None:
    line = f"{time.time()!r}\n"
    with _lock, open(f"{DB}.times.{os.getpid()}", "a") as f:
        f.write(line)
