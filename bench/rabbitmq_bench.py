"""``make bench-rabbitmq``: dromos on RabbitMQ beside Celery and Dramatiq on RabbitMQ.

The benchmark starts a private RabbitMQ node (``tests/rabbitmq_servers.PrivateRabbitMQ``: its
own node name, ports, Erlang cookie and data directory in a temporary directory) and a private
``redis-server`` (as ``redis_bench.py`` does), and stops both by their pid at the end, also on
failure or SIGTERM; it never touches the shared RabbitMQ (5672) or Redis (6379). RabbitMQ
carries every system's jobs; the Redis holds the completion counter every task increments,
dromos's state store (status and results, on for every figure) and Dramatiq's result backend.
Celery's results travel back over RabbitMQ (``rpc://``).

Each peer runs in its own virtualenv (``bench/.venvs/celery-rabbitmq``,
``bench/.venvs/dramatiq-rabbitmq``, created on first use at the current PyPI release;
``--upgrade`` refreshes them), dromos from the project's ``.venv``; all go through the one
measuring driver, ``bench/peers/_driver.py --store rabbitmq``: the same task (INCR the Redis
counter, return the int), the same N, the same completion count, the node's queues purged and
the Redis emptied before every phase. Each repeat runs every variant in turn, the first one
rotating between repeats; the median of ``--repeat`` runs is printed with the min-max range,
as Markdown, with dromos/peer ratios, and written as JSON with every version to
``bench/results/``. See bench/README.md and docs/benchmarks.md.

    .venv/bin/python bench/rabbitmq_bench.py                       # N = 20,000, median of 3
    .venv/bin/python bench/rabbitmq_bench.py --repeat 1 --jobs 2000  # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import _cell, _load, _ratio, report, work_tree_source
from redis_bench import PrivateRedis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(ROOT))  # tests.rabbitmq_servers
import _amqp  # noqa: E402  bench/peers/_amqp.py
import venvs  # noqa: E402  bench/peers/venvs.py
from tests.rabbitmq_servers import PrivateRabbitMQ  # noqa: E402

PEERS = HERE / "peers"

# system -> (venv name or None for the project's own, its peer module, its variants)
SYSTEMS: dict[str, tuple[str | None, str, list[str]]] = {
    "dromos": (None, "dromos_rmq_peer.py", ["dromos"]),
    "celery": ("celery-rabbitmq", "celery_rmq_peer.py", ["celery-threads", "celery-prefork"]),
    "dramatiq": ("dramatiq-rabbitmq", "dramatiq_rmq_peer.py", ["dramatiq"]),
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
EXTRA = [
    ("enqueue_confirmed", "enqueue 1 at a time, publisher confirms on", "jobs/s", True),
    ("enqueue_ignore_result", "enqueue 1 at a time, `ignore_result=True`", "jobs/s", True),
    ("aenqueue", "`await aenqueue(i)` one at a time", "jobs/s", True),
    ("aenqueue_64", "`aenqueue` from 64 coroutines at once", "jobs/s", True),
    ("rss_2p_mb", "worker RSS, 2 processes", "MiB", False),
    ("latency_max", "round trip, the slowest", "ms", False),
    ("latency_slow", "round trips of 100 ms or more", "count", False),
]
PHASES = ("enqueue", "bulk", "drain", "latency")


def _system_of(variant: str) -> str:
    return next(s for s, (_, _, variants) in SYSTEMS.items() if variant in variants)


def _variant_run(
    variant: str, redis: PrivateRedis, node: PrivateRabbitMQ, opts: argparse.Namespace
) -> dict[str, float]:
    venv, module, _ = SYSTEMS[_system_of(variant)]
    python = sys.executable if venv is None else str(venvs.python_of(venv))
    argv = [python, str(PEERS / module), "--store", "rabbitmq", "--port", str(redis.port),
            "--amqp-port", str(node.port), "--rabbitmq-node", node.name,
            "--rabbitmq-home", str(node.base), "--variant", variant, "--jobs", str(opts.jobs),
            "--batch", str(opts.batch), "--samples", str(opts.samples),
            "--timeout", str(opts.timeout), "--only", *opts.only]  # fmt: skip
    proc = subprocess.run(argv, stdout=subprocess.PIPE, cwd=PEERS, timeout=opts.timeout * 4 + 900)
    if proc.returncode != 0:
        print(f"  {variant} failed (exit {proc.returncode}); left out of this run", file=sys.stderr)
        return {}
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def _versions(node: PrivateRabbitMQ, redis_server: str, opts: argparse.Namespace) -> dict[str, Any]:
    import redis

    import dromos

    env = {**os.environ, "HOME": str(node.base)}
    status = subprocess.run([_amqp.CTL, "-n", node.name, "status"], env=env, capture_output=True,
                            text=True).stdout  # fmt: skip
    rabbit = re.search(r"RabbitMQ version: (\S+)", status)
    erlang = re.search(r"Erlang configuration: Erlang/OTP (\S+) \[erts-([\d.]+)\]", status)
    text = subprocess.run([redis_server, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"v=(\S+)", text)
    found: dict[str, Any] = {
        "python": platform.python_version(),
        "rabbitmq-server": rabbit.group(1) if rabbit else "?",
        "erlang": f"OTP {erlang.group(1)}, erts {erlang.group(2)}" if erlang else "?",
        "redis-server": m.group(1) if m else text.strip(),
        "dromos": {
            "dromos": getattr(dromos, "__version__", "?"),
            "redis": redis.__version__,
            "source": work_tree_source(),
        },
    }
    from importlib import metadata

    for name in ("aio-pika", "aiormq", "pamqp", "hiredis", "uvloop", "msgspec"):
        try:  # the distribution's version (pamqp's __version__ lags its release)
            found["dromos"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found["dromos"][name] = "not installed"
    for system in opts.systems:
        venv = SYSTEMS[system][0]
        if venv is not None:
            found[system] = venvs.versions(venv)
    return found


def _tables(summary: dict[str, dict[str, dict[str, float]]], opts: argparse.Namespace) -> list[str]:
    """The systems table, dromos's ratio to each peer per column, then the extra figures."""
    head = f"| system (N = {opts.jobs:,}, median of {opts.repeat}, min-max) |"
    lines = [head + "".join(f" {label} ({unit}) |" for _, label, unit, _ in METRICS)]
    lines.append("|---|" + "---|" * len(METRICS))
    for variant, figures in summary.items():
        cells = "".join(f" {_cell(figures.get(k), unit)} |" for k, _, unit, _ in METRICS)
        lines.append(f"| {variant} |{cells}")
    ours = summary.get("dromos", {})
    peers = [v for v in summary if v != "dromos"]
    if ours and peers:
        lines += ["", "| dromos / peer |" + "".join(f" {label} |" for _, label, _, _ in METRICS),
                  "|---|" + "---|" * len(METRICS)]  # fmt: skip
        for peer in peers:
            cells = "".join(f" {_ratio(ours.get(k), summary[peer].get(k), higher)} |"
                            for k, _, _, higher in METRICS)  # fmt: skip
            lines.append(f"| {peer} |{cells}")
    rows = [e for e in EXTRA if any(e[0] in f for f in summary.values())]
    if rows:
        lines += ["", "| more figures |" + "".join(f" {s} |" for s in summary),
                  "|---|" + "---|" * len(summary)]  # fmt: skip
        for key, label, unit, _ in rows:
            cells = "".join(f" {_cell(f.get(key), unit)} |" for f in summary.values())
            lines.append(f"| {label} ({unit}) |{cells}")
    lines += ["", "Ratios: above 1 is better for dromos in every column (rates dromos/peer, "
              "latency and memory peer/dromos)."]  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per figure (N)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; medians shown")
    parser.add_argument("--batch", type=int, default=1000, help="jobs per bulk call")
    parser.add_argument("--samples", type=int, default=200, help="round trips for latency")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per drain at most")
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    parser.add_argument("--variants", nargs="+", help="only these variants (e.g. celery-threads)")
    parser.add_argument("--only", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--upgrade", action="store_true", help="upgrade the peers' venvs first")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    opts = parser.parse_args()

    for system in opts.systems:
        venv = SYSTEMS[system][0]
        if venv is not None:
            print(f"virtualenv for {system} ...", file=sys.stderr, flush=True)
            venvs.ensure(venv, upgrade=opts.upgrade)
    variants = [v for s in opts.systems for v in SYSTEMS[s][2]
                if not opts.variants or v in opts.variants]  # fmt: skip
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so that both servers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_start = _load()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    base = Path(tempfile.mkdtemp(prefix="bench-rabbitmq-"))
    node = PrivateRabbitMQ(base / "node")
    redis: PrivateRedis | None = None
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    try:
        node.start()
        assert node.proc is not None
        print(f"private RabbitMQ {node.name} pid {node.proc.pid} on port {node.port} ({base})",
              file=sys.stderr)  # fmt: skip
        redis = PrivateRedis(opts.redis_server)
        print(f"private redis-server pid {redis.proc.pid} on port {redis.port}", file=sys.stderr)
        versions = _versions(node, opts.redis_server, opts)
        for r in range(opts.repeat):
            k = r % len(variants)
            for variant in variants[k:] + variants[:k]:
                print(f"run {r + 1}/{opts.repeat}: {variant} (load {_load()}) ...",
                      file=sys.stderr, flush=True)  # fmt: skip
                t0 = time.monotonic()
                got = _variant_run(variant, redis, node, opts)
                print(f"  {variant}: {time.monotonic() - t0:.0f} s {json.dumps(got)}",
                      file=sys.stderr, flush=True)  # fmt: skip
                runs[variant].append(got)
    except BaseException:
        log = base / "node" / "server.log"
        if log.exists():
            print(log.read_text(errors="replace")[-2000:], file=sys.stderr)
        raise
    finally:
        node.stop(kill=True)  # its process group, which it started
        if redis is not None:
            redis.stop()  # by its pid
        shutil.rmtree(base, ignore_errors=True)
    # Other work may commit to this repository during a run: which dromos ran at the end.
    versions["dromos"]["source_end"] = work_tree_source()
    report("rabbitmq", runs, lambda summary: _tables(summary, opts),
           {"when": started, "options": vars(opts), "versions": versions}, load_start)  # fmt: skip


if __name__ == "__main__":
    main()
