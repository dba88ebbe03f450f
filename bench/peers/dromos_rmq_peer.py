"""dromos on RabbitMQ through the shared driver (``--store rabbitmq``; the project's ``.venv``).

The same measuring code and task as ``dromos_peer.py`` (``dromos_tasks.py``: INCR the Redis
counter, return the int), with the broker
``amqp://guest:guest@127.0.0.1:<amqp port>/?prefix=bench`` (the private node) and the state
store ``redis://127.0.0.1:<port>/0?prefix=bench`` (the private Redis, ``$DROMOS_BACKEND``):
RabbitMQ carries the jobs (durable quorum queues, persistent messages, publisher confirms),
the store keeps each job's status and result, for every figure.

- Broker settings: dromos's defaults (``publish_timeout`` 10 s, heartbeat 15 s; no
  ``?prefetch=``, so each band's prefetch is the room the worker's first claim asks for: its
  ``-c`` and as many prefetched, 64 here).
- Worker: ``dromos worker dromos_tasks:app -c 32 -q default`` (``-p 2``: dromos's own second
  process), uvloop (the extra ``fast``), as on Redis.
- Enqueue: ``noop.enqueue(i)`` one at a time (a store write, a confirmed publish, the mark
  "sent"); bulk ``noop.enqueue_many`` of 1,000 (confirms pipelined).
- Round trip: ``noop.enqueue(i).result(timeout=60)``, woken by the store's completion message
  (Redis pub/sub), not by polling.
- Extras: ``await noop.aenqueue(i)`` one at a time, and from 64 coroutines at once.
"""

from __future__ import annotations

from _amqp import url
from _driver import main
from dromos_peer import Dromos


class DromosRabbitMQ(Dromos):
    name = "dromos"
    tasks = "dromos_tasks"
    port_env = "BENCH_REDIS_PORT"

    def _url(self, port: int) -> str:
        return url("/") + "?prefix=bench"

    def _env(self, port: int) -> dict[str, str]:
        return {**super()._env(port), "DROMOS_BACKEND": f"redis://127.0.0.1:{port}/0?prefix=bench"}


if __name__ == "__main__":
    main(DromosRabbitMQ())
