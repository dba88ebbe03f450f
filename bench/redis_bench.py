"""dromos on Redis beside the ceiling: raw redis-py and ``redis-benchmark`` on the same server.

The benchmark starts a private ``redis-server`` (no persistence, 127.0.0.1, a free port, a
temporary directory) and stops it by its pid at the end, also on failure; it never touches
any other Redis. Every figure has status tracking on (dromos always keeps each job's status
and result). In each repeat the private server is flushed before each figure, dromos runs in
a child process of its own, then the raw redis-py loop (pipelined LPUSH, then pipelined LPOP,
batches of 1,000) in another, then ``redis-benchmark``. The median of ``--repeat`` runs is
printed with the min-max range, and everything is written as JSON to ``bench/results/``.
See docs/benchmarks.md for what each figure means.

    .venv/bin/python bench/redis_bench.py --jobs 20000 --repeat 3
    .venv/bin/python bench/redis_bench.py --only drain raw
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
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
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHARED_PORT = 6379  # the shared server: never used here

METRICS = [
    ("enqueue", "single enqueue, blocking `enqueue(i)`", "jobs/s"),
    ("aenqueue", "single enqueue, `await aenqueue(i)`", "jobs/s"),
    ("enqueue_many", "bulk enqueue, `enqueue_many` of 1,000", "jobs/s"),
    ("drain_1p", "drain, 1 worker process", "jobs/s"),
    ("drain_2p", "drain, 2 worker processes", "jobs/s"),
    ("latency_p50", "round trip enqueue + result(), p50", "ms"),
    ("latency_p99", "round trip enqueue + result(), p99", "ms"),
    ("latency_max", "round trip enqueue + result(), max", "ms"),
    ("latency_slow", "round trips of 100 ms or more", "count"),
]
CEILING = [
    ("raw_lpush", "raw redis-py: pipelined LPUSH, batches of 1,000", "ops/s"),
    ("raw_lpop", "raw redis-py: pipelined LPOP, batches of 1,000", "ops/s"),
    ("rb_lpush", "redis-benchmark LPUSH (50 clients)", "ops/s"),
    ("rb_lpop", "redis-benchmark LPOP (50 clients)", "ops/s"),
    ("rb_lpush_p16", "redis-benchmark LPUSH -P 16", "ops/s"),
    ("rb_lpop_p16", "redis-benchmark LPOP -P 16", "ops/s"),
]
# dromos figure -> the raw figure it compares with (the same work without dromos's bookkeeping)
RATIOS = [
    ("enqueue_many", "raw_lpush"),
    ("drain_1p", "raw_lpop"),
    ("drain_2p", "raw_lpop"),
]
PHASES = ("enqueue", "bulk", "drain", "latency", "raw", "redis-benchmark")
PAYLOAD = b'{"v":1,"task":"noop","args":[%d],"kwargs":{},"queue":"default"}'  # about 60 bytes


# -- the private server -----------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    if port == SHARED_PORT:  # cannot happen while the shared server listens; never risk it
        raise RuntimeError("got the shared Redis port")
    return port


class PrivateRedis:
    """``redis-server`` on a free port in a temporary directory; ``stop()`` ends it by pid."""

    def __init__(self, binary: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.port = _free_port()
        argv = [binary, "--save", "", "--appendonly", "no", "--port", str(self.port),
                "--bind", "127.0.0.1", "--daemonize", "no", "--dir", self.dir]  # fmt: skip
        self.log = open(Path(self.dir) / "redis.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        _wait_until(self._pings, 20, f"redis-server on port {self.port}", self.proc)

    def _pings(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        _stop(self.proc)  # SIGTERM to this pid, SIGKILL after 60 s
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _client(port: int) -> Any:
    import redis

    if port == SHARED_PORT:
        raise RuntimeError("refusing the shared Redis")
    return redis.Redis(host="127.0.0.1", port=port)


# -- dromos (a child process) -----------------------------------------------------------------
def _dromos_worker(env: dict[str, str], procs: int, concurrency: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "dromos", "worker", "bench_app:app", "-c", str(concurrency),
            "-q", "default", "--log-level", "warning"]  # fmt: skip
    if procs > 1:
        argv += ["-p", str(procs)]
    return subprocess.Popen(argv, cwd=HERE, env=env)


def _finished_times(client: Any, tag: str) -> list[float]:
    """Every succeeded job's finished_at (s), read with pipelined HGETs."""
    ids = client.zrange(f"{tag}:succeeded", 0, -1)
    times: list[float] = []
    for start in range(0, len(ids), 1000):
        pipe = client.pipeline(transaction=False)
        for job_id in ids[start : start + 1000]:
            pipe.hget(f"{tag}:job:{job_id.decode()}", "finished_at")
        times += [int(v) / 1000 for v in pipe.execute() if v is not None]
    return times


def dromos_child(opts: argparse.Namespace) -> dict[str, float]:
    out: dict[str, float] = {}
    client = _client(opts.port)

    def fresh(name: str) -> tuple[Any, Any, str, dict[str, str]]:
        """A new app on the emptied private server, with bench_app's tasks registered."""
        import dromos

        sys.path.insert(0, str(HERE))
        import bench_app  # type: ignore[import-not-found]

        client.flushall()  # the private server only (see _client)
        prefix = f"bench-{name}"
        url = f"redis://127.0.0.1:{opts.port}/0?prefix={prefix}"
        os.environ["DROMOS_BROKER"] = url  # for the worker processes, and it wins over App()
        app = dromos.App("bench", url)
        for t in (bench_app.noop, bench_app.noop_sync):
            app.task(name=t.name)(t.func)
        return app, app.tasks[opts.task], f"{{{prefix}:default}}", dict(os.environ)

    n = opts.jobs
    measure_enqueue(fresh, n, opts.batch, opts.only, out)
    if "drain" in opts.only:
        for procs, key in ((1, "drain_1p"), (2, "drain_2p")):
            app, task, tag, env = fresh(f"drain{procs}")
            for start in range(0, n, 1000):
                task.enqueue_many([(i,) for i in range(start, min(n, start + 1000))])
            worker = _dromos_worker(env, procs, opts.concurrency)
            try:
                done = f"{tag}:succeeded"
                _wait_until(lambda d=done: client.zcard(d) >= n, 600, f"{n} jobs", worker)
            finally:
                _stop(worker)
            out[key] = _span_rate(_finished_times(client, tag))
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


# -- the ceiling: raw redis-py (a child process) and redis-benchmark ----------------------------
def raw_child(opts: argparse.Namespace) -> dict[str, float]:
    """LPUSH n small payloads, pipelined in batches, then LPOP them the same way."""
    import redis.asyncio as aioredis

    _client(opts.port).flushall()

    async def run() -> dict[str, float]:
        client = aioredis.Redis(host="127.0.0.1", port=opts.port)
        n, batch, key = opts.jobs, opts.batch, "bench-raw:list"
        payloads = [PAYLOAD % i for i in range(n)]
        await client.ping()
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            pipe = client.pipeline(transaction=False)
            for p in payloads[start : start + batch]:
                pipe.lpush(key, p)
            await pipe.execute()
        pushed = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = 0
        for _ in range(0, n, batch):
            pipe = client.pipeline(transaction=False)
            for _ in range(batch):
                pipe.lpop(key)
            got += sum(1 for v in await pipe.execute() if v is not None)
        popped = time.perf_counter() - t0
        await client.aclose()
        if got != n:
            raise RuntimeError(f"popped {got} of {n}")
        return {"raw_lpush": _rate(n, pushed), "raw_lpop": _rate(n, popped)}

    return asyncio.run(run())


_RB_LINE = re.compile(r"^(LPUSH|LPOP): ([\d.]+) requests per second")


def redis_benchmark(binary: str, port: int, requests: int) -> dict[str, float]:
    """``redis-benchmark -t lpush,lpop -q``, without and with ``-P 16``, parsed."""
    out: dict[str, float] = {}
    for suffix, extra in (("", []), ("_p16", ["-P", "16"])):
        argv = [binary, "-h", "127.0.0.1", "-p", str(port), "-t", "lpush,lpop", "-n",
                str(requests), "-q", *extra]  # fmt: skip
        text = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        for line in re.split(r"[\r\n]", text):
            m = _RB_LINE.match(line.strip())
            if m:
                out[f"rb_{m.group(1).lower()}{suffix}"] = float(m.group(2))
    return out


# -- the parent: server, repeats, summary, table, JSON ----------------------------------------
def _child(kind: str, port: int, opts: argparse.Namespace) -> dict[str, float]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--port", str(port),
            "--jobs", str(opts.jobs), "--batch", str(opts.batch), "--samples", str(opts.samples),
            "--concurrency", str(opts.concurrency), "--task", opts.task,
            "--only", *opts.only]  # fmt: skip
    proc = subprocess.run(argv, check=True, stdout=subprocess.PIPE, cwd=HERE)
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def _versions(server: str) -> dict[str, str]:
    import redis

    import dromos

    text = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"v=(\S+)", text)
    found = {
        "python": platform.python_version(),
        "redis-server": m.group(1) if m else text.strip(),
        "redis-py": redis.__version__,
        "dromos": getattr(dromos, "__version__", "?"),
    }
    try:
        import hiredis

        found["hiredis"] = hiredis.__version__
    except ImportError:
        found["hiredis"] = "not installed"
    return found


def _cell(s: dict[str, float] | None, unit: str) -> str:
    if s is None:
        return "n/a"
    return f"{_fmt(s['median'], unit)} ({_fmt(s['min'], unit)}-{_fmt(s['max'], unit)})"


def _table(summary: dict[str, dict[str, float]], opts: argparse.Namespace) -> list[str]:
    lines = [f"| figure (N = {opts.jobs:,}, median of {opts.repeat}) | median (min-max) |",
             "|---|---|"]  # fmt: skip
    for key, label, unit in METRICS + CEILING:
        if key in summary:
            lines.append(f"| {label} ({unit}) | {_cell(summary[key], unit)} |")
    ratios = [(d, r) for d, r in RATIOS if d in summary and r in summary]
    if ratios:
        labels = {k: label for k, label, _ in METRICS + CEILING}
        lines += ["", "| dromos / raw redis-py (same run, same server) | ratio |", "|---|---|"]
        for d, r in ratios:
            ratio = summary[d]["median"] / summary[r]["median"]
            lines.append(f"| {labels[d]} / {labels[r]} | {ratio:.1%} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per figure (N)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; medians shown")
    parser.add_argument("--batch", type=int, default=1000, help="jobs per enqueue_many / pipeline")
    parser.add_argument("--samples", type=int, default=200, help="round trips for latency")
    parser.add_argument("--concurrency", type=int, default=32, help="dromos worker -c")
    parser.add_argument("--bench-requests", type=int, default=100_000, help="redis-benchmark -n")
    parser.add_argument("--task", choices=["noop", "noop_sync"], default="noop",
                        help="async no-op, or the plain-def one (run in threads)")  # fmt: skip
    parser.add_argument("--only", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    parser.add_argument("--child", choices=["dromos", "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    opts = parser.parse_args()

    if opts.child:
        result = dromos_child(opts) if opts.child == "dromos" else raw_child(opts)
        print(json.dumps(result))
        return

    rb_binary = str(Path(opts.redis_server).with_name("redis-benchmark"))
    if not Path(rb_binary).exists():
        rb_binary = shutil.which("redis-benchmark") or "redis-benchmark"
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so that the server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server = PrivateRedis(opts.redis_server)
    print(f"private redis-server pid {server.proc.pid} on port {server.port}", file=sys.stderr)
    runs: list[dict[str, float]] = []
    try:
        dromos_phases = {"enqueue", "bulk", "drain", "latency"} & set(opts.only)
        for r in range(opts.repeat):
            run: dict[str, float] = {}
            if dromos_phases:
                print(f"run {r + 1}/{opts.repeat}: dromos ...", file=sys.stderr, flush=True)
                run.update(_child("dromos", server.port, opts))
            if "raw" in opts.only:
                print(f"run {r + 1}/{opts.repeat}: raw redis-py ...", file=sys.stderr, flush=True)
                run.update(_child("raw", server.port, opts))
            if "redis-benchmark" in opts.only:
                print(f"run {r + 1}/{opts.repeat}: redis-benchmark ...", file=sys.stderr)
                _client(server.port).flushall()
                run.update(redis_benchmark(rb_binary, server.port, opts.bench_requests))
            runs.append(run)
    finally:
        server.stop()
    summary = _summary(runs)
    lines = _table(summary, opts)
    print()
    print("\n".join(lines))

    RESULTS.mkdir(exist_ok=True)
    record = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "options": {k: v for k, v in vars(opts).items() if k not in ("child", "port")},
        "machine": {"nproc": os.cpu_count(), "platform": platform.platform()},
        "versions": _versions(opts.redis_server),
        "summary": summary,
        "ratios": {
            f"{d}/{r}": summary[d]["median"] / summary[r]["median"]
            for d, r in RATIOS
            if d in summary and r in summary
        },
        "table": lines,
        "runs": runs,
    }
    path = RESULTS / f"redis-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"\nwritten to {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
