"""Celery on RabbitMQ through the shared driver (``--store rabbitmq``; run by
``bench/.venvs/celery-rabbitmq``'s python).

The same two variants and settings as ``celery_peer.py`` (Redis), on the private RabbitMQ node
(``celery_rmq_tasks.py``: kombu's py-amqp transport, result backend ``rpc://``):

- ``celery-threads``: ``celery worker --pool threads -c 32``; two worker nodes for 2 processes.
- ``celery-prefork``: ``celery worker`` (prefork), ``-c 1`` / ``-c 2``.
- ``worker_prefetch_multiplier=64`` (the "Optimizing" guide); ``task_ignore_result`` for the
  drain; the round trip with results, ``count.delay(i).get(timeout=...)``: with ``rpc://``
  the result comes back as a message on the caller's reply queue (consumed, not polled).
- The queue is Celery's default: ``celery``, a durable *classic* queue
  (``task_default_queue_type`` "classic"), persistent messages, publisher confirms off
  (kombu's default), one ack per message. The extras measure the enqueue loop with
  ``ignore_result=True`` (``enqueue_ignore_result``) and with confirms on
  (``enqueue_confirmed``: ``broker_transport_options={"confirm_publish": True}``, each
  publish waits for its confirm), which is what dromos does on every enqueue.

What may look unfair: no bulk enqueue (``group()`` sends one message per task), as on Redis.
Gossip, mingle and the worker heartbeat stay on (Celery's defaults): they cost at start-up
(not counted) and a message every few seconds.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from _driver import main
from celery_peer import CeleryPrefork, CeleryThreads


def _tasks(port: int) -> Any:
    os.environ["BENCH_REDIS_PORT"] = str(port)
    os.environ["BENCH_CELERY_RESULTS"] = "1"
    import celery_rmq_tasks

    return celery_rmq_tasks


class _OnRabbitMQ:
    module = "celery_rmq_tasks"

    def _tasks(self, port: int) -> Any:
        return _tasks(port)

    def extra(self, port: int, n: int) -> dict[str, float]:
        """Celery only: the ``enqueue`` loop with ``ignore_result=True``, and with publisher
        confirms on (results on, as ``enqueue``)."""
        mod = _tasks(port)
        task = mod.count
        task.apply_async((-1,), ignore_result=True)
        t0 = time.perf_counter()
        for i in range(n):
            task.apply_async((i,), ignore_result=True)
        out = {"enqueue_ignore_result": n / (time.perf_counter() - t0)}
        confirmed = mod.make_app(confirm=True)
        confirmed.send_task("bench.count", (-1,))
        t0 = time.perf_counter()
        for i in range(n):
            confirmed.send_task("bench.count", (i,))
        out["enqueue_confirmed"] = n / (time.perf_counter() - t0)
        confirmed.close()
        return out

    @staticmethod
    def _warm_up(task: Any, port: int) -> None:
        """One untimed round trip while the worker starts: up to 3 tries of 40 s."""
        from celery.exceptions import TimeoutError as CeleryTimeout

        for attempt in range(3):
            try:
                if task.delay(-1).get(timeout=40) != -1:
                    raise RuntimeError("celery: wrong warm-up result")
                return
            except CeleryTimeout:
                print(f"celery: warm-up {attempt + 1} timed out", file=sys.stderr, flush=True)
        raise RuntimeError("celery: no warm-up result")


class CeleryThreadsRabbitMQ(_OnRabbitMQ, CeleryThreads):
    pass


class CeleryPreforkRabbitMQ(_OnRabbitMQ, CeleryPrefork):
    pass


if __name__ == "__main__":
    main(CeleryThreadsRabbitMQ(), CeleryPreforkRabbitMQ())
