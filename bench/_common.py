"""Helpers shared by the benchmarks (``*_bench.py`` and the peers' driver).

Imports nothing from dromos: huey's child process of ``sqlite_bench.py`` uses it too.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def _span_rate(times: list[float]) -> float:
    """Jobs/s from the first completion to the last.

    Counts the jobs that finished after the first completion time: dromos stamps a whole
    settled batch with one time, so the first batch is part of the start, not the span.
    """
    first, last = min(times), max(times)
    return _rate(sum(1 for t in times if t > first), last - first)


def _wait_until(
    check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the consumer exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _latencies(call: Callable[[int], object], n: int) -> dict[str, float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        samples.append((time.perf_counter() - t0) * 1000.0)
    samples.sort()
    return {
        "latency_p50": statistics.median(samples),
        "latency_p99": samples[min(n - 1, round(0.99 * (n - 1)))],
        "latency_max": samples[-1],
        "latency_slow": float(sum(1 for s in samples if s >= 100.0)),  # round trips >= 100 ms
    }


def _summary(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = {k for run in runs for k in run}
    return {
        k: {
            "median": statistics.median(v),
            "min": min(v),
            "max": max(v),
        }
        for k in sorted(keys)
        if (v := [run[k] for run in runs if k in run])
    }


def _fmt(value: float, unit: str, ms_digits: int = 1) -> str:
    return f"{value:,.{ms_digits}f}" if unit == "ms" else f"{value:,.0f}"


def _cell(s: dict[str, float] | None, unit: str, ms_digits: int = 1) -> str:
    """A table cell: the median, then the min-max range."""
    if s is None:
        return "n/a"
    fmt = [_fmt(s[k], unit, ms_digits) for k in ("median", "min", "max")]
    return f"{fmt[0]} ({fmt[1]}-{fmt[2]})"


def _ratio(a: dict[str, float] | None, b: dict[str, float] | None, higher: bool) -> str:
    """dromos (``a``) against a peer (``b``), above 1 when dromos is better: a rate's ratio
    (``higher``), or the inverse for a latency or a size."""
    if a is None or b is None or not a["median"] or not b["median"]:
        return "n/a"
    r = a["median"] / b["median"] if higher else b["median"] / a["median"]
    return f"{r:.2f}x"


def _load() -> str:
    """The load average (1, 5, 15 minutes), as the run's record keeps it."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=BENCH.parent, capture_output=True, text=True)
    return done.stdout.strip()


def work_tree_source() -> dict[str, str]:
    """Which dromos the work tree holds: HEAD, and how many files under ``src/`` differ from
    it (other work may commit or edit during a run: read it at the start and at the end)."""
    changed = _git("status", "--porcelain", "--", "src")
    return {
        "commit": _git("rev-parse", "--short", "HEAD"),
        "from": "work tree",
        "src_changed_files": str(len(changed.splitlines())) if changed else "0",
    }


def report(
    kind: str,
    runs: dict[str, list[dict[str, float]]],
    tables: Callable[[dict[str, dict[str, dict[str, float]]]], list[str]],
    record: dict[str, Any],
    load_start: str,
) -> None:
    """The end of a run: the medians as Markdown tables, the load average, and the record
    (``record`` and these) in ``bench/results/``."""
    summary = {name: _summary(got) for name, got in runs.items() if any(got)}
    lines = tables(summary)
    load_end = _load()
    print()
    print("\n".join(lines))
    print(f"\nload average at the start {load_start}, at the end {load_end}")
    write_results(kind, {
        **record,
        "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"load_start": load_start, "load_end": load_end},
        "summary": summary,
        "table": lines,
        "runs": runs,
    })  # fmt: skip


def write_results(kind: str, record: dict[str, Any]) -> Path:
    """Write a run's record to ``bench/results/<kind>-<date>-<time>.json``, after what every
    record holds (when, the command, the machine); print and return where."""
    machine = {"nproc": os.cpu_count(), "platform": platform.platform()}
    full = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **record,
        "machine": {**machine, **record.get("machine", {})},
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(full, indent=2))
    print(f"\nwritten to {path.relative_to(BENCH.parent)}")
    return path


def measure_enqueue(
    fresh: Callable[[str], tuple[Any, Any, Any, dict[str, str]]],
    n: int,
    batch: int,
    only: list[str],
    out: dict[str, float],
) -> None:
    """Time single (blocking and ``await``) and bulk enqueue of ``n`` jobs into ``out``.

    The same for every broker: ``fresh(name)`` gives a new app on an empty store. A first
    call connects (and loads scripts, opens files) outside the timing.
    """
    if "enqueue" in only:
        app, task, _, _ = fresh("single")
        task.enqueue(-1)
        t0 = time.perf_counter()
        for i in range(n):
            task.enqueue(i)
        out["enqueue"] = _rate(n, time.perf_counter() - t0)

        async def single() -> float:
            await task.aenqueue(-1)  # this loop's connection
            t0 = time.perf_counter()
            for i in range(n):
                await task.aenqueue(i)
            return _rate(n, time.perf_counter() - t0)

        out["aenqueue"] = asyncio.run(single())
        app.close()
    if "bulk" in only:
        app, task, _, _ = fresh("bulk")
        task.enqueue(-1)
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            task.enqueue_many([(i,) for i in range(start, min(n, start + batch))])
        out["enqueue_many"] = _rate(n, time.perf_counter() - t0)
        app.close()
