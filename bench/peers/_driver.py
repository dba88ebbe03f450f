"""The one measuring loop every system goes through (dromos and each peer alike).

Three stores: ``--store redis`` (the default: ``redis_bench.py``, ``port`` is the private
Redis), ``--store postgres`` (``postgres_bench.py``, ``port`` is the private PostgreSQL
cluster) and ``--store rabbitmq`` (``rabbitmq_bench.py``, ``port`` is the private Redis, the
jobs travel on a private RabbitMQ node); see the end of this docstring.

A peer module (``<name>_peer.py``, run by its own virtualenv's Python) defines one class per
variant with the ``Peer`` methods below and ends with ``main(Variant1(), Variant2())``;
``--variant NAME`` picks one (``name`` attribute, e.g. ``celery-threads``). This driver owns
the timing, the completion count and the process handling, so every system is measured alike:

- the task every system runs takes an int, INCRs the Redis counter ``bench:count`` on the
  private server and returns the int (``_counter.py``, shared by the peers' task modules);
- ``enqueue``: ``n`` calls one at a time through the system's normal API (timed by the peer,
  after one warm-up call that connects);
- ``enqueue_many``: ``n`` jobs through the system's bulk API in batches of ``batch``;
- ``drain_1p`` / ``drain_2p``: ``n`` jobs are put on the queue first (not timed), then the
  worker starts; the rate runs from the first completion the counter shows to the ``n``-th,
  so start-up is not counted; ``rss_mb`` is the worker's resident memory after the drain
  (the sum over its process tree: a prefork or forking worker counts its children);
- ``latency_*``: on an idle worker, enqueue one job and wait for its result through the
  system's own result API, ``samples`` times.

Stdlib and the sync redis-py client only (every Redis peer's virtualenv has redis-py; it is
imported only with ``--store redis`` or ``rabbitmq``).

With ``--store postgres`` the counter is the row ``bench.counter`` of the private cluster
(``_pgcounter.py``; the tasks run ``UPDATE bench.counter SET n = n + 1``), read the same way
every 2 ms, and a flush empties every table of the cluster's ``postgres`` database except
migration bookkeeping (``*schema_version``), sets the counter to 0 and runs a ``CHECKPOINT``
(so that no phase inherits another's checkpoint); a drain's fill is followed by ``ANALYZE``
(tables emptied by ``TRUNCATE`` have no statistics until autovacuum's next round, up to a
minute later, and a query planned without them can scan the whole queue per fetch); psycopg
instead of redis-py. A peer may define ``prepare(port)``, called once before the first phase
(e.g. to install its schema).

With ``--store rabbitmq`` the counter is the Redis one, as with ``--store redis`` (``port`` is
the private Redis, which also holds dromos's state store and the peers' result backends where
they use Redis); the private RabbitMQ node is ``--amqp-port``, exported as
``$BENCH_AMQP_PORT`` to the peer and its workers (``_amqp.py``). A flush first purges every
queue of the node until none holds a message (``rabbitmqctl eval``, by ``--rabbitmq-node``
and ``--rabbitmq-home``), then empties the Redis.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
sys.path.insert(0, str(BENCH))

from _counter import COUNTER, SHARED_PORT  # noqa: E402

from _common import _rate  # noqa: E402

PHASES = ("enqueue", "bulk", "drain", "latency")
STORES = ("redis", "postgres", "rabbitmq")
_store = "redis"  # set by main() from --store
_rabbitmq: tuple[str, str] = ("", "")  # --store rabbitmq: the node's name and home


class Peer(Protocol):
    """What a system's module provides; ``port`` is the private server (Redis, or PostgreSQL
    with ``--store postgres``; with ``--store rabbitmq`` the Redis, the node in
    ``$BENCH_AMQP_PORT``)."""

    name: str

    def enqueue_single(self, port: int, n: int) -> float:
        """Seconds to enqueue ``n`` jobs one call at a time (a warm-up call first, untimed)."""
        ...

    def enqueue_bulk(self, port: int, n: int, batch: int) -> float | None:
        """Seconds for ``n`` jobs through the bulk API, or None where there is none."""
        ...

    def fill(self, port: int, n: int) -> None:
        """Put ``n`` jobs on the queue by the fastest means the system offers (not timed)."""
        ...

    def worker(self, port: int, procs: int, results: bool) -> tuple[list[str], dict[str, str]]:
        """argv and extra environment of a worker with ``procs`` processes.

        ``results`` False: results off where the system allows it (the drain)."""
        ...

    def round_trip(self, port: int, samples: int) -> list[float]:
        """Milliseconds of ``samples`` enqueue-and-wait-for-result round trips, one at a
        time, on the idle worker that is already running (a warm-up trip first, untimed)."""
        ...


def _private_client(port: int) -> Any:
    """A sync client of the benchmark's private server (never the shared one)."""
    import redis

    if port == SHARED_PORT:
        raise RuntimeError("refusing the shared Redis")
    return redis.Redis(host="127.0.0.1", port=port)


def _flush(port: int) -> None:
    if _store == "postgres":
        import _pgcounter

        _pgcounter.flush(port)
        return
    if _store == "rabbitmq":  # the jobs first, then their records and the counter
        import _amqp

        _amqp.purge(*_rabbitmq)
    client = _private_client(port)  # the private server only
    client.flushall()
    client.close()


class _RedisCount:
    """Reads the counter of the private Redis."""

    def __init__(self, port: int) -> None:
        self.client = _private_client(port)

    def __call__(self) -> int:
        return int(self.client.get(COUNTER) or 0)

    def close(self) -> None:
        self.client.close()


def _counter(port: int) -> Any:
    """A reader of the completion counter (``reader()``, ``reader.close()``)."""
    if _store == "postgres":
        import _pgcounter

        return _pgcounter.Reader(port)
    return _RedisCount(port)


def process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and every descendant, in MiB (from /proc)."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    full = {**os.environ, **env}
    # Its own process group, so that stopping it reaches every child it forked.
    # Its output goes to stderr: only the driver's JSON line is on stdout.
    return subprocess.Popen(argv, env=full, cwd=HERE, start_new_session=True, stdout=sys.stderr)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError):  # stragglers: forked children left behind
        os.killpg(proc.pid, signal.SIGKILL)
    # Wait until the whole group is gone: a dying child with a blocking pop still pending
    # would otherwise take the next phase's first job.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)


def _drain(peer: Peer, port: int, n: int, procs: int, timeout: float) -> dict[str, float]:
    _flush(port)
    peer.fill(port, n)
    if _store == "postgres":  # statistics for the tables the flush emptied (see _pgcounter)
        import _pgcounter

        _pgcounter.analyze(port)
    count = _counter(port)
    argv, env = peer.worker(port, procs, results=False)
    proc = _start(argv, env)
    try:
        deadline = time.monotonic() + timeout
        first_t, first_c = 0.0, 0
        while True:
            c = count()
            now = time.perf_counter()
            if c and not first_t:
                first_t, first_c = now, c
            if c >= n:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{peer.name}: the worker exited ({proc.returncode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{peer.name}: {c} of {n} jobs done after {timeout:.0f} s")
            time.sleep(0.002)
        rate = _rate(c - first_c, now - first_t)
        time.sleep(0.2)  # the worker settles its last batch
        rss = _tree_rss_mb(proc.pid)
    finally:
        _stop(proc)
        count.close()
    return {f"drain_{procs}p": rate, f"rss_{procs}p_mb": rss}


def _latency(peer: Peer, port: int, samples: int) -> dict[str, float]:
    _flush(port)
    argv, env = peer.worker(port, 1, results=True)
    proc = _start(argv, env)
    try:
        trips = peer.round_trip(port, samples)
        if proc.poll() is not None:
            raise RuntimeError(f"{peer.name}: the worker exited ({proc.returncode})")
    finally:
        _stop(proc)
    if not trips:
        raise RuntimeError(f"{peer.name}: no round trips measured")
    out = _from_samples(trips)
    if _store in ("postgres", "rabbitmq"):  # round trips of 100 ms or more (a missed wake-up)
        out["latency_slow"] = float(sum(1 for t in trips if t >= 100.0))
    return out


def _from_samples(samples: list[float]) -> dict[str, float]:
    import statistics

    samples.sort()
    n = len(samples)
    return {
        "latency_p50": statistics.median(samples),
        "latency_p99": samples[min(n - 1, round(0.99 * (n - 1)))],
        "latency_max": samples[-1],
    }


def main(*peers: Peer) -> None:
    """Measure the peer named by ``--variant`` (default: the first) and print JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=[p.name for p in peers], default=peers[0].name)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=300, help="per drain, seconds")
    parser.add_argument("--only", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--store", choices=STORES, default="redis", help="what port is")
    parser.add_argument("--amqp-port", type=int, help="--store rabbitmq: the private node")
    parser.add_argument("--rabbitmq-node", help="--store rabbitmq: its node name (rabbitmqctl)")
    parser.add_argument("--rabbitmq-home", help="--store rabbitmq: its HOME (Erlang cookie)")
    opts = parser.parse_args()
    if opts.store in ("redis", "rabbitmq") and opts.port == SHARED_PORT:
        raise SystemExit("refusing the shared Redis")
    if opts.store == "postgres" and opts.port == 5432:
        raise SystemExit("refusing the shared PostgreSQL")
    if opts.store == "rabbitmq":
        if not (opts.amqp_port and opts.rabbitmq_node and opts.rabbitmq_home):
            raise SystemExit("--store rabbitmq needs --amqp-port, --rabbitmq-node, --rabbitmq-home")
        if opts.amqp_port == 5672:
            raise SystemExit("refusing the shared RabbitMQ")
        os.environ["BENCH_AMQP_PORT"] = str(opts.amqp_port)  # the peer's and its workers'
        global _rabbitmq
        _rabbitmq = (opts.rabbitmq_node, opts.rabbitmq_home)
    global _store
    _store = opts.store
    peer = next(p for p in peers if p.name == opts.variant)
    out: dict[str, float] = {}
    n, port = opts.jobs, opts.port
    prepare = getattr(peer, "prepare", None)  # once, before any phase (a schema to install)
    if prepare is not None:
        prepare(port)
    if "enqueue" in opts.only:
        _flush(port)
        out["enqueue"] = _rate(n, peer.enqueue_single(port, n))
        extra = getattr(peer, "extra", None)  # figures only one system has (dromos's aenqueue)
        if extra is not None:
            _flush(port)
            out.update(extra(port, n))
    if "bulk" in opts.only:
        _flush(port)
        seconds = peer.enqueue_bulk(port, n, opts.batch)
        if seconds is not None:
            out["enqueue_many"] = _rate(n, seconds)
    if "drain" in opts.only:
        for procs in (1, 2):
            out.update(_drain(peer, port, n, procs, opts.timeout))
    if "latency" in opts.only:
        out.update(_latency(peer, port, opts.samples))
    _flush(port)
    print(json.dumps(out))
