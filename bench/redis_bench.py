"""``make bench-redis``: dromos and its peers side by side on one private Redis, with the ceiling.

The benchmark starts a private ``redis-server`` (no persistence, 127.0.0.1, a free port, a
temporary directory) and stops it by its pid at the end, also on failure; it never touches
any other Redis. Each system runs in its own virtualenv (``bench/.venvs/<name>``, created on
first use at the current PyPI release; ``--upgrade`` refreshes them) through the one
measuring driver, ``bench/peers/_driver.py``: the same task (INCR a counter, return the
int), the same N, the same completion count. dromos runs from a virtualenv of its own too,
installed from the work tree on every run as a user installs it (a wheel, with the
``redis`` and ``fast`` extras), with status tracking on. Beside them, the ceiling: a raw
redis-py loop (one command per call, and pipelined push and pop of N small payloads) and
``redis-benchmark``.

Each repeat runs every system in turn (the server is flushed between figures); the median
of ``--repeat`` runs is printed with the min-max range, as Markdown, and written as JSON with
every version to ``bench/results/``. See bench/README.md and docs/benchmarks.md.

    .venv/bin/python bench/redis_bench.py                      # everything, median of 3
    .venv/bin/python bench/redis_bench.py --systems dromos arq --repeat 1 --jobs 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

from _common import _cell, _rate, _stop, _summary, _wait_until, write_results

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import venvs  # bench/peers/venvs.py

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
SHARED_PORT = 6379  # the shared server: never used here

# system -> (its venv's name, its variants in table order)
SYSTEMS: dict[str, tuple[str | None, list[str]]] = {
    "dromos": ("dromos", ["dromos"]),
    "celery": ("celery", ["celery-threads", "celery-prefork"]),
    "rq": ("rq", ["rq-simple", "rq-fork"]),
    "dramatiq": ("dramatiq", ["dramatiq"]),
    "huey": ("huey", ["huey", "huey-process"]),
    "arq": ("arq", ["arq"]),
    "taskiq": ("taskiq", ["taskiq", "taskiq-list"]),
    "saq": ("saq", ["saq"]),
}
# (key, column heading, unit, higher is better)
METRICS = [
    ("enqueue", "enqueue 1 at a time", "jobs/s", True),
    ("enqueue_many", "bulk enqueue", "jobs/s", True),
    ("drain_1p", "drain, 1 process", "jobs/s", True),
    ("drain_2p", "drain, 2 processes", "jobs/s", True),
    ("latency_p50", "round trip p50", "ms", False),
    ("latency_p99", "round trip p99", "ms", False),
    ("rss_1p_mb", "worker RSS", "MiB", False),
]
EXTRA = [  # dromos only
    ("aenqueue", "dromos: `await aenqueue(i)` one at a time", "jobs/s"),
    ("aenqueue_64", "dromos: `aenqueue` from 64 coroutines at once", "jobs/s"),
]
CEILING = [
    ("raw_single", "raw redis-py: one LPUSH per call (sync client)", "ops/s"),
    ("raw_lpush", "raw redis-py: pipelined LPUSH, batches of 1,000", "ops/s"),
    ("raw_lpop", "raw redis-py: pipelined LPOP, batches of 1,000", "ops/s"),
    ("rb_lpush", "redis-benchmark LPUSH (50 clients)", "ops/s"),
    ("rb_lpop", "redis-benchmark LPOP (50 clients)", "ops/s"),
    ("rb_lpush_p16", "redis-benchmark LPUSH -P 16", "ops/s"),
    ("rb_lpop_p16", "redis-benchmark LPOP -P 16", "ops/s"),
]
PHASES = ("enqueue", "bulk", "drain", "latency")
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


# -- the ceiling: raw redis-py (a child process) and redis-benchmark ----------------------------
def raw_child(opts: argparse.Namespace) -> dict[str, float]:
    """LPUSH n small payloads one call at a time; then pipelined in batches, and LPOP them so."""
    import redis.asyncio as aioredis

    sync = _client(opts.port)
    sync.flushall()
    payloads = [PAYLOAD % i for i in range(opts.jobs)]
    sync.ping()
    t0 = time.perf_counter()
    for p in payloads:
        sync.lpush("bench-raw:single", p)
    single = _rate(opts.jobs, time.perf_counter() - t0)
    sync.flushall()

    async def run() -> dict[str, float]:
        client = aioredis.Redis(host="127.0.0.1", port=opts.port)
        n, batch, key = opts.jobs, opts.batch, "bench-raw:list"
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
        return {"raw_single": single, "raw_lpush": _rate(n, pushed), "raw_lpop": _rate(n, popped)}

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


# -- the parent: server, venvs, repeats, summary, tables, JSON ---------------------------------
def _system_run(system: str, variant: str, port: int, opts: argparse.Namespace) -> dict[str, float]:
    venv, _ = SYSTEMS[system]
    python = sys.executable if venv is None else str(venvs.python_of(venv))
    argv = [python, str(PEERS / f"{system}_peer.py"), "--port", str(port), "--variant", variant,
            "--jobs", str(opts.jobs), "--batch", str(opts.batch), "--samples", str(opts.samples),
            "--timeout", str(opts.timeout), "--only", *opts.only]  # fmt: skip
    proc = subprocess.run(argv, stdout=subprocess.PIPE, cwd=PEERS, timeout=opts.timeout * 4 + 600)
    if proc.returncode != 0:
        print(f"  {variant} failed (exit {proc.returncode}); left out of this run", file=sys.stderr)
        return {}
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def _raw(port: int, opts: argparse.Namespace) -> dict[str, float]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child-raw", "--port", str(port),
            "--jobs", str(opts.jobs), "--batch", str(opts.batch)]  # fmt: skip
    proc = subprocess.run(argv, check=True, stdout=subprocess.PIPE, cwd=HERE)
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def _versions(server: str, systems: list[str]) -> dict[str, Any]:
    text = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"v=(\S+)", text)
    found: dict[str, Any] = {
        "python": platform.python_version(),
        "redis-server": m.group(1) if m else text.strip(),
    }
    for system in systems:
        venv = SYSTEMS[system][0]
        if venv is not None:
            found[system] = venvs.versions(venv)
    return found


def _tables(summary: dict[str, dict[str, dict[str, float]]], opts: argparse.Namespace) -> list[str]:
    """The systems table, dromos's ratios to each peer, its own extras and the ceiling."""
    head = f"| system (N = {opts.jobs:,}, median of {opts.repeat}, min-max) |"
    once = [v for v in opts.once if v in summary]
    if once and opts.repeat > 1:
        head = head.replace(") |", f"; {', '.join(once)}: one run) |")
    lines = [head + "".join(f" {label} ({unit}) |" for _, label, unit, _ in METRICS)]
    lines.append("|---|" + "---|" * len(METRICS))
    for variant, figures in summary.items():
        if variant == "ceiling":
            continue
        cells = "".join(f" {_cell(figures.get(k), unit)} |" for k, _, unit, _ in METRICS)
        lines.append(f"| {variant} |{cells}")
    ours = summary.get("dromos", {})
    peers = [v for v in summary if v not in ("dromos", "ceiling")]
    if ours and peers:
        lines += ["", "dromos / peer, same run (above 1 is better for dromos in every column: "
                  "rates are dromos/peer, latency and memory peer/dromos):", ""]  # fmt: skip
        lines.append("| peer |" + "".join(f" {label} |" for _, label, _, _ in METRICS))
        lines.append("|---|" + "---|" * len(METRICS))
        for peer in peers:
            cells = ""
            for key, _, _, higher in METRICS:
                a, b = ours.get(key), summary[peer].get(key)
                if a is None or b is None or not a["median"] or not b["median"]:
                    cells += " n/a |"
                    continue
                ratio = a["median"] / b["median"] if higher else b["median"] / a["median"]
                cells += f" {ratio:.2f}x |"
            lines.append(f"| {peer} |{cells}")
    rows = [(k, label, unit) for k, label, unit in EXTRA if k in ours]
    rows += [(k, label, unit) for k, label, unit in CEILING if k in summary.get("ceiling", {})]
    if rows:
        lines += ["", "| dromos alone, and the ceiling | median (min-max) |", "|---|---|"]
        for key, label, unit in rows:
            figures = ours if key in ours else summary["ceiling"]
            lines.append(f"| {label} ({unit}) | {_cell(figures[key], unit)} |")
    return lines


def _targets(summary: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Issue 4's targets, each with the figures it compares, met or not; a target whose
    comparison was not measured in this run (no peer, no ceiling) is left out, not ticked."""
    ours = {k: v["median"] for k, v in summary.get("dromos", {}).items()}
    ceiling = {k: v["median"] for k, v in summary.get("ceiling", {}).items()}
    peers = {
        p: {k: v["median"] for k, v in f.items()}
        for p, f in summary.items()
        if p not in ("dromos", "ceiling")
    }

    def best(key: str, high: bool) -> tuple[str, float] | None:
        found = [(p, f[key]) for p, f in peers.items() if key in f]
        if not found:
            return None
        return max(found, key=lambda x: x[1]) if high else min(found, key=lambda x: x[1])

    out = []

    def check(name: str, ok: bool, detail: str) -> None:
        out.append(f"- [{'x' if ok else ' '}] {name}: {detail}")

    if "drain_1p" in ours and (b := best("drain_1p", True)):
        r = ours["drain_1p"] / b[1]
        check("drain >= 3x the fastest peer", r >= 3, f"{r:.2f}x ({b[0]})")
    b, raw = best("enqueue", True), ceiling.get("raw_single")
    if "enqueue" in ours and b is not None and raw:
        ok = ours["enqueue"] >= b[1] and ours["enqueue"] >= 0.85 * raw
        detail = f"{ours['enqueue'] / b[1]:.2f}x {b[0]}, "
        detail += f"{ours['enqueue'] / raw:.0%} of raw single LPUSH"
        check("single enqueue >= fastest peer and >= 85% of raw", ok, detail)
    if "aenqueue_64" in ours:
        v = ours["aenqueue_64"]
        check("64 concurrent aenqueue >= 50,000/s", v >= 50_000, f"{v:,.0f}/s")
    if "enqueue_many" in ours:
        v = ours["enqueue_many"]
        check("bulk enqueue >= 100,000/s", v >= 100_000, f"{v:,.0f}/s")
    b50, b99 = best("latency_p50", False), best("latency_p99", False)
    if "latency_p50" in ours and b50 is not None and b99 is not None:
        p50, p99 = ours["latency_p50"], ours["latency_p99"]
        ok = p50 <= 1 and p99 <= 3 and p50 < b50[1] and p99 < b99[1]
        best_peer = f"best peer {b50[1]:.2f} / {b99[1]:.2f} ms"
        check("round trip p50 <= 1 ms, p99 <= 3 ms, below every peer", ok,
              f"p50 {p50:.2f} ms, p99 {p99:.2f} ms ({best_peer})")  # fmt: skip
    if "drain_1p" in ours and "drain_2p" in ours:
        r = ours["drain_2p"] / ours["drain_1p"]
        check("2 processes >= 1.5x one", r >= 1.5, f"{r:.2f}x")
    if "rss_1p_mb" in ours and (b := best("rss_1p_mb", False)):
        r = ours["rss_1p_mb"] / b[1]
        check("worker memory <= leanest peer + 20%", r <= 1.2, f"{r:.2f}x ({b[0]})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per figure (N)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; medians shown")
    parser.add_argument("--batch", type=int, default=1000, help="jobs per bulk call / pipeline")
    parser.add_argument("--samples", type=int, default=200, help="round trips for latency")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per drain at most")
    parser.add_argument("--bench-requests", type=int, default=100_000, help="redis-benchmark -n")
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    parser.add_argument("--variants", nargs="+", help="only these variants (e.g. rq-simple)")
    parser.add_argument("--once", nargs="*", default=["rq-fork"],
                        help="variants run in the first repeat only (rq-fork drains about "
                        "50 jobs/s: 20,000 take minutes)")  # fmt: skip
    parser.add_argument("--only", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--no-ceiling", action="store_true", help="skip raw redis-py and "
                        "redis-benchmark")  # fmt: skip
    parser.add_argument("--upgrade", action="store_true", help="upgrade the peers' venvs first")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    parser.add_argument("--child-raw", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    opts = parser.parse_args()

    if opts.child_raw:
        print(json.dumps(raw_child(opts)))
        return

    for system in opts.systems:
        venv = SYSTEMS[system][0]
        if venv is not None:
            print(f"virtualenv for {system} ...", file=sys.stderr, flush=True)
            venvs.ensure(venv, upgrade=opts.upgrade)
    rb_binary = str(Path(opts.redis_server).with_name("redis-benchmark"))
    if not Path(rb_binary).exists():
        rb_binary = shutil.which("redis-benchmark") or "redis-benchmark"
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so that the server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server = PrivateRedis(opts.redis_server)
    print(f"private redis-server pid {server.proc.pid} on port {server.port}", file=sys.stderr)
    runs: dict[str, list[dict[str, float]]] = {}
    try:
        for r in range(opts.repeat):
            for system in opts.systems:
                for variant in SYSTEMS[system][1]:
                    if opts.variants and variant not in opts.variants:
                        continue
                    if r > 0 and variant in opts.once:
                        continue
                    print(f"run {r + 1}/{opts.repeat}: {variant} ...", file=sys.stderr, flush=True)
                    got = _system_run(system, variant, server.port, opts)
                    runs.setdefault(variant, []).append(got)
            if not opts.no_ceiling:
                print(f"run {r + 1}/{opts.repeat}: the ceiling ...", file=sys.stderr, flush=True)
                ceiling = _raw(server.port, opts)
                _client(server.port).flushall()
                ceiling.update(redis_benchmark(rb_binary, server.port, opts.bench_requests))
                runs.setdefault("ceiling", []).append(ceiling)
    finally:
        server.stop()
    summary = {name: _summary(got) for name, got in runs.items()}
    lines = _tables(summary, opts)
    targets = _targets(summary)
    print()
    print("\n".join(lines))
    if targets:
        print("\nIssue 4's targets (dromos, one worker process unless said):\n")
        print("\n".join(targets))

    write_results(
        "redis",
        {
            "options": {k: v for k, v in vars(opts).items() if k not in ("child_raw", "port")},
            "versions": _versions(opts.redis_server, opts.systems),
            "summary": summary,
            "table": lines,
            "targets": targets,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
