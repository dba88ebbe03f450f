"""Dramatiq on RabbitMQ through the shared driver (``--store rabbitmq``; run by
``bench/.venvs/dramatiq-rabbitmq``'s python).

Settings and why:

- ``RabbitmqBroker`` on the private node (``dramatiq_rmq_tasks.py``), its defaults: durable
  classic queues, persistent messages, ``confirm_delivery=False``; default middleware.
- Worker: ``dramatiq dramatiq_rmq_tasks -p 1 -t 32`` (``-p 2``), as on Redis (Dramatiq's
  default is 8 threads; 32 matches dromos's ``-c 32``).
- Prefetch: Dramatiq's default for RabbitMQ, twice the worker threads per queue
  (``dramatiq_queue_prefetch`` unset: ``basic.qos`` of 64 per process); the consumer is pushed
  its messages (``basic.consume``), no polling.
- Results: the ``Results`` middleware with ``RedisBackend`` on the private Redis (RabbitMQ has
  no result store; Dramatiq's other backends are Memcached and an in-memory stub). The drain
  runs with ``store_results=False``; the round trip with ``store_results=True``, waiting with
  ``message.get_result(block=True)``: a BRPOPLPUSH on the result key, pushed, not polled.
- Extra: ``enqueue_confirmed``, the same ``send`` loop through a second
  ``RabbitmqBroker(confirm_delivery=True)`` (each publish waits for its confirm), which is
  what dromos does on every enqueue.

What is unfair, if anything: no bulk enqueue (``group(...).run()`` sends one message per
call), so no ``enqueue_many``, and ``fill`` is a loop of ``send``.
"""

from __future__ import annotations

import time

from _driver import main
from dramatiq_peer import Dramatiq


class DramatiqRabbitMQ(Dramatiq):
    """Dramatiq's peer (``dramatiq_peer.py``: the same enqueue loops, worker command and
    round trip) on ``dramatiq_rmq_tasks``, plus the confirmed enqueue."""

    tasks = "dramatiq_rmq_tasks"

    def extra(self, port: int, n: int) -> dict[str, float]:
        """Dramatiq only: the ``send`` loop with publisher confirms on."""
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        mod = self._mod(port)
        confirmed = RabbitmqBroker(url=mod.AMQP_URL, confirm_delivery=True)
        confirmed.enqueue(mod.noop.message(-1))
        t0 = time.perf_counter()
        for i in range(n):
            confirmed.enqueue(mod.noop.message(i))
        rate = n / (time.perf_counter() - t0)
        confirmed.close()
        return {"enqueue_confirmed": rate}


if __name__ == "__main__":
    main(DramatiqRabbitMQ())
