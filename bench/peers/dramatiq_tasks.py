"""Dramatiq's side of the shared benchmark task: INCR the counter, return the int.

Imported by ``dramatiq dramatiq_tasks`` (the worker) and by ``dramatiq_peer.py`` (the
producer). The broker is a ``RedisBroker`` on the private server (``$BENCH_REDIS_PORT``).
The ``Results`` middleware with the Redis backend is always on; ``$BENCH_RESULTS=1`` sets
``store_results=True`` on the actor (the round trip), otherwise results are not stored
(``store_results=False``, the middleware's default: the drain). Dramatiq logs a warning for
every message whose actor returns a value it does not store (from the worker without the
middleware, from the middleware with ``store_results=False``): advice for an actor that
should return None, logged 20,000 times in a drain. The benchmark's task must return the
int, so that one logger (which logs nothing else) is raised to ERROR when results are off.
"""

from __future__ import annotations

import logging
import os

import dramatiq
from _counter import incr_counter, private_port
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

PORT = private_port()  # read when the module is imported, in the process that runs it

RESULTS = os.environ.get("BENCH_RESULTS") == "1"

broker = RedisBroker(host="127.0.0.1", port=PORT)
broker.add_middleware(Results(backend=RedisBackend(host="127.0.0.1", port=PORT)))
dramatiq.set_broker(broker)
if not RESULTS:
    logging.getLogger("dramatiq.results.middleware.Results").setLevel(logging.ERROR)


@dramatiq.actor(store_results=RESULTS)
def noop(i: int) -> int:
    """The benchmark's task: count the completion on the private Redis."""
    incr_counter()
    return i
