"""Where the CPU goes in a drain on Redis: per job, each worker process and the server.

    .venv/bin/python bench/cpu_redis.py [--jobs 40000] [--processes 1 2] [--repeat 2]

Why two processes cannot double one here: every process, the worker's and the server's,
shares the machine's 2 cores. A drain with one process is bound by that worker's CPU per job
(W, on one core; the server runs beside it on the other); with two it is bound by all the
CPU per job, the workers' and the server's (W + R, on both cores). So two processes reach at
most 2W / (W + R) times one, whatever the queue does. This prints W and R as measured (from
``/proc``: user + system time, over the span from the first completion to the last), the
server's share per command (``INFO commandstats``: a script's time includes the commands it
ran, which are also counted on their own), and, for scale, what the benchmark's task body
costs by itself: one ``INCR`` through redis-py's asyncio client, as every worker runs it.

Runs the real worker (``dromos worker bench/peers/dromos_tasks:app -c 32``, ``-p N``) against a
private ``redis-server`` (started and stopped by pid, as in ``redis_bench.py``); the jobs are
queued with ``enqueue_many`` before the worker starts. No peer runs here: the peers' rates
come from ``redis_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _drain(port: int, jobs: int, processes: int, client: Any) -> None:
    os.environ.update({"DROMOS_BROKER": f"redis://127.0.0.1:{port}/0?prefix=bench",
                       "BENCH_REDIS_PORT": str(port)})  # fmt: skip
    import dromos_tasks  # type: ignore[import-not-found]
    from _driver import process_tree  # type: ignore[import-not-found]

    client.flushall()  # the private server
    for start in range(0, jobs, 1000):
        dromos_tasks.noop.enqueue_many([(i,) for i in range(start, min(jobs, start + 1000))])
    argv = [sys.executable, "-m", "dromos", "worker", "dromos_tasks:app", "-c", "32",
            "-q", "default", "--log-level", "warning"]  # fmt: skip
    if processes > 1:
        argv += ["-p", str(processes)]
    worker = subprocess.Popen(argv, cwd=PEERS, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 600
        while int(client.get("bench:count") or 0) == 0:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the worker did not start")
            time.sleep(0.001)
        client.config_resetstat()
        pids = process_tree(worker.pid)  # with -p: the supervisor (idle), then its workers
        t0, first = time.perf_counter(), int(client.get("bench:count"))
        cpu0 = {p: _cpu_seconds(p) for p in pids}
        server0 = _cpu_seconds(client.info("server")["process_id"])
        while int(client.get("bench:count") or 0) < jobs and time.monotonic() < deadline:
            time.sleep(0.002)
        t1, last = time.perf_counter(), int(client.get("bench:count"))
        cpu1 = {p: _cpu_seconds(p) for p in pids}
        server1 = _cpu_seconds(client.info("server")["process_id"])
        stats = client.info("commandstats")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    n = last - first
    workers = [(cpu1[p] - cpu0[p]) / n * 1e6 for p in pids]
    w, r = sum(workers), (server1 - server0) / n * 1e6
    print(f"\n## {processes} process(es): {n / (t1 - t0):,.0f} jobs/s over {n:,} jobs")
    print(f"  CPU per job (us): worker process(es) {' + '.join(f'{x:.0f}' for x in workers)}"
          f"; redis-server {r:.0f}; all {w + r:.0f}")  # fmt: skip
    if processes == 1:
        print(f"  two processes can reach at most 2W / (W + R) = {2 * w / (w + r):.2f}x this")
    print("  server, per job (us): command (calls a job, us a call)")
    for name, v in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:8]:
        print(f"    {v['usec'] / n:7.2f}  {name.removeprefix('cmdstat_'):24s} "
              f"({v['calls'] / n:.3f}, {v['usec_per_call']:.1f})")  # fmt: skip


def _task_body(port: int, calls: int = 20_000) -> None:
    """The benchmark task's INCR alone, 32 at a time on one asyncio client (uvloop)."""
    import redis.asyncio as aioredis

    async def run() -> float:
        client = aioredis.Redis(host="127.0.0.1", port=port)
        try:
            c0 = time.process_time()
            for _ in range(calls // 32):
                await asyncio.gather(*(client.incr("cpu:probe") for _ in range(32)))
            return (time.process_time() - c0) / calls * 1e6
        finally:
            await client.aclose()

    try:
        import uvloop

        per_call = uvloop.run(run())
    except ImportError:
        per_call = asyncio.run(run())
    print(f"\nthe task body alone: one INCR through redis-py's asyncio client, 32 at a time: "
          f"{per_call:.0f} us of client CPU a call")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=40_000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=2)
    opts = parser.parse_args()
    sys.path[:0] = [str(HERE), str(PEERS)]
    from redis_bench import PrivateRedis, _client  # type: ignore[import-not-found]

    server = PrivateRedis("redis-server")
    try:
        client = _client(server.port)
        for _ in range(opts.repeat):
            for processes in opts.processes:
                _drain(server.port, opts.jobs, processes, client)
        _task_body(server.port)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
