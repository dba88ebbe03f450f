"""``make bench-events``: dromos's event bus beside FastStream's Redis Streams subscriber.

Systems (``--systems``), each run as a child process of the benchmark by its own Python:

- ``dromos-sqlite``: dromos on SQLite, a fresh file in a temporary directory per phase;
- ``dromos-redis``: dromos on the private Redis (one Stream per broker prefix), uvloop as
  installed with the extra ``fast``;
- ``dromos-redis-asyncio``: the same with ``DROMOS_UVLOOP=0`` (asyncio's own loop, as
  FastStream has in its virtualenv): the like-for-like consume figure;
- ``dromos-redis-batch``: dromos's batch subscriber (``batch=32``: the handler gets a list),
  like for like with ``faststream-batch``; the handler counts each event as the batch
  variant of FastStream does (32 ``INCR`` at once);
- ``faststream``: FastStream (``faststream[redis]``, its current PyPI release, in
  ``bench/.venvs/faststream``) with a Redis Streams consumer group, ``max_workers=32``;
- ``faststream-batch``: the same with its batch subscriber (``batch=True, max_records=32``).

The settings, and the documentation they follow, are in ``peers/faststream_events.py``; the
dromos app the workers run is ``events_app.py``. Every system publishes the same data
(``{"order": i, "total_cents": 1000 + i}``), N times per figure, and its handler does the same
work: the data as ``dict[str, int]``, then one ``INCR`` of ``bench:count`` on the private
Redis (for SQLite too). Figures:

1. publish, one at a time: dromos ``app.publish`` (blocking); FastStream ``await
   broker.publish(data, stream=...)``; after one untimed call that connects. dromos's ``await
   app.apublish`` one at a time is shown beside it.
2. bulk publish, batches of ``--batch``: dromos ``publish_many``; FastStream has no batch API
   for streams (``publish_batch`` is for lists), so its documented Redis pipeline
   (``publish(..., pipeline=pipe)``, then ``execute()``: ``MULTI``/``EXEC``).
3. consume: N events published first (untimed, on an empty store), then one worker process
   with 32 handlers at a time starts; events/s from the first completion the counter shows
   to the N-th (the counter is read every 2 ms), so start-up is not counted; the worker's CPU
   time over the same span, per event; then the worker's resident memory (its process tree),
   both from ``/proc``.
4. publish-to-handler latency: a fresh store, the worker started and answering (a warm-up
   event), then ``--samples`` events one at a time, 10 ms apart: the publisher reads
   ``time.monotonic()`` and awaits its publish (``await app.apublish`` / ``await
   broker.publish``, on a plain asyncio loop for both), the handler pushes its own
   ``time.monotonic()`` (one clock for the whole machine on Linux) to a Redis list, which the
   publisher pops; the sample is the difference.

It starts a private ``redis-server`` (127.0.0.1, a free port, no persistence, a temporary
directory; never the shared server on 6379), flushes it before every phase and stops it by
its pid at the end; every child stops its worker by pid (its process group), also on Ctrl-C,
SIGTERM or a failure. The median of ``--repeat`` runs is printed with the min-max range, as
Markdown, with dromos/FastStream ratios and the issue's target, and written as JSON with every
version to ``bench/results/events-<time>.json``. See bench/README.md.

    .venv/bin/python bench/events_bench.py                               # everything, median of 3
    .venv/bin/python bench/events_bench.py --jobs 2000 --repeat 1        # a quick look
    .venv/bin/python bench/events_bench.py --systems dromos-redis faststream --only consume
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
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from _common import _cell, _rate, _ratio, _summary, write_results

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
sys.path.insert(0, str(PEERS))
import venvs  # noqa: E402 (bench/peers/venvs.py)
from _counter import COUNTER, SHARED_PORT  # noqa: E402
from _driver import _flush, _private_client, _start, _stop, _tree_rss_mb  # noqa: E402

# system -> its virtualenv (None: the project's .venv) and extra environment
SYSTEMS: dict[str, tuple[str | None, dict[str, str]]] = {
    "dromos-sqlite": (None, {}),
    "dromos-redis": (None, {}),
    "dromos-redis-asyncio": (None, {"DROMOS_UVLOOP": "0"}),
    "dromos-redis-batch": (None, {"BENCH_EVENTS_BATCH": "32"}),
    "faststream": ("faststream", {"BENCH_FASTSTREAM_VARIANT": "faststream"}),
    "faststream-batch": ("faststream", {"BENCH_FASTSTREAM_VARIANT": "faststream-batch"}),
}
# (key, column heading, unit, higher is better)
METRICS = [
    ("publish", "publish 1 at a time", "events/s", True),
    ("publish_many", "bulk publish", "events/s", True),
    ("consume", "consume, 1 process", "events/s", True),
    ("latency_p50", "publish-to-handler p50", "ms", False),
    ("latency_p99", "publish-to-handler p99", "ms", False),
    ("rss_mb", "worker RSS", "MiB", False),
    ("cpu_us", "worker CPU per event", "µs", False),
]
EXTRA = [("apublish", "dromos: `await app.apublish(...)` one at a time", "events/s")]
PHASES = ("publish", "bulk", "consume", "latency")
TOPIC = "orders.created"  # events_app.TOPIC
RECEIVED = "bench:events:received"  # where the handlers push receive times (latency phase)
CONCURRENCY = 32  # handlers at once: dromos -c 32, FastStream max_workers=32
IDLE_GAP = 0.01  # seconds between two latency samples
TARGET = 1.5  # the issue: dromos's Redis consume rate >= 1.5x FastStream's


def payload(i: int) -> dict[str, int]:
    """The event's data, the same for every system."""
    return {"order": i, "total_cents": 1000 + i}


def batches(n: int, batch: int) -> Iterator[range]:
    """The orders 0..n-1, ``batch`` at a time."""
    return (range(start, min(n, start + batch)) for start in range(0, n, batch))


# -- the systems, as the child process drives them ---------------------------------------------
class Dromos:
    """dromos's publisher (run by the project's .venv) and its worker's command line."""

    def __init__(self, name: str, port: int, tmp: Path) -> None:
        self.name, self.port, self.tmp = name, port, tmp
        self.sqlite = name == "dromos-sqlite"
        self.url = ""

    def fresh(self, phase: str) -> None:
        """An empty store: the private Redis flushed (counter, lists, streams), a new file."""
        _flush(self.port)
        if self.sqlite:
            self.url = f"sqlite:///{self.tmp / phase}.db"
        else:
            self.url = f"redis://127.0.0.1:{self.port}/0?prefix=bench"

    def _app(self) -> Any:
        import dromos

        os.environ["DROMOS_BROKER"] = self.url  # it overrides the argument: keep them equal
        return dromos.App("bench-events", self.url)

    def publish_single(self, n: int) -> float:
        app = self._app()
        try:
            app.publish(TOPIC, payload(-1))  # connects (opens the file, loads the scripts)
            t0 = time.perf_counter()
            for i in range(n):
                app.publish(TOPIC, payload(i))
            return time.perf_counter() - t0
        finally:
            app.close()

    def extra(self, n: int) -> dict[str, float]:
        """dromos only: ``await app.apublish`` one at a time (a fresh store)."""
        self.fresh("apublish")
        app = self._app()

        async def run() -> float:
            await app.apublish(TOPIC, payload(-1))
            t0 = time.perf_counter()
            for i in range(n):
                await app.apublish(TOPIC, payload(i))
            seconds = time.perf_counter() - t0
            await app.aclose()
            return seconds

        try:
            return {"apublish": _rate(n, asyncio.run(run()))}
        finally:
            app.close()

    def publish_bulk(self, n: int, batch: int) -> float | None:
        app = self._app()
        try:
            app.publish(TOPIC, payload(-1))
            t0 = time.perf_counter()
            for orders in batches(n, batch):
                app.publish_many([(TOPIC, payload(i)) for i in orders])
            return time.perf_counter() - t0
        finally:
            app.close()

    def fill(self, n: int, batch: int) -> None:
        app = self._app()
        try:
            for orders in batches(n, batch):
                app.publish_many([(TOPIC, payload(i)) for i in orders])
        finally:
            app.close()

    def worker(self, latency: bool) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-m", "dromos", "worker", "events_app:app", "-c",
                str(CONCURRENCY), "--log-level", "warning"]  # fmt: skip
        path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
        return argv, {
            "DROMOS_BROKER": self.url,
            "BENCH_REDIS_PORT": str(self.port),
            "BENCH_EVENTS_LATENCY": "1" if latency else "0",
            "PYTHONPATH": path,  # events_app.py is in bench/; the worker runs in bench/peers
        }

    @asynccontextmanager
    async def publisher(self) -> AsyncIterator[Callable[[dict[str, int]], Awaitable[Any]]]:
        app = self._app()
        try:
            yield lambda data: app.apublish(TOPIC, data)
        finally:
            await app.aclose()
            app.close()


class FastStream:
    """FastStream's publisher (run by bench/.venvs/faststream) and its worker's command line."""

    def __init__(self, name: str, port: int, tmp: Path) -> None:
        self.name, self.port = name, port
        os.environ["BENCH_REDIS_PORT"] = str(port)  # read when faststream_events is imported
        os.environ["BENCH_FASTSTREAM_VARIANT"] = name
        import faststream_events

        self.mod = faststream_events

    def fresh(self, phase: str) -> None:
        _flush(self.port)

    def publish_single(self, n: int) -> float:
        async def run() -> float:
            async with self.mod.Publisher(self.port) as pub:
                await pub.publish(payload(-1))  # connects
                t0 = time.perf_counter()
                for i in range(n):
                    await pub.publish(payload(i))
                return time.perf_counter() - t0

        return asyncio.run(run())

    def publish_bulk(self, n: int, batch: int) -> float | None:
        async def run() -> float:
            async with self.mod.Publisher(self.port) as pub:
                await pub.publish(payload(-1))
                t0 = time.perf_counter()
                for orders in batches(n, batch):
                    await pub.publish_pipelined([payload(i) for i in orders])
                return time.perf_counter() - t0

        return asyncio.run(run())

    def fill(self, n: int, batch: int) -> None:
        async def run() -> None:
            async with self.mod.Publisher(self.port) as pub:
                for orders in batches(n, batch):
                    await pub.publish_pipelined([payload(i) for i in orders])

        asyncio.run(run())

    def worker(self, latency: bool) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, str(PEERS / "faststream_events.py")]  # its programmatic runner
        return argv, {
            "BENCH_REDIS_PORT": str(self.port),
            "BENCH_FASTSTREAM_VARIANT": self.name,
            "BENCH_EVENTS_LATENCY": "1" if latency else "0",
        }

    @asynccontextmanager
    async def publisher(self) -> AsyncIterator[Callable[[dict[str, int]], Awaitable[Any]]]:
        async with self.mod.Publisher(self.port) as pub:
            yield pub.publish


def _side(name: str, port: int, tmp: Path) -> Dromos | FastStream:
    return FastStream(name, port, tmp) if name.startswith("faststream") else Dromos(name, port, tmp)


# -- the measuring loop (the child process: the same code for every system) --------------------
def _cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _consume(side: Dromos | FastStream, n: int, batch: int, timeout: float) -> dict[str, float]:
    """N events on an empty store, then the worker: events/s from its first to its N-th."""
    side.fresh("consume")
    side.fill(n, batch)
    client = _private_client(side.port)
    argv, env = side.worker(latency=False)
    proc = _start(argv, env)
    try:
        deadline = time.monotonic() + timeout
        first_t, first_c, first_cpu = 0.0, 0, 0.0
        while True:
            c = int(client.get(COUNTER) or 0)
            now = time.perf_counter()
            if c and not first_t:
                first_t, first_c, first_cpu = now, c, _cpu(proc.pid)
            if c >= n:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{side.name}: the worker exited ({proc.returncode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{side.name}: {c} of {n} events handled after {timeout:.0f} s")
            time.sleep(0.002)
        rate = _rate(c - first_c, now - first_t)
        cpu_us = (_cpu(proc.pid) - first_cpu) / max(1, c - first_c) * 1e6
        time.sleep(0.2)  # the worker settles (acknowledges) its last events
        rss = _tree_rss_mb(proc.pid)
        handled = int(client.get(COUNTER) or 0)
    finally:
        _stop(proc)
        client.close()
    if handled != n:
        print(f"  {side.name}: {handled} events handled for {n} published", file=sys.stderr)
    return {"consume": rate, "rss_mb": rss, "cpu_us": cpu_us, "consume_handled": float(handled)}


def _latency(side: Dromos | FastStream, samples: int) -> dict[str, float]:
    """Publish-to-handler times of ``samples`` events, one at a time, on an idle worker."""
    import redis.asyncio as aioredis

    side.fresh("latency")
    argv, env = side.worker(latency=True)
    proc = _start(argv, env)

    async def probe() -> list[float]:
        receipts = aioredis.Redis(host="127.0.0.1", port=side.port)
        async with side.publisher() as publish:

            async def one(i: int, timeout: float) -> float:
                t0 = time.monotonic()
                await publish(payload(i))
                deadline = time.monotonic() + timeout
                while (got := await receipts.blpop([RECEIVED], timeout=1)) is None:
                    if proc.poll() is not None:
                        raise RuntimeError(f"{side.name}: the worker exited ({proc.returncode})")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{side.name}: event {i} not handled in {timeout} s")
                order, received = got[1].split()
                if int(order) != i:
                    raise RuntimeError(f"{side.name}: received event {int(order)}, not {i}")
                return (float(received) - t0) * 1000.0

            await one(-1, 60)  # the worker is up: started, joined its group, connected
            await asyncio.sleep(0.5)
            out = []
            for i in range(samples):
                out.append(await one(i, 30))
                await asyncio.sleep(IDLE_GAP)
        await receipts.aclose()
        return out

    try:
        times = sorted(asyncio.run(probe()))
    finally:
        _stop(proc)
    import statistics

    return {
        "latency_p50": statistics.median(times),
        "latency_p99": times[min(len(times) - 1, round(0.99 * (len(times) - 1)))],
        "latency_max": times[-1],
    }


def child(opts: argparse.Namespace) -> dict[str, float]:
    """Every phase of one system, in this process (the system's own Python)."""
    if opts.port == SHARED_PORT:
        raise SystemExit("refusing the shared Redis")
    tmp = Path(tempfile.mkdtemp(prefix="bench-events-"))
    out: dict[str, float] = {}
    n = opts.jobs
    try:
        side = _side(opts.child, opts.port, tmp)
        if "publish" in opts.only:
            side.fresh("publish")
            out["publish"] = _rate(n, side.publish_single(n))
            if isinstance(side, Dromos):
                out.update(side.extra(n))
        if "bulk" in opts.only:
            side.fresh("bulk")
            seconds = side.publish_bulk(n, opts.batch)
            if seconds is not None:
                out["publish_many"] = _rate(n, seconds)
        if "consume" in opts.only:
            out.update(_consume(side, n, opts.batch, opts.timeout))
        if "latency" in opts.only:
            out.update(_latency(side, opts.samples))
        _flush(opts.port)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# -- the parent: server, venv, repeats, summary, tables, JSON ----------------------------------
def _system_run(name: str, port: int, opts: argparse.Namespace) -> dict[str, float]:
    """One child process for one system; stopped (SIGTERM, then SIGKILL) if we are."""
    venv, extra_env = SYSTEMS[name]
    python = sys.executable if venv is None else str(venvs.python_of(venv))
    argv = [python, str(Path(__file__).resolve()), "--child", name, "--port", str(port),
            "--jobs", str(opts.jobs), "--batch", str(opts.batch), "--samples", str(opts.samples),
            "--timeout", str(opts.timeout), "--only", *opts.only]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "DROMOS_BROKER"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=HERE, env={**env, **extra_env})
    try:
        stdout, _ = proc.communicate(timeout=opts.timeout * 2 + 600)
    finally:
        if proc.poll() is None:  # we are stopping (Ctrl-C, SIGTERM) or it overran
            proc.terminate()  # its handler unwinds: it stops its worker
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        print(f"  {name} failed (exit {proc.returncode}); left out of this run", file=sys.stderr)
        return {}
    return json.loads(stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def _dists(python: str, names: list[str]) -> dict[str, str]:
    """Installed versions of ``names`` as ``python`` sees them."""
    code = (
        "import json,sys\nfrom importlib import metadata\nout={}\n"
        "for d in sys.argv[1:]:\n"
        "    try: out[d]=metadata.version(d)\n"
        "    except metadata.PackageNotFoundError: out[d]='not installed'\n"
        "print(json.dumps(out))"
    )
    run = subprocess.run([python, "-c", code, *names], check=True, capture_output=True, text=True)
    return dict(json.loads(run.stdout))


def _versions(server: str, systems: list[str]) -> dict[str, Any]:
    text = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"v=(\S+)", text)
    found: dict[str, Any] = {
        "python": platform.python_version(),
        "redis-server": m.group(1) if m else text.strip(),
    }
    if any(s.startswith("dromos") for s in systems):
        found["dromos"] = _dists(sys.executable, ["dromos", "redis", "hiredis", "uvloop",
                                                  "msgspec", "pydantic"])  # fmt: skip
    if any(s.startswith("faststream") for s in systems):
        python = str(venvs.python_of("faststream"))
        found["faststream"] = venvs.versions("faststream")
        found["faststream"].update(_dists(python, ["fast-depends", "pydantic", "anyio", "uvloop"]))
        found["faststream"]["python"] = subprocess.run(
            [python, "-c", "import platform; print(platform.python_version())"],
            capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
    return found


def _tables(summary: dict[str, dict[str, dict[str, float]]], opts: argparse.Namespace) -> list[str]:
    """The systems table, dromos's ratios to FastStream, and dromos's extra figure."""
    head = f"| system (N = {opts.jobs:,}, median of {opts.repeat}, min-max) |"
    lines = [head + "".join(f" {label} ({unit}) |" for _, label, unit, _ in METRICS)]
    lines.append("|---|" + "---|" * len(METRICS))
    for name, figures in summary.items():
        cells = "".join(f" {_cell(figures.get(k), unit, 2)} |" for k, _, unit, _ in METRICS)
        lines.append(f"| {name} |{cells}")
    ours = [s for s in summary if s.startswith("dromos")]
    theirs = [s for s in summary if s.startswith("faststream")]
    if ours and theirs:
        lines += ["", "dromos / FastStream, same run (above 1 is better for dromos in every "
                  "column: rates are dromos/FastStream, latency and memory FastStream/dromos):",
                  ""]  # fmt: skip
        lines.append("| dromos / FastStream |" + "".join(f" {m[1]} |" for m in METRICS))
        lines.append("|---|" + "---|" * len(METRICS))
        for a in ours:
            for b in theirs:
                cells = "".join(
                    f" {_ratio(summary[a].get(k), summary[b].get(k), higher)} |"
                    for k, _, _, higher in METRICS
                )
                lines.append(f"| {a} / {b} |{cells}")
    rows = [(s, k, label, unit) for s in ours for k, label, unit in EXTRA if k in summary[s]]
    if rows:
        lines += ["", "| dromos alone | median (min-max) |", "|---|---|"]
        for s, key, label, unit in rows:
            lines.append(f"| {s}: {label} ({unit}) | {_cell(summary[s][key], unit, 2)} |")
    return lines


def _targets(summary: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """The issue's target: dromos's Redis consume rate >= 1.5x FastStream's. Judged best
    against best (the faster of dromos's Redis subscribers as installed, one event per call or
    a batch, against the faster of FastStream's), with each like-for-like pair shown below."""
    rates = {s: f["consume"]["median"] for s, f in summary.items() if "consume" in f}
    theirs = {s: v for s, v in rates.items() if s.startswith("faststream")}
    ours = {s: rates[s] for s in ("dromos-redis", "dromos-redis-batch") if s in rates}
    if not ours or not theirs:
        return []
    mine, best = max(ours, key=lambda s: ours[s]), max(theirs, key=lambda s: theirs[s])
    r = ours[mine] / theirs[best]
    out = [f"- [{'x' if r >= TARGET else ' '}] dromos's Redis consume rate >= {TARGET}x "
           f"FastStream's, best against best: {r:.2f}x ({mine} / {best})"]  # fmt: skip
    pairs = [("dromos-redis", "faststream", "one event per call"),
             ("dromos-redis-batch", "faststream-batch", "batch against batch"),
             ("dromos-redis-asyncio", "faststream", "on asyncio's loop, one event per call"),
             ("dromos-redis", "faststream-batch", "one per call against a batch")]  # fmt: skip
    for a, b, what in pairs:
        if a in rates and b in rates:
            out.append(f"  - {what} ({a} / {b}): {rates[a] / rates[b]:.2f}x")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="events per figure (N)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; medians shown")
    parser.add_argument("--batch", type=int, default=1000, help="events per bulk publish")
    parser.add_argument("--samples", type=int, default=200, help="events for the latency")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per consume at most")
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    parser.add_argument("--only", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--upgrade", action="store_true", help="upgrade FastStream's venv first")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    parser.add_argument("--child", choices=list(SYSTEMS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    opts = parser.parse_args()

    # SIGTERM (e.g. a CI timeout, or the parent stopping a child) unwinds like Ctrl-C, so that
    # the workers and the server are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if opts.child:
        print(json.dumps(child(opts)))
        return

    if any(SYSTEMS[s][0] for s in opts.systems):
        print("virtualenv for faststream ...", file=sys.stderr, flush=True)
        venvs.ensure("faststream", upgrade=opts.upgrade)
    from redis_bench import PrivateRedis

    load_before = os.getloadavg()
    server = PrivateRedis(opts.redis_server)
    print(f"private redis-server pid {server.proc.pid} on port {server.port}", file=sys.stderr)
    runs: dict[str, list[dict[str, float]]] = {}
    try:
        for r in range(opts.repeat):
            for name in opts.systems:
                print(f"run {r + 1}/{opts.repeat}: {name} ...", file=sys.stderr, flush=True)
                runs.setdefault(name, []).append(_system_run(name, server.port, opts))
    finally:
        server.stop()
    summary = {name: _summary(got) for name, got in runs.items()}
    lines = _tables(summary, opts)
    targets = _targets(summary)
    load = f"load average {load_before[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    print()
    print("\n".join(lines))
    if targets:
        print("\nThe issue's target (one worker process, one consumer group):\n")
        print("\n".join(targets))
    print(f"\n{os.cpu_count()} CPUs, {load}")

    write_results(
        "events",
        {
            "options": {k: v for k, v in vars(opts).items() if k not in ("child", "port")},
            "machine": {"load": load},
            "versions": _versions(opts.redis_server, opts.systems),
            "summary": summary,
            "table": lines,
            "targets": targets,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
