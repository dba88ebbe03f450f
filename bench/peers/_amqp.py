"""The RabbitMQ benchmark's private node, as the peers and the driver see it (``--store rabbitmq``).

``rabbitmq_bench.py`` starts a private node (``tests/rabbitmq_servers.PrivateRabbitMQ``: its
own node name, ports, Erlang cookie and data directory) and hands the driver its AMQP port,
node name and home (``--amqp-port``, ``--rabbitmq-node``, ``--rabbitmq-home``); the driver
puts the port in ``$BENCH_AMQP_PORT``, where every peer's task module and worker read it. The
completion counter stays the Redis one of ``_counter.py``, on the private ``redis-server``.

The driver empties the node between phases with ``purge``: every queue of the vhost ``/`` is
purged (``rabbitmqctl eval`` of ``rabbit_amqqueue:purge/1`` over the vhost's queues, one call
of about 0.3 s), until a pass finds nothing; queues are kept, not deleted, so that a producer
that declared them keeps its bindings. Imports only the stdlib.
"""

from __future__ import annotations

import os
import re
import subprocess

SHARED_AMQP_PORT = 5672  # the shared node: never used here
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"  # Debian's, without its su wrapper


def amqp_port() -> int:
    """``$BENCH_AMQP_PORT``, the private node; the shared one (5672) is refused."""
    port = int(os.environ.get("BENCH_AMQP_PORT", "0"))
    if port in (0, SHARED_AMQP_PORT):
        raise RuntimeError(f"refusing AMQP port {port}: not the benchmark's private node")
    return port


def url(vhost: str = "/") -> str:
    """``amqp://guest:guest@127.0.0.1:<port>/`` (the default vhost)."""
    return f"amqp://guest:guest@127.0.0.1:{amqp_port()}{vhost}"


def _ctl(node: str, home: str, *args: str) -> str:
    env = {**os.environ, "HOME": home}  # the node's own Erlang cookie
    done = subprocess.run([CTL, "-n", node, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args[0]}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


# Purges every queue of the vhost "/" and answers how many messages each held (-1: it failed).
# One call: ``list_queues``'s message counts come from statistics emitted every few seconds,
# which lag a purge or a publish; the purge's own answer is exact.
_PURGE_ALL = (
    "[case catch rabbit_amqqueue:purge(Q) of {ok, N} -> N; _ -> -1 end"
    ' || Q <- rabbit_amqqueue:list(<<"/">>)].'
)


def purge(node: str, home: str) -> int:
    """Purge every queue of the vhost until a pass finds none holding a message (no consumer
    runs: the driver stopped the worker); the number of messages purged."""
    if not node.endswith("@localhost") or not node.startswith("dromos_t_"):
        raise RuntimeError(f"refusing to purge node {node!r}: not a private benchmark node")
    total = 0
    for _ in range(5):
        counts = [int(n) for n in re.findall(r"-?\d+", _ctl(node, home, "eval", _PURGE_ALL))]
        if not any(counts):
            return total
        total += sum(n for n in counts if n > 0)
    raise RuntimeError(f"the queues still held messages or failed to purge: {counts}")
