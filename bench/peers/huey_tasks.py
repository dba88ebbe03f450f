"""huey's side of the shared benchmark task: INCR the counter, return the int.

Imported by ``huey_consumer huey_tasks.huey`` (the consumer) and by ``huey_peer.py`` (the
producer). ``RedisHuey`` on the private server (``$BENCH_REDIS_PORT``); ``$BENCH_RESULTS=0``
turns the result store off (``results=False``, the drain), anything else keeps huey's default
``results=True``. ``notify_result=True`` is huey 3's "option for low-latency result fetching"
(3.0.0 changelog): the consumer pushes a notification that ``Result.get(blocking=True)``
waits on with BLPOP instead of polling the result hash with a back-off.
"""

from __future__ import annotations

import os

from _counter import incr_counter, private_port
from huey import RedisHuey

PORT = private_port()  # read when the module is imported, in the process that runs it

RESULTS = os.environ.get("BENCH_RESULTS") != "0"

huey = RedisHuey("bench", results=RESULTS, notify_result=True, host="127.0.0.1", port=PORT)


@huey.task()
def noop(i: int) -> int:
    """The benchmark's task: count the completion on the private Redis."""
    incr_counter()
    return i
