"""``make bench``: dromos on its embedded SQLite broker, and huey's SqliteHuey beside it.

Every figure is measured on a fresh SQLite file in a temporary directory, with status
tracking on (dromos always keeps status and results; huey keeps results), at
``synchronous=FULL`` for both unless ``--synchronous normal`` is given. Each run of a
system happens in its own child process so that runs do not share caches or threads; the
median of ``--repeat`` runs is printed with the min-max range, and everything is written as
JSON to ``bench/results/``. See docs/benchmarks.md for what each figure means.

    .venv/bin/python bench/sqlite_bench.py --jobs 20000 --repeat 3
    .venv/bin/python bench/sqlite_bench.py --no-huey --only drain
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    _fmt,
    _latencies,
    _rate,
    _span_rate,
    _stop,
    _summary,
    _wait_until,
    measure_enqueue,
    write_results,
)

HERE = Path(__file__).resolve().parent
HUEY_VENV = HERE / ".venvs" / "huey"
HUEY_SPEC = "huey>=2.5"
# huey's consumer, as its docs suggest for many small I/O-light tasks: a few worker threads.
HUEY_CONSUMER_ARGS = ["-w", "4", "-k", "thread", "-q"]
HUEY_CONSUMER_ARGS_2P = ["-w", "2", "-k", "process", "-q"]

METRICS = [
    ("enqueue", "single enqueue, blocking `enqueue(i)`", "jobs/s"),
    ("aenqueue", "single enqueue, `await aenqueue(i)`", "jobs/s"),
    ("enqueue_many", "bulk enqueue, `enqueue_many` of 1,000", "jobs/s"),
    ("drain_1p", "drain, 1 worker process", "jobs/s"),
    ("drain_2p", "drain, 2 worker processes", "jobs/s"),
    ("latency_p50", "round trip enqueue + result(), p50", "ms"),
    ("latency_p99", "round trip enqueue + result(), p99", "ms"),
]
PHASES = ("enqueue", "bulk", "drain", "latency")


# -- helpers shared by both systems ---------------------------------------------------------
def _count(db: str, sql: str) -> int:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:  # table not created yet
        return 0
    finally:
        conn.close()


# -- dromos (runs in a child process of the benchmark, in dromos's venv) ----------------------
def _dromos_worker(env: dict[str, str], procs: int, concurrency: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "dromos", "worker", "bench_app:app", "-c", str(concurrency),
            "-q", "default", "--log-level", "warning"]  # fmt: skip
    if procs > 1:
        argv += ["-p", str(procs)]
    return subprocess.Popen(argv, cwd=HERE, env=env)


def _dromos_drain(
    app: Any, task: Any, db: str, env: dict[str, str], n: int, procs: int, conc: int
) -> float:
    for start in range(0, n, 1000):
        task.enqueue_many([(i,) for i in range(start, min(n, start + 1000))])
    name = task.name
    worker = _dromos_worker(env, procs, conc)
    try:
        done = f"SELECT count(*) FROM dromos_jobs WHERE state = 'succeeded' AND task = '{name}'"
        _wait_until(lambda: _count(db, done) >= n, 600, f"{n} jobs to drain", worker)
    finally:
        _stop(worker)
    conn = sqlite3.connect(db)
    times = [r[0] for r in conn.execute("SELECT finished_at FROM dromos_jobs WHERE state = "
                                        f"'succeeded' AND task = '{task.name}'")]  # fmt: skip
    conn.close()
    return _span_rate(times)


def dromos_child(opts: argparse.Namespace) -> dict[str, float]:
    tmp = Path(opts.tmp)
    out: dict[str, float] = {}
    suffix = "" if opts.synchronous == "full" else f"?synchronous={opts.synchronous}"

    def fresh(name: str) -> tuple[Any, Any, str, dict[str, str]]:
        """A new app (and broker) on a new file, with bench_app's tasks registered on it."""
        import dromos

        sys.path.insert(0, str(HERE))
        import bench_app  # type: ignore[import-not-found]

        db = str(tmp / f"dromos-{name}.db")
        url = f"sqlite:///{db}{suffix}"
        os.environ["DROMOS_BROKER"] = url  # for the worker processes, and it wins over App()
        app = dromos.App("bench", url)
        for t in (bench_app.noop, bench_app.noop_sync):
            app.task(name=t.name)(t.func)
        return app, app.tasks[opts.task], db, dict(os.environ)

    n = opts.jobs
    measure_enqueue(fresh, n, opts.batch, opts.only, out)
    if "drain" in opts.only:
        for procs, key in ((1, "drain_1p"), (2, "drain_2p")):
            app, task, db, env = fresh(f"drain{procs}")
            out[key] = _dromos_drain(app, task, db, env, n, procs, opts.concurrency)
            app.close()
    if "latency" in opts.only:
        app, task, _, env = fresh("latency")
        worker = _dromos_worker(env, 1, opts.concurrency)
        try:
            task.enqueue(-1).result(timeout=60)  # the worker is up and idle
            time.sleep(0.5)
            out.update(_latencies(lambda i: task.enqueue(i).result(timeout=60), opts.samples))
        finally:
            _stop(worker)
            app.close()
    return out


# -- huey (runs in huey's own venv, driving huey_app.py) -----------------------------------
def ensure_huey() -> Path | None:
    python = HUEY_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {HUEY_VENV} and installing {HUEY_SPEC} ...", file=sys.stderr)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(HUEY_VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", HUEY_SPEC], check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"huey unavailable ({exc}); measuring dromos alone", file=sys.stderr)
            return None
    return python


def huey_child(opts: argparse.Namespace) -> dict[str, float]:
    """Runs under huey's venv python: this module imports nothing from dromos at top level."""
    tmp = Path(opts.tmp)
    sys.path.insert(0, str(HERE))
    out: dict[str, float] = {}
    bindir = Path(sys.executable).parent
    consumer_bin = str(next(p for p in (bindir / "huey_consumer", bindir / "huey_consumer.py")
                            if p.exists()))  # fmt: skip

    def fresh(name: str) -> tuple[Any, str, dict[str, str]]:
        db = str(tmp / f"huey-{name}.db")
        os.environ["BENCH_HUEY_DB"] = db
        for mod in ("huey_app",):
            sys.modules.pop(mod, None)
        import huey_app  # type: ignore[import-not-found]

        return huey_app, db, {**os.environ, "BENCH_HUEY_DB": db}

    def consumer(env: dict[str, str], args: list[str]) -> subprocess.Popen[bytes]:
        argv = [sys.executable, consumer_bin, "huey_app.huey", *args]
        return subprocess.Popen(argv, cwd=HERE, env=env)

    n = opts.jobs
    if "enqueue" in opts.only:
        mod, _, _ = fresh("single")
        mod.noop(-1)
        t0 = time.perf_counter()
        for i in range(n):
            mod.noop(i)
        out["enqueue"] = _rate(n, time.perf_counter() - t0)
    if "drain" in opts.only:
        for key, args in (("drain_1p", HUEY_CONSUMER_ARGS), ("drain_2p", HUEY_CONSUMER_ARGS_2P)):
            mod, db, env = fresh(key)
            for i in range(n):
                mod.noop(i)
            proc = consumer(env, args)
            try:
                done = "SELECT count(*) FROM kv"
                _wait_until(lambda db=db, done=done: _count(db, done) >= n, 600, "huey drain", proc)
            finally:
                _stop(proc, signal.SIGINT)  # graceful: the consumer exits and writes its times
            times = [float(t) for f in tmp.glob(Path(db).name + ".times.*")
                     for t in f.read_text().split()]  # fmt: skip
            out[key] = _span_rate(times)
    if "latency" in opts.only:
        mod, _, env = fresh("latency")
        proc = consumer(env, HUEY_CONSUMER_ARGS)
        try:
            mod.noop(-1).get(blocking=True, timeout=60)
            time.sleep(0.5)
            out.update(
                _latencies(lambda i: mod.noop(i).get(blocking=True, timeout=60), opts.samples)
            )
        finally:
            _stop(proc, signal.SIGINT)
    return out


# -- the parent: repeat, summarise, print, save ---------------------------------------------
def _child(python: Path | str, system: str, opts: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{system}-") as tmp:
        argv = [str(python), str(Path(__file__).resolve()), "--child", system, "--tmp", tmp,
                "--jobs", str(opts.jobs), "--batch", str(opts.batch), "--samples",
                str(opts.samples), "--concurrency", str(opts.concurrency), "--synchronous",
                opts.synchronous, "--task", opts.task, "--only", *opts.only]  # fmt: skip
        proc = subprocess.run(argv, check=True, stdout=subprocess.PIPE, cwd=HERE)
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def _versions(huey_python: Path | None) -> dict[str, str]:
    import dromos

    found = {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "dromos": getattr(dromos, "__version__", "?"),
    }
    if huey_python is not None:
        cmd = "import huey; print(huey.__version__)"
        found["huey"] = subprocess.run([str(huey_python), "-c", cmd], check=True,
                                       capture_output=True, text=True).stdout.strip()  # fmt: skip
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per figure (N)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per system; medians shown")
    parser.add_argument("--batch", type=int, default=1000, help="jobs per enqueue_many call")
    parser.add_argument("--samples", type=int, default=200, help="round trips for latency")
    parser.add_argument("--concurrency", type=int, default=32, help="dromos worker -c")
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    parser.add_argument("--task", choices=["noop", "noop_sync"], default="noop",
                        help="async no-op, or the plain-def one (run in threads)")  # fmt: skip
    parser.add_argument("--only", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--no-huey", action="store_true", help="measure dromos alone")
    parser.add_argument("--child", choices=["dromos", "huey"], help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    opts = parser.parse_args()

    if opts.child:
        result = dromos_child(opts) if opts.child == "dromos" else huey_child(opts)
        print(json.dumps(result))
        return

    huey_python = None if opts.no_huey else ensure_huey()
    runs: dict[str, list[dict[str, float]]] = {"dromos": []}
    if huey_python is not None:
        runs["huey"] = []
    for r in range(opts.repeat):
        for system in runs:
            python = sys.executable if system == "dromos" else huey_python
            assert python is not None
            print(f"run {r + 1}/{opts.repeat}: {system} ...", file=sys.stderr, flush=True)
            runs[system].append(_child(python, system, opts))
    summary = {system: _summary(rs) for system, rs in runs.items()}

    header = f"| figure (N = {opts.jobs:,}, median of {opts.repeat}) | dromos | "
    if "huey" in summary:
        header += "huey SqliteHuey | dromos / huey |"
    print()
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for key, label, unit in METRICS:
        d = summary["dromos"].get(key)
        if d is None:
            continue
        row = f"| {label} ({unit}) | {_fmt(d['median'], unit)} "
        row += f"({_fmt(d['min'], unit)}-{_fmt(d['max'], unit)}) |"
        if "huey" in summary:
            h = summary["huey"].get(key)
            if h is None:
                row += " n/a | |"
            else:
                ratio = d["median"] / h["median"]
                if unit == "ms":
                    ratio = h["median"] / d["median"]  # higher is better for dromos as well
                row += f" {_fmt(h['median'], unit)} ({_fmt(h['min'], unit)}-"
                row += f"{_fmt(h['max'], unit)}) | {ratio:.2f}x |"
        print(row)
    if "huey" in summary:
        print("\nratios: higher is better for dromos (for latency, huey's ms / dromos's ms)")

    write_results(
        "sqlite",
        {
            "options": {k: v for k, v in vars(opts).items() if k not in ("child", "tmp")},
            "versions": _versions(huey_python),
            "huey_consumer": {"drain_1p": HUEY_CONSUMER_ARGS, "drain_2p": HUEY_CONSUMER_ARGS_2P},
            "summary": summary,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
