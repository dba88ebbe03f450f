"""Celery's side of the RabbitMQ benchmark task: INCR the Redis counter, return the int.

Configured from the environment the peer's ``worker()`` hands the worker (and the peer process
sets before importing this module), so that client and worker share one configuration:

- ``BENCH_AMQP_PORT``: the private RabbitMQ node, the broker
  (``amqp://guest:guest@127.0.0.1:<port>//``, kombu's own py-amqp transport, the default for
  ``amqp://``); ``BENCH_REDIS_PORT``: the private Redis of the counter.
- Result backend ``rpc://``, the one Celery's "First Steps" and its RabbitMQ broker page name
  for RabbitMQ: a result travels back as a message to the caller's reply queue (transient,
  ``result_persistent`` False, its default), nothing is stored.
- ``BENCH_CELERY_RESULTS``: ``0`` sets ``task_ignore_result`` (the drain); anything else keeps
  results (the round trip).
- ``BENCH_CELERY_PREFETCH``: ``worker_prefetch_multiplier``, 64 as on Redis (the "Optimizing"
  guide, Prefetch Limits: with many short tasks "this number should be large ... Say 64, or
  128").
- Publisher confirms off, kombu's default (``broker_transport_options={"confirm_publish":
  True}`` turns them on): ``make_app(confirm=True)`` is the app of the ``enqueue_confirmed``
  figure only.
"""

from __future__ import annotations

import os

from _amqp import amqp_port
from _counter import incr_counter, private_port
from celery import Celery

PORT = private_port()  # read when the module is imported, in the process that runs it
AMQP_URL = f"amqp://guest:guest@127.0.0.1:{amqp_port()}//"


def make_app(confirm: bool = False) -> Celery:
    app = Celery("bench", broker=AMQP_URL, backend="rpc://")
    app.conf.update(
        task_ignore_result=os.environ.get("BENCH_CELERY_RESULTS", "1") == "0",
        worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "64")),
        # Only silences the start-up deprecation warning; the value is Celery's own default.
        broker_connection_retry_on_startup=True,
    )
    if confirm:
        app.conf.broker_transport_options = {"confirm_publish": True}
    return app


app = make_app()


@app.task(name="bench.count")
def count(i: int) -> int:
    """The benchmark's task: count the completion on the private Redis."""
    incr_counter()
    return i
