"""Dramatiq's side of the RabbitMQ benchmark task: INCR the Redis counter, return the int.

Imported by ``dramatiq dramatiq_rmq_tasks`` (the worker) and by ``dramatiq_rmq_peer.py`` (the
producer). The broker is a ``RabbitmqBroker`` on the private node (``$BENCH_AMQP_PORT``) at
its defaults: ``confirm_delivery=False`` (a publish does not wait for RabbitMQ's confirm),
durable classic queues (``default``, with its delay queue ``default.DQ`` and dead-letter
queue ``default.XQ``), persistent messages. RabbitMQ keeps no results, so the ``Results``
middleware uses ``RedisBackend`` on the private Redis (``$BENCH_REDIS_PORT``, the counter's
server); ``$BENCH_RESULTS=1`` sets ``store_results=True`` on the actor (the round trip),
otherwise results are not stored (the drain), and the one logger that warns per message
about an unstored return value is raised to ERROR, as in ``dramatiq_tasks.py``.
"""

from __future__ import annotations

import logging
import os

import dramatiq
from _amqp import url
from _counter import incr_counter, private_port
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

PORT = private_port()  # read when the module is imported, in the process that runs it
AMQP_URL = url("/%2F")  # the default vhost "/"

RESULTS = os.environ.get("BENCH_RESULTS") == "1"

broker = RabbitmqBroker(url=AMQP_URL)
broker.add_middleware(Results(backend=RedisBackend(host="127.0.0.1", port=PORT)))
dramatiq.set_broker(broker)
if not RESULTS:
    logging.getLogger("dramatiq.results.middleware.Results").setLevel(logging.ERROR)


@dramatiq.actor(store_results=RESULTS)
def noop(i: int) -> int:
    """The benchmark's task: count the completion on the private Redis."""
    incr_counter()
    return i
