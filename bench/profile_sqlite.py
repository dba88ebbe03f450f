"""Where the time goes: cProfile of the bulk enqueue and of one worker's drain, in process.

    .venv/bin/python bench/profile_sqlite.py --jobs 20000 [--top 20] [--synchronous normal]

cProfile sees only the thread it runs in (the event loop, where dromos's Python runs), so the
SQLite thread is timed apart: each broker method is wrapped and its time in that thread
summed. The profiler slows Python down (about 2x), so read the shares, not the rates; the
rates come from ``sqlite_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _time_broker_thread(broker: Any, spent: Counter[str]) -> None:
    """Wrap the SQLite broker's thread-side methods to sum the seconds spent in each."""
    for name in ("_enqueue", "_claim", "_settle", "_extend", "_next_due", "_idle_probe"):
        fn = getattr(broker, name, None)
        if fn is None:
            continue

        def timed(*args: Any, _fn: Callable[..., Any] = fn, _name: str = name) -> Any:
            t0 = time.perf_counter()
            try:
                return _fn(*args)
            finally:
                spent[_name] += time.perf_counter() - t0

        setattr(broker, name, timed)


def _report(title: str, prof: cProfile.Profile, wall: float, spent: Counter[str], top: int) -> None:
    print(f"\n## {title}: {wall:.2f}s wall in the profiled run")
    for name, seconds in spent.most_common():
        print(f"  SQLite thread, {name}: {seconds:.2f}s ({seconds / wall:.0%} of wall)")
    stats = pstats.Stats(prof, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    opts = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import bench_app  # type: ignore[import-not-found]
    import dromos

    tmp = tempfile.mkdtemp(prefix="bench-profile-")
    app = dromos.App("bench", f"sqlite:///{tmp}/profile.db?synchronous={opts.synchronous}")
    noop = app.task(name="noop")(bench_app.noop.func)
    n = opts.jobs

    async def scenario() -> None:
        broker = await app.abroker()
        spent: Counter[str] = Counter()
        _time_broker_thread(broker, spent)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        for start in range(0, n, 1000):
            await noop.aenqueue_many([(i,) for i in range(start, min(n, start + 1000))])
        prof.disable()
        _report("bulk enqueue (enqueue_many of 1,000)", prof, time.perf_counter() - t0, spent,
                opts.top)  # fmt: skip

        spent.clear()
        worker = app.worker(concurrency=32)
        prof = cProfile.Profile()

        async def stop_when_done() -> None:
            while worker.counts["succeeded"] < n:  # noqa: ASYNC110 - a counter, not an event
                await asyncio.sleep(0.01)
            worker.stop()

        t0 = time.perf_counter()
        prof.enable()
        await asyncio.gather(worker.run(), stop_when_done())
        prof.disable()
        _report("drain (one worker, -c 32)", prof, time.perf_counter() - t0, spent, opts.top)
        await app.aclose()

    asyncio.run(scenario())


if __name__ == "__main__":
    main()
