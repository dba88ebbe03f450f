"""Where the time goes on Redis: the bulk enqueue and one worker's drain, in process.

    .venv/bin/python bench/profile_redis.py --jobs 20000 [--top 25] [--concurrency 32]

Runs against a private ``redis-server`` (started and stopped by pid, as in redis_bench.py).
For each scenario it prints: the wall time; the server's side from ``INFO commandstats``
and ``INFO cpu`` (script calls, i.e. round trips, and the microseconds Redis spent running
them); the broker's script calls as the client saw them (count, jobs per call, seconds
awaited); and cProfile of the event loop's thread (dromos's Python). The profiler slows
Python down (about 2x), so read the shares, not the rates; the rates come from
``redis_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _server_stats(client: Any) -> dict[str, float]:
    """Cumulative script calls and microseconds, every command's calls, and the server's CPU."""
    stats = client.info("commandstats")
    cpu = client.info("cpu")
    calls = sum(v["calls"] for v in stats.values())
    scripts = {k: v for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")}
    return {
        "calls": calls,
        "script_calls": sum(v["calls"] for v in scripts.values()),
        "script_usec": sum(v["usec"] for v in scripts.values()),
        "cpu": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
    }


def _wrap_calls(broker: Any, seen: dict[str, Counter[str]]) -> None:
    """Count the broker's script calls, their argument counts and the time awaited in them."""
    original = broker._call

    async def timed(script: str, queue: str, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await original(script, queue, *args)
        finally:
            seen["calls"][script] += 1
            seen["args"][script] += len(args)
            seen["seconds"][script] += time.perf_counter() - t0  # type: ignore[assignment]

    broker._call = timed


def _report(
    title: str,
    wall: float,
    n: int,
    before: dict[str, float],
    after: dict[str, float],
    seen: dict[str, Counter[str]],
    prof: cProfile.Profile,
    top: int,
) -> None:
    d = {k: after[k] - before[k] for k in before}
    print(f"\n## {title}: {n:,} jobs, {wall:.2f}s wall in the profiled run ({n / wall:,.0f}/s)")
    print(
        f"  server: {d['calls']:,.0f} commands ({d['calls'] / n:.3f} a job), of which "
        f"{d['script_calls']:,.0f} script calls; scripts ran {d['script_usec'] / 1e6:.2f}s "
        f"({d['script_usec'] / n:.1f} us a job, {d['script_usec'] / 1e6 / wall:.0%} of wall); "
        f"server CPU {d['cpu']:.2f}s"
    )
    for script, calls in seen["calls"].most_common():
        awaited = float(seen["seconds"][script])
        print(
            f"  client: {script}: {calls:,} calls, {seen['args'][script] / calls:.0f} args a call,"
            f" {awaited:.2f}s awaited ({awaited / wall:.0%} of wall)"
        )
    stats = pstats.Stats(prof, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--only", nargs="+", choices=["bulk", "drain"], default=["bulk", "drain"])
    opts = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import bench_app  # type: ignore[import-not-found]
    import dromos
    from redis_bench import PrivateRedis, _client  # type: ignore[import-not-found]

    server = PrivateRedis("redis-server")
    try:
        client = _client(server.port)
        url = f"redis://127.0.0.1:{server.port}/0?prefix=profile"
        n = opts.jobs

        async def scenario() -> None:
            app = dromos.App("bench", url)
            noop = app.task(name="noop")(bench_app.noop.func)
            broker = await app.abroker()
            seen: dict[str, Counter[str]] = {"calls": Counter(), "args": Counter()}
            seen["seconds"] = Counter()
            _wrap_calls(broker, seen)
            if "bulk" in opts.only:
                prof = cProfile.Profile()
                before = _server_stats(client)
                t0 = time.perf_counter()
                prof.enable()
                for start in range(0, n, 1000):
                    await noop.aenqueue_many([(i,) for i in range(start, min(n, start + 1000))])
                prof.disable()
                wall = time.perf_counter() - t0
                after = _server_stats(client)
                title = "bulk enqueue (enqueue_many of 1,000)"
                _report(title, wall, n, before, after, seen, prof, opts.top)
            else:
                for start in range(0, n, 1000):
                    await noop.aenqueue_many([(i,) for i in range(start, min(n, start + 1000))])
            if "drain" in opts.only:
                for counter in seen.values():
                    counter.clear()
                worker = app.worker(concurrency=opts.concurrency)
                done = "{profile:default}:succeeded"
                prof = cProfile.Profile()
                before = _server_stats(client)
                t0 = time.perf_counter()
                prof.enable()
                run = asyncio.create_task(worker.run())
                state = await broker._state()  # type: ignore[attr-defined]
                for _ in range(6000):  # at most 10 minutes
                    if await state.client.zcard(done) >= n:
                        break
                    await asyncio.sleep(0.1)
                wall = time.perf_counter() - t0
                worker.stop()
                await run
                prof.disable()
                after = _server_stats(client)
                title = f"drain, one in-process worker (concurrency {opts.concurrency})"
                _report(title, wall, n, before, after, seen, prof, opts.top)
            await app.aclose()

        asyncio.run(scenario())
    finally:
        server.stop()


if __name__ == "__main__":
    main()
