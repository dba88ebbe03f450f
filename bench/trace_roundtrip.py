"""Where one round trip's time goes on Redis: a timeline of the caller's and the worker's steps.

    .venv/bin/python bench/trace_roundtrip.py [--samples 300] [--redis-server redis-server]

A private ``redis-server`` (as in redis_bench.py), a real worker process (``dromos worker
bench_app:app -c 32``, with uvloop when installed) and, in this process, ``enqueue(i).result()``
one at a time, as the benchmark's round trip does. Both processes mark each step with the
system-wide monotonic clock (``time.perf_counter_ns``: one clock for every process here) by
wrapping broker and worker methods from outside, so ``src/`` is measured as it is:

- caller: enqueue sent / returned (``enqueue_blocking``), wait sent / woken (``wait_blocking``:
  the ``await`` script and ``BLPOP`` in one pipeline, until the status is popped);
- worker: the handed-over job read from the work channel (``_handed_over``), the claim that
  takes it (``claim``), the task's run (``Worker._attempt``: argument load, the task body,
  the result's encoding), the settle (``settle``, until its script answered).

It prints the round trip's p50 and p99, the step order seen most often, the median time of
each step of that order (time since the previous mark, so each line is the gap between two
marks), the server's time per command (``INFO commandstats``) and, from a second series of
round trips with every command in the ``SLOWLOG``, the server's time of each script call by
script (its own commands included). The wrappers add a few
microseconds a mark; the step durations are for finding where time goes, the round-trip
figure for comparing is ``redis_bench.py --only latency``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dromos.brokers.redis import RedisBroker

HERE = Path(__file__).resolve().parent
_trace: Any = None  # the open trace file (line-buffered), in both processes


def _mark(label: str) -> None:
    _trace.write(f"{os.getpid()} {time.perf_counter_ns()} {label}\n")


def _wrap(owner: type, name: str, before: str, after: str | None) -> None:
    """Mark ``before`` on entry to ``owner.name`` and ``after`` (if any) when it returns."""
    fn = getattr(owner, name)
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def marked_async(*args: Any, **kwargs: Any) -> Any:
            _mark(before)
            try:
                return await fn(*args, **kwargs)
            finally:
                if after:
                    _mark(after)

        setattr(owner, name, marked_async)
        return

    @functools.wraps(fn)
    def marked(*args: Any, **kwargs: Any) -> Any:
        _mark(before)
        try:
            return fn(*args, **kwargs)
        finally:
            if after:
                _mark(after)

    setattr(owner, name, marked)


def _open(path: str) -> None:
    global _trace
    _trace = open(path, "a", buffering=1)  # noqa: SIM115 (open for the process's life)


def _worker(path: str) -> None:
    """The worker process: the wrappers, then the ``dromos worker`` command itself."""
    from dromos.cli import main
    from dromos.worker.runtime import Worker

    _open(path)
    _wrap(RedisBroker, "_handed_over", "W handed over", None)
    _wrap(RedisBroker, "claim", "W claim", "W claimed")
    _wrap(Worker, "_attempt", "W task start", "W task end")
    _wrap(RedisBroker, "settle", "W settle sent", "W settled")
    sys.argv = ["dromos", "worker", "bench_app:app", "-c", "32", "-q", "default",
                "--log-level", "warning"]  # fmt: skip
    main()


def _timeline(path: str, caller: int) -> tuple[tuple[str, ...], dict[int, list[float]], int]:
    """The commonest order of marks within a round trip, the gaps (us) of each step in the
    round trips that followed it, and how many round trips did."""
    trips: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] = []
    marks = [line.split(" ", 2) for line in Path(path).read_text().splitlines()]
    for pid, ns, label in sorted(marks, key=lambda m: int(m[1])):  # two processes wrote
        if label == "C round trip":
            current = []
        current.append((int(ns), label))
        if label == "C result" and int(pid) == caller:
            trips.append(current)
    orders = collections.Counter(tuple(label for _, label in t) for t in trips)
    order, count = orders.most_common(1)[0]
    gaps: dict[int, list[float]] = collections.defaultdict(list)
    for trip in trips:
        if tuple(label for _, label in trip) == order:
            for k in range(1, len(trip)):
                gaps[k].append((trip[k][0] - trip[k - 1][0]) / 1000)
    return order, gaps, count


def _scripts(slow: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The server's time of each script call (from SLOWLOG), by script name."""
    import hashlib

    from dromos.brokers.redis_scripts import scripts

    names = {}
    for file in ("redis.lua", "redis_events.lua", "redis_parking.lua"):
        for name, text in scripts(False, file).items():
            names[hashlib.sha1(text.encode()).hexdigest()] = name
    out: dict[str, list[float]] = collections.defaultdict(list)
    for entry in slow:
        words = entry["command"].split()
        if words and words[0].upper() == b"EVALSHA" and len(words) > 1:
            out[names.get(words[1].decode(), words[1].decode()[:8])].append(entry["duration"])
    return dict(sorted(out.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--redis-server", default="redis-server")
    parser.add_argument("--worker", metavar="TRACE", help=argparse.SUPPRESS)  # the child
    opts = parser.parse_args()
    sys.path.insert(0, str(HERE))
    if opts.worker:
        _worker(opts.worker)
        return
    from redis_bench import PrivateRedis, _client  # type: ignore[import-not-found]

    server = PrivateRedis(opts.redis_server)
    handle, trace = tempfile.mkstemp(prefix="dromos-trace-", suffix=".txt")
    os.close(handle)
    url = f"redis://127.0.0.1:{server.port}/0?prefix=trace"
    env = {**os.environ, "DROMOS_BROKER": url}
    os.environ["DROMOS_BROKER"] = url
    worker = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", trace],
        env=env,
        cwd=HERE,
    )
    try:
        import bench_app  # type: ignore[import-not-found]

        bench_app.noop.enqueue(-1).result(timeout=60)  # the worker is up, the broker open
        time.sleep(0.5)
        _open(trace)
        _wrap(RedisBroker, "enqueue_blocking", "C enqueue sent", "C enqueued")
        _wrap(RedisBroker, "wait_blocking", "C wait sent", "C woken")
        client = _client(server.port)
        client.config_resetstat()
        trips = []
        for i in range(opts.samples):
            _mark("C round trip")
            t0 = time.perf_counter()
            bench_app.noop.enqueue(i).result(timeout=60)
            trips.append((time.perf_counter() - t0) * 1000)
            _mark("C result")
        stats = client.info("commandstats")
        # Then as many again with every command logged with its duration (a script's own
        # commands too), apart: the log's upkeep slows each command a little.
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 40 * opts.samples + 1000)
        client.slowlog_reset()
        for i in range(opts.samples):
            bench_app.noop.enqueue(i).result(timeout=60)
        slow = client.slowlog_get(40 * opts.samples + 1000)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        server.stop()
    trips.sort()
    print(f"round trip, {opts.samples} samples: p50 {statistics.median(trips):.3f} ms, "
          f"p99 {trips[int(len(trips) * 0.99)]:.3f} ms (marks included)\n")  # fmt: skip
    order, gaps, count = _timeline(trace, os.getpid())
    os.unlink(trace)
    print(
        f"the commonest order ({count} of {opts.samples} round trips); median us since the "
        "previous mark (C: caller, W: worker):\n"
    )
    print("| step | from | us |\n|---|---|---|")
    for k in range(1, len(order)):
        print(f"| {order[k]} | {order[k - 1]} | {statistics.median(gaps[k]):.0f} |")
    print("\n| script (server time, the commands it ran included) | calls | median us | p90 us |")
    print("|---|---|---|---|")
    for name, spent in _scripts(slow).items():
        spent.sort()
        print(f"| {name} | {len(spent)} | {statistics.median(spent):.0f} | "
              f"{spent[int(len(spent) * 0.9)]:.0f} |")  # fmt: skip
    print("\n| server command | calls | us a call |\n|---|---|---|")
    for name, row in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:12]:
        if name.startswith("cmdstat_config") or name.startswith("cmdstat_info"):
            continue
        print(f"| {name.removeprefix('cmdstat_')} | {row['calls']} | {row['usec_per_call']:.1f} |")


if __name__ == "__main__":
    main()
