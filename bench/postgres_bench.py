"""``make bench-postgres``: dromos on PostgreSQL beside procrastinate, on one private cluster.

The benchmark makes a private PostgreSQL cluster (``initdb`` in a temporary directory, a free
port of 127.0.0.1, PostgreSQL's default settings, ``fsync=on`` unless ``--fsync off``; see
``_pg.py``) and stops it by its pid at the end, also on failure or SIGTERM; it never touches
any other PostgreSQL. procrastinate runs in its own virtualenv (``bench/.venvs/procrastinate``,
created on first use at its current PyPI release; ``--upgrade`` refreshes it), dromos from
the project's ``.venv`` with status tracking on. Both go through the one measuring driver,
``bench/peers/_driver.py --store postgres``: the same task (``UPDATE bench.counter SET n =
n + 1`` on the private cluster, then return the int), the same N, the same completion count
(that row, read every 2 ms), every table emptied and a ``CHECKPOINT`` before each phase.

Each repeat runs both systems, in turns (the first system of a repeat alternates, so that a
drift of the machine does not always favour the same one); the median of ``--repeat`` runs
is printed with the min-max range, as Markdown, with dromos/procrastinate ratios, and written
as JSON with every version and the cluster's settings to ``bench/results/``. See
bench/README.md and docs/benchmarks.md.

    .venv/bin/python bench/postgres_bench.py                       # N = 20,000, median of 3
    .venv/bin/python bench/postgres_bench.py --repeat 1 --jobs 2000  # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import _cell, _git, _load, _ratio, report, work_tree_source
from _pg import PrivatePostgres

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import venvs  # bench/peers/venvs.py

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"

# system -> (venv name or None for the project's own, its peer module)
SYSTEMS: dict[str, tuple[str | None, str]] = {
    "dromos": (None, "dromos_pg_peer.py"),
    "procrastinate": ("procrastinate", "procrastinate_peer.py"),
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
    ("aenqueue", "async enqueue 1 at a time", "jobs/s", True),
    ("aenqueue_64", "async enqueue, 64 coroutines at once", "jobs/s", True),
    ("latency_max", "round trip, the slowest", "ms", False),
    ("latency_slow", "round trips of 100 ms or more", "count", False),
]
PHASES = ("enqueue", "bulk", "drain", "latency")


def _system_run(
    system: str, port: int, opts: argparse.Namespace, dromos_src: Path | None
) -> dict[str, float]:
    venv, module = SYSTEMS[system]
    python = sys.executable if venv is None else str(venvs.python_of(venv))
    argv = [python, str(PEERS / module), "--store", "postgres", "--port", str(port),
            "--jobs", str(opts.jobs), "--batch", str(opts.batch), "--samples", str(opts.samples),
            "--timeout", str(opts.timeout), "--only", *opts.only]  # fmt: skip
    env = dict(os.environ)
    if venv is None and dromos_src is not None:  # ahead of the editable install's src/
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(dromos_src), env.get("PYTHONPATH")]))
    proc = subprocess.run(argv, stdout=subprocess.PIPE, cwd=PEERS, env=env,
                          timeout=opts.timeout * 4 + 900)  # fmt: skip
    if proc.returncode != 0:
        print(f"  {system} failed (exit {proc.returncode}); left out of this run", file=sys.stderr)
        return {}
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def _dromos_at(commit: str) -> tuple[Path, Path]:
    """``src/`` of ``commit`` (``git archive``, read-only for the repository) in a new
    temporary directory: (that directory, its ``src``)."""
    import io
    import tarfile

    top = Path(tempfile.mkdtemp(prefix="bench-dromos-src-"))
    data = subprocess.run(["git", "archive", "--format=tar", commit, "src"], cwd=HERE.parent,
                          check=True, capture_output=True).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(top, filter="data")
    return top, top / "src"


def _dromos_source(opts: argparse.Namespace) -> dict[str, str]:
    """Which dromos ran: a commit's ``src/`` (``--dromos-at``), or the work tree, with how
    many of its files under ``src/`` differ from HEAD."""
    if opts.dromos_at:
        return {"commit": _git("rev-parse", "--short", opts.dromos_at), "from": "git archive"}
    return work_tree_source()


def _versions(server: PrivatePostgres, opts: argparse.Namespace) -> dict[str, Any]:
    import psycopg
    import psycopg_pool

    import dromos

    found: dict[str, Any] = {
        "python": platform.python_version(),
        "postgresql": server.settings(),
        "dromos": {
            "dromos": getattr(dromos, "__version__", "?"),
            "psycopg": psycopg.__version__,
            "psycopg_pool": psycopg_pool.__version__,
            "psycopg_impl": psycopg.pq.__impl__,
            "source": _dromos_source(opts),
        },
    }
    for name in ("uvloop", "msgspec", "pydantic"):
        try:
            found["dromos"][name] = __import__(name).__version__
        except ImportError:
            found["dromos"][name] = "not installed"
    for system in opts.systems:
        venv = SYSTEMS[system][0]
        if venv is not None:
            found[system] = venvs.versions(venv)
    return found


def _tables(summary: dict[str, dict[str, dict[str, float]]], opts: argparse.Namespace) -> list[str]:
    """The systems table with dromos's ratio to procrastinate per column; then the async
    enqueue and the slowest round trips."""
    head = f"| system (N = {opts.jobs:,}, median of {opts.repeat}, min-max) |"
    lines = [head + "".join(f" {label} ({unit}) |" for _, label, unit, _ in METRICS)]
    lines.append("|---|" + "---|" * len(METRICS))
    for system, figures in summary.items():
        cells = "".join(f" {_cell(figures.get(k), unit)} |" for k, _, unit, _ in METRICS)
        lines.append(f"| {system} |{cells}")
    ours = summary.get("dromos", {})
    peers = [s for s in summary if s != "dromos"]
    for peer in peers:
        cells = "".join(
            f" {_ratio(ours.get(k), summary[peer].get(k), higher)} |" for k, _, _, higher in METRICS
        )
        lines.append(f"| dromos / {peer} |{cells}")
    if any(k in f for f in summary.values() for k, *_ in EXTRA):
        lines += ["", "| more figures |" + "".join(f" {s} |" for s in summary)
                  + "".join(f" dromos / {p} |" for p in peers), "|---|"
                  + "---|" * (len(summary) + len(peers))]  # fmt: skip
        for key, label, unit, higher in EXTRA:
            cells = "".join(f" {_cell(f.get(key), unit)} |" for f in summary.values())
            cells += "".join(f" {_ratio(ours.get(key), summary[p].get(key), higher)} |"
                             for p in peers)  # fmt: skip
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
    parser.add_argument("--only", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--fsync", choices=("on", "off"), default="on",
                        help="the cluster's fsync (the same for every system)")  # fmt: skip
    parser.add_argument("--upgrade", action="store_true", help="upgrade the peers' venvs first")
    parser.add_argument(
        "--dromos-at",
        metavar="COMMIT",
        help="run dromos's src/ of this commit "
        "(git archive into a temporary directory) instead of the work tree",
    )
    opts = parser.parse_args()

    src_dir: Path | None = None
    top: Path | None = None
    if opts.dromos_at:
        top, src_dir = _dromos_at(opts.dromos_at)

    for system in opts.systems:
        venv = SYSTEMS[system][0]
        if venv is not None:
            print(f"virtualenv for {system} ...", file=sys.stderr, flush=True)
            venvs.ensure(venv, upgrade=opts.upgrade)
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so that the cluster is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_start = _load()
    server = PrivatePostgres(fsync=opts.fsync == "on")
    print(f"private PostgreSQL pid {server.pid} on port {server.port} ({server.tmp})",
          file=sys.stderr)  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in opts.systems}
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        versions = _versions(server, opts)
        for r in range(opts.repeat):
            order = opts.systems[r % len(opts.systems) :] + opts.systems[: r % len(opts.systems)]
            for system in order:
                print(f"run {r + 1}/{opts.repeat}: {system} (load {_load()}) ...",
                      file=sys.stderr, flush=True)  # fmt: skip
                t0 = time.monotonic()
                got = _system_run(system, server.port, opts, src_dir)
                print(f"  {system}: {time.monotonic() - t0:.0f} s {json.dumps(got)}",
                      file=sys.stderr, flush=True)  # fmt: skip
                runs[system].append(got)
    except BaseException:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        server.stop()
        if top is not None:
            shutil.rmtree(top, ignore_errors=True)
    report("postgres", runs, lambda summary: _tables(summary, opts),
           {"when": started, "options": vars(opts), "versions": versions}, load_start)  # fmt: skip


if __name__ == "__main__":
    main()
