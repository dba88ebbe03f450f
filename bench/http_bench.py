"""``make bench-http``: the HTTP gateway's speed (issue 5), on SQLite and on a private Redis.

Each run of a broker is a child process of the benchmark that starts its own processes and
stops each by its pid at the end (also on an error, Ctrl-C or SIGTERM). Two phases:

1. **Throughput.** ``dromos serve bench_app:app`` in its own process (uvicorn; uvloop and
   httptools when installed, as ``dromos serve`` chooses), no worker running: the jobs
   queue. ``httpx.AsyncClient``s on loopback (HTTP/1.1 keep-alive, ``--concurrency``
   connections with one request in flight on each, one client per connection: see
   ``_load``) send ``POST /v1/tasks/noop/jobs`` ``--jobs`` times after a warm-up that opens
   every connection; every answer must be 202, and the store must then hold every job.
   Figures: requests/s, p50/p99 latency, and the CPU each process spent per request (the
   gateway, the load generator, redis-server), read from ``/proc``. Beside it, two
   floors on the same uvicorn and load generator: a bare ASGI app, and a FastAPI route that
   reads the body and answers a fixed 202 (``--no-floors`` skips them).
2. **Synchronous round trip.** A fresh store, the gateway again and one
   ``dromos worker bench_app:app -c 32``. After a warm-up, ``--samples`` times each, taken
   in turn: ``POST .../jobs`` with ``Prefer: wait=5`` from a blocking ``httpx.Client`` (200
   with the result), and the direct ``noop.enqueue(i).result(timeout=5)``; then the
   difference of their p50s, against issue 5's target of at most 5 ms.

SQLite is a fresh file in a temporary directory per phase (``synchronous=FULL``, the
default); Redis a private ``redis-server`` (127.0.0.1, a free port, never 6379, no
persistence) started and stopped by pid, flushed before each run. The median of ``--repeat``
runs is printed with the min-max range, as Markdown, and written as JSON with the versions to
``bench/results/http-<time>.json``. ``--profile`` runs phase 1's gateway under cProfile
(per-thread CPU time, from the end of the warm-up to the end of the load) and prints where its
CPU goes; profiling slows it, so those runs' figures are not comparable.

    .venv/bin/python bench/http_bench.py                     # both brokers, median of 3
    .venv/bin/python bench/http_bench.py --brokers redis --repeat 1 --jobs 2000
    .venv/bin/python bench/http_bench.py --repeat 1 --profile --no-floors
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import _cell, _stop, _summary, write_results

HERE = Path(__file__).resolve().parent
ROUTE = "/v1/tasks/noop/jobs"
JSON_TYPE = {"content-type": "application/json"}
WAIT = {**JSON_TYPE, "prefer": "wait=5"}
WORKER_CONCURRENCY = 32
WARMUP_PER_CONNECTION = 4  # phase 1: requests per connection before the timing
WARMUP_ROUND_TRIPS = 30  # phase 2: of each kind, after the worker answered once
TARGET_MS = 5.0  # issue 5: the gateway's synchronous p50 at most this much above the direct one
CHILD_TIMEOUT = 1800  # seconds for one run of one broker, at most
FLOORS = {"floor-asgi": "bare ASGI app on uvicorn", "floor-fastapi": "FastAPI route on uvicorn"}
# A job status as the gateway answers it: the floors send the same bytes.
STATUS = (
    b'{"id":"01a2162e-f495-7232-a1bc-b96193c1710c","task":"noop","queue":"default","state":'
    b'"queued","progress":0.0,"message":null,"attempts":0,"priority":0,"result":null,"error":'
    b'null,"errors":[],"created_at":"2026-11-26T04:48:25.749324Z","eta":null,"started_at":'
    b'null,"finished_at":null,"cancel_requested":false,"webhooks":[]}'
)
LOCATION = b"/v1/jobs/01a2162e-f495-7232-a1bc-b96193c1710c"
# (key, heading, unit) of the two tables
LOAD = [
    ("load_rps", "requests/s", "req/s"),
    ("load_p50", "p50", "ms"),
    ("load_p99", "p99", "ms"),
    ("server_cpu", "server CPU per request", "ms"),
    ("client_cpu", "load generator CPU per request", "ms"),
    ("redis_cpu", "redis-server CPU per request", "ms"),
]
ROUND_TRIP = [
    ("wait_p50", "gateway `Prefer: wait=5` p50", "ms"),
    ("wait_p99", "gateway p99", "ms"),
    ("direct_p50", "direct `enqueue(i).result(timeout=5)` p50", "ms"),
    ("direct_p99", "direct p99", "ms"),
    ("diff_p50", "p50 gateway - direct", "ms"),
]


# -- small helpers ----------------------------------------------------------------------------
def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _cpu(pid: int | None) -> float:
    """CPU seconds (user + system, every thread) a process has used so far; 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentiles(samples: list[float], prefix: str) -> dict[str, float]:
    """p50 and p99 in ms of samples in seconds, as in _common._latencies."""
    ms = sorted(s * 1000.0 for s in samples)
    return {
        f"{prefix}_p50": statistics.median(ms),
        f"{prefix}_p99": ms[round(0.99 * (len(ms) - 1))],
    }


def _fmt(value: float, unit: str) -> str:
    return f"{value:,.2f}" if unit == "ms" else f"{value:,.0f}"


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the clean-up inside has finished."""
    held = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


class Children:
    """The processes one run starts, logging to its temporary directory; ``stop_all()``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        _stop(proc)  # SIGTERM to this pid, SIGKILL after 60 s

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc)

    def ready(self, proc: subprocess.Popen[bytes], port: int, name: str) -> None:
        """Wait (60 s at most) until the server on ``port`` answers HTTP."""
        httpx = _httpx()

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log = (self.tmp / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{log}")
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise TimeoutError(f"{name} did not answer on port {port} within 60 s")


# -- the servers ------------------------------------------------------------------------------
def _serve_argv(kind: str, port: int, profile: Path | None) -> list[str]:
    if kind in FLOORS:
        factory = f"http_bench:{kind.replace('-', '_')}"
        loop = "uvloop" if _has("uvloop") else "asyncio"
        return [sys.executable, "-m", "uvicorn", "--factory", factory, "--app-dir", str(HERE),
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--lifespan",
                "off", "--loop", loop, "--timeout-graceful-shutdown", "10"]  # fmt: skip
    if profile is not None:
        return [sys.executable, str(Path(__file__).resolve()), "--child-serve", str(profile),
                "--port", str(port)]  # fmt: skip
    return [sys.executable, "-m", "dromos", "serve", "bench_app:app", "--port", str(port),
            "--log-level", "warning"]  # fmt: skip


def floor_asgi() -> Any:
    """A bare ASGI app: reads the body, answers 202 with a job status; no framework."""
    headers = [(b"content-type", b"application/json"), (b"location", LOCATION),
               (b"retry-after", b"1")]  # fmt: skip

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        more = True
        while more:  # ends with the request's body
            more = (await receive()).get("more_body", False)
        await send({"type": "http.response.start", "status": 202, "headers": headers})
        await send({"type": "http.response.body", "body": STATUS})

    return app


def floor_fastapi() -> Any:
    """FastAPI with the gateway's path: decodes the body, answers 202 with a job status."""
    import msgspec
    from fastapi import FastAPI, Request
    from starlette.responses import Response

    api = FastAPI(docs_url=None, openapi_url=None)

    async def enqueue(task: str, request: Request) -> Response:
        msgspec.json.decode(await request.body())
        headers = {"Location": LOCATION.decode(), "Retry-After": "1"}
        return Response(STATUS, 202, headers, media_type="application/json")

    # The annotations as classes: this module's are strings, and these names are local.
    enqueue.__annotations__ = {"task": str, "request": Request, "return": Response}
    api.add_api_route("/v1/tasks/{task}/jobs", enqueue, methods=["POST"], status_code=202)
    return api


def serve_profiled(opts: argparse.Namespace) -> None:
    """``dromos serve bench_app:app``, profiled: the event loop's thread between SIGUSR1 and
    SIGUSR2 (stats then written to ``<file>.loop``), every other thread (the SQLite broker's)
    from its start (written beside it, ``<file>.threads``, on SIGUSR2). CPU time per thread."""
    import cProfile
    import marshal
    import threading

    from dromos.cli import main as dromos_main

    out = Path(opts.child_serve)
    loop = cProfile.Profile(time.thread_time)
    others: list[cProfile.Profile] = []

    def in_new_thread(*_: Any) -> None:  # the first profile event of each new thread
        sys.setprofile(None)
        profiler = cProfile.Profile(time.thread_time)
        others.append(profiler)
        profiler.enable()

    def dump(*_: Any) -> None:
        loop.disable()
        for suffix, profilers in (("loop", [loop]), ("threads", others)):
            stats: dict[Any, list[Any]] = {}
            for p in profilers:
                p.snapshot_stats()  # reads another thread's profiler without stopping it
                for key, (cc, nc, tt, ct, by) in p.stats.items():  # type: ignore[attr-defined]
                    old = stats.setdefault(key, [0, 0, 0.0, 0.0, {}])
                    old[:4] = [old[0] + cc, old[1] + nc, old[2] + tt, old[3] + ct]
                    old[4].update(by)  # who called it (threads seldom share a function)
            Path(f"{out}.{suffix}.tmp").write_bytes(marshal.dumps(stats))
            Path(f"{out}.{suffix}.tmp").rename(f"{out}.{suffix}")

    threading.setprofile(in_new_thread)
    signal.signal(signal.SIGUSR1, lambda *_: loop.enable())
    signal.signal(signal.SIGUSR2, dump)
    sys.argv = ["dromos", "serve", "bench_app:app", "--port", str(opts.port), "--log-level",
                "warning"]  # fmt: skip
    dromos_main()


# -- phase 1: throughput ----------------------------------------------------------------------
def _httpx() -> Any:
    """httpx, minus a failed import per request: httpcore's async lock looks for sniffio on
    every request (``import sniffio``, which anyio 4 no longer installs), and a failed import
    searches sys.path again each time: about 0.8 ms of the load generator's CPU per request
    here. An entry of None in sys.modules makes that import fail at once, as it does anyway."""
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]
    import httpx

    return httpx


async def _post_all(clients: list[Any], ids: Iterator[int]) -> list[tuple[float, int]]:
    """One POST per id, one at a time on each connection, all connections at once."""
    got: list[tuple[float, int]] = []

    async def connection(client: Any) -> None:
        for i in ids:  # each takes the next id: bounded by ``ids``
            t0 = time.perf_counter()
            answer = await client.post(ROUTE, content=b'{"args":[%d]}' % i, headers=JSON_TYPE)
            got.append((time.perf_counter() - t0, answer.status_code))

    await asyncio.gather(*(connection(c) for c in clients))
    return got


async def _load(opts: argparse.Namespace, port: int, pids: dict[str, Any]) -> dict[str, float]:
    """``--jobs`` POSTs, ``--concurrency`` at a time, after a warm-up; rate, latency, CPU.

    One ``AsyncClient`` per connection (a pool of one): httpcore's pool scans every
    connection for every request, which costs its caller more CPU the more connections it
    holds (``--one-pool``: all connections in one client, as a reference).
    """
    httpx = _httpx()
    n, conc = opts.jobs, opts.concurrency
    pools, per_pool = (1, conc) if opts.one_pool else (conc, 1)
    limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
    base = f"http://127.0.0.1:{port}"
    clients = [httpx.AsyncClient(base_url=base, limits=limits, timeout=60) for _ in range(pools)]
    clients *= per_pool  # the one pool, once per connection
    try:
        warm = await _post_all(clients, iter(range(-conc * WARMUP_PER_CONNECTION, 0)))
        if pids.get("profile"):
            os.kill(pids["profile"], signal.SIGUSR1)
            await clients[0].get("/healthz")  # the server runs Python, so the handler runs
        cpu0 = {k: _cpu(pids.get(k)) for k in ("server", "redis")}
        client0, t0 = time.process_time(), time.perf_counter()
        got = await _post_all(clients, iter(range(n)))
        wall = time.perf_counter() - t0
        cpu = {k: (_cpu(pids.get(k)) - v) * 1000 / n for k, v in cpu0.items()}
        client_ms = (time.process_time() - client0) * 1000 / n
    finally:
        for client in clients[:pools]:
            await client.aclose()
    bad = sum(1 for _, code in warm + got if code != 202)
    if bad:
        raise RuntimeError(f"{bad} of {len(warm) + len(got)} answers were not 202")
    out = {"load_rps": n / wall, "server_cpu": cpu["server"], "client_cpu": client_ms}
    if pids.get("redis"):
        out["redis_cpu"] = cpu["redis"]
    out.update(_percentiles([s for s, _ in got], "load"))
    return out


def _throughput(opts: argparse.Namespace, kids: Children, url: str | None) -> dict[str, Any]:
    """Phase 1 on a fresh store (``url``), or on a floor (``url`` None); the profile if asked."""
    kind = opts.child
    profile = Path(opts.tmp) / "gateway.prof" if opts.profile and url else None
    port = _free_port()
    env = {**os.environ, "DROMOS_BROKER": url or ""}
    server = kids.start(f"{kind}-server", _serve_argv(kind, port, profile), env)
    kids.ready(server, port, f"{kind}-server")
    pids = {"server": server.pid, "redis": opts.redis_pid, "profile": profile and server.pid}
    n = opts.jobs
    figures = _run_loop(_load(opts, port, pids))
    found: dict[str, Any] = {"figures": figures}
    if profile is not None:
        os.kill(server.pid, signal.SIGUSR2)
        _run_loop(_ping(port))
        found["profile"] = _profile_summary(
            profile, n, n + opts.concurrency * WARMUP_PER_CONNECTION
        )
    kids.stop(server)
    if url is not None:
        queued = _run_loop(_queued(url))
        expected = n + opts.concurrency * WARMUP_PER_CONNECTION
        if queued != expected:
            raise RuntimeError(f"{queued} jobs queued after {expected} answers 202")
    return found


async def _ping(port: int) -> None:
    httpx = _httpx()

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        await client.get("/healthz")


async def _queued(url: str) -> int:
    app = _app(url)
    try:
        stats = await (await app.abroker()).queues()
    finally:
        await app.aclose()
    return sum(q.counts.get("queued", 0) for q in stats)


def _run_loop(coro: Any) -> Any:
    """Run ``coro`` on uvloop when installed, as the gateway and the worker do."""
    factory = None
    if _has("uvloop"):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


# -- phase 2: the synchronous round trip, over HTTP and direct ---------------------------------
def _app(url: str) -> Any:
    """A new app on ``url`` with bench_app's ``noop`` (the environment wins over App's URL)."""
    import bench_app  # type: ignore[import-not-found]
    import dromos

    os.environ["DROMOS_BROKER"] = url
    app = dromos.App("bench", url)
    app.task(name=bench_app.noop.name)(bench_app.noop.func)
    return app


SEGMENTS = ["request", "queued", "run", "answer"]  # the round trip cut at the job's stamps
SEGMENT_HEADINGS = [
    "sent -> `created_at` (request, validation)",
    "created -> started (insert, worker pickup)",
    "started -> finished (the no-op, settle)",
    "finished -> answer in hand (wake-up, reply)",
]


def _stamps(status: Any) -> tuple[float, float, float]:
    """created_at, started_at, finished_at as epoch seconds, from a status or its JSON."""
    keys = ("created_at", "started_at", "finished_at")
    times = [status[k] if isinstance(status, dict) else getattr(status, k) for k in keys]
    as_dt = [datetime.fromisoformat(t) if isinstance(t, str) else t for t in times]
    return as_dt[0].timestamp(), as_dt[1].timestamp(), as_dt[2].timestamp()


def _round_trip_calls(client: Any, task: Any) -> dict[str, Callable[[int], Any]]:
    """The two round trips: each returns the job's stamps (or its id), or None if it missed."""
    from dromos import DromosError

    def via_gateway(i: int) -> Any:
        answer = client.post(ROUTE, content=b'{"args":[%d]}' % i, headers=WAIT)
        body = answer.json()
        ok = answer.status_code == 200 and body.get("result") == i
        return _stamps(body) if ok else None

    def direct(i: int) -> Any:
        try:
            job = task.enqueue(i)
            return job.id if job.result(timeout=5) == i else None
        except DromosError:  # ResultTimeout, JobFailed
            return None

    return {"wait": via_gateway, "direct": direct}


def _round_trips(opts: argparse.Namespace, kids: Children, url: str) -> dict[str, Any]:
    """Phase 2: the gateway and one worker on a fresh store; both round trips, in turn.

    The figures, and each sample in ms (in the JSON only)."""
    httpx = _httpx()
    port = _free_port()
    env = {**os.environ, "DROMOS_BROKER": url}
    server = kids.start(f"{opts.child}-gateway", _serve_argv("gateway", port, None), env)
    worker_argv = [sys.executable, "-m", "dromos", "worker", "bench_app:app", "-c",
                   str(WORKER_CONCURRENCY), "--log-level", "warning"]  # fmt: skip
    kids.start(f"{opts.child}-worker", worker_argv, env)
    kids.ready(server, port, f"{opts.child}-gateway")
    app = _app(url)
    task = app.tasks["noop"]
    marks: dict[str, list[Any]] = {"wait": [], "direct": []}
    try:
        task.enqueue(-1).result(timeout=60)  # the worker is up
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            calls = _round_trip_calls(client, task)
            for i in range(WARMUP_ROUND_TRIPS):
                for call in calls.values():
                    call(-i)
            for i in range(opts.samples):  # in turn, each first every other time
                for name in ("wait", "direct") if i % 2 else ("direct", "wait"):
                    t0, sent = time.perf_counter(), time.time()
                    got = calls[name](i)
                    marks[name].append((time.perf_counter() - t0, sent, time.time(), got))
        marks["direct"] = [(*m[:3], m[3] and _stamps(app.job(m[3]).status()))
                           for m in marks["direct"]]  # fmt: skip
    finally:
        app.close()
    out: dict[str, float] = {}
    for name, got in marks.items():
        out.update(_percentiles([m[0] for m in got], name))
        out[f"{name}_misses"] = float(sum(1 for m in got if m[3] is None))
        cuts = [(m[1], *m[3], m[2]) for m in got if m[3] is not None]
        for k, segment in enumerate(SEGMENTS):
            if cuts:
                out[f"{name}_{segment}"] = statistics.median(c[k + 1] - c[k] for c in cuts) * 1e3
    out["diff_p50"] = out["wait_p50"] - out["direct_p50"]
    samples = {name: [round(m[0] * 1e3, 3) for m in got] for name, got in marks.items()}
    return {"figures": out, "samples": samples}


# -- the profile's summary ---------------------------------------------------------------------
GROUPS = [  # (group, substrings of "file:function" of a profile entry), the first match wins
    ("dromos.http (the gateway's routes)", ("/dromos/http/",)),
    ("dromos SQLite broker, sqlite3", ("/dromos/brokers/sqlite", "sqlite3")),
    ("dromos Redis broker, redis-py", ("/dromos/brokers/redis", "/redis/", "hiredis")),
    ("dromos (app, task, job, coalescing)", ("/dromos/",)),
    ("FastAPI", ("/fastapi/",)),
    ("Starlette", ("/starlette/",)),
    ("pydantic", ("pydantic",)),
    ("uvicorn, h11, httptools (HTTP)", ("/uvicorn/", "/h11/", "httptools")),
    ("anyio", ("/anyio/",)),
    ("msgspec", ("msgspec",)),
    ("event loop (uvloop, asyncio)", ("uvloop", "/asyncio/")),
]


def _grouped(stats: dict[Any, Any]) -> tuple[dict[str, float], list[tuple[float, str]]]:
    """Own time (tottime) by group. Built-ins and the standard library count for the groups
    that called them, in proportion to the time each caller spent in them; a caller that is
    itself ungrouped counts for its own main caller's group (a few levels up at most)."""

    def own(key: tuple[str, int, str]) -> str:
        where = f"{key[0]}:{key[2]}"
        return next((g for g, keys in GROUPS if any(k in where for k in keys)), "other")

    def resolved(key: tuple[str, int, str], depth: int = 0) -> str:
        group = own(key)
        callers = stats.get(key, [{}] * 5)[4]
        if group != "other" or not callers or depth > 8:
            return group
        return resolved(max(callers, key=lambda c: callers[c][2]), depth + 1)

    groups: dict[str, float] = {}
    top = []
    for key, (_, _, tottime, _, callers) in stats.items():
        file, line, func = key
        shares = {key: 1.0}
        total = sum(c[2] for c in callers.values())
        if own(key) == "other" and total > 0:
            shares = {c: v[2] / total for c, v in callers.items()}
        for caller, share in shares.items():
            group = resolved(caller)
            groups[group] = groups.get(group, 0.0) + tottime * share
        short = f"{func}" if file == "~" else f"{'/'.join(Path(file).parts[-2:])}:{line} {func}"
        top.append((tottime, short))
    return groups, sorted(top, reverse=True)[:15]


def _profile_summary(profile: Path, measured: int, lifetime: int) -> dict[str, Any]:
    """CPU ms per request by group: the loop's thread over the measured requests, the other
    threads over every request of their life (the warm-up's too)."""
    import marshal

    deadline = time.monotonic() + 30
    paths = [Path(f"{profile}.loop"), Path(f"{profile}.threads")]
    while not all(p.exists() for p in paths) and time.monotonic() < deadline:
        time.sleep(0.05)
    loop, threads = (marshal.loads(p.read_bytes()) for p in paths)
    groups, top = _grouped(loop)
    thread_groups, thread_top = _grouped(threads)
    return {
        "loop_ms": {g: t * 1000 / measured for g, t in groups.items()},
        "threads_ms": {g: t * 1000 / lifetime for g, t in thread_groups.items()},
        "top_loop": [(t * 1000 / measured, f) for t, f in top],
        "top_threads": [(t * 1000 / lifetime, f) for t, f in thread_top[:5]],
    }


# -- a child: one run of one broker (or floor) ------------------------------------------------
def child(opts: argparse.Namespace) -> dict[str, Any]:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: processes stopped
    sys.path.insert(0, str(HERE))
    kids = Children(Path(opts.tmp))

    def url(phase: str) -> str:
        if opts.child == "sqlite":
            return f"sqlite:///{opts.tmp}/{phase}.db"
        return f"{opts.url}?prefix=bench-http-{phase}"

    try:
        if opts.child in FLOORS:
            return _throughput(opts, kids, None)
        found = _throughput(opts, kids, url("load"))
        trips = _round_trips(opts, kids, url("wait"))
        found["figures"].update(trips["figures"])
        return {**found, "samples": trips["samples"]}
    finally:
        with _signals_held():
            kids.stop_all()


# -- the parent: the private Redis, repeats, tables, JSON --------------------------------------
def _free_port() -> int:
    from redis_bench import _free_port as free  # never 6379

    return free()


def _run_child(kind: str, opts: argparse.Namespace, url: str | None, redis_pid: int | None
               ) -> dict[str, Any] | None:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix=f"bench-http-{kind}-") as tmp:
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--tmp", tmp,
                "--jobs", str(opts.jobs), "--concurrency", str(opts.concurrency),
                "--samples", str(opts.samples)]  # fmt: skip
        argv += ["--url", url] if url else []
        argv += ["--redis-pid", str(redis_pid)] if redis_pid else []
        argv += ["--profile"] if opts.profile else []
        argv += ["--one-pool"] if opts.one_pool else []
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=HERE)
        try:
            stdout, _ = proc.communicate(timeout=CHILD_TIMEOUT)
        except BaseException:
            _stop(proc)  # SIGTERM: the child stops its processes, then exits
            raise
    if proc.returncode != 0:
        print(f"  {kind} failed (exit {proc.returncode}); left out of this run", file=sys.stderr)
        return None
    return json.loads(stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


NAMES = {"sqlite": "SQLite", "redis": "Redis"}


def _tables(summary: dict[str, dict[str, dict[str, float]]], opts: argparse.Namespace
            ) -> list[str]:  # fmt: skip
    rows = [k for k in ("sqlite", "redis", *FLOORS) if k in summary]
    head = (f"| `POST {ROUTE}` -> 202 (N = {opts.jobs:,}, {opts.concurrency} at a time, median "
            f"of {opts.repeat}, min-max) |")  # fmt: skip
    lines = [head + "".join(f" {h} ({u}) |" for _, h, u in LOAD), "|---|" + "---|" * len(LOAD)]
    for k in rows:
        label = f"gateway, {NAMES[k]}" if k in NAMES else f"floor: {FLOORS[k]}"
        cells = "".join(f" {_cell(summary[k].get(key), u, 2)} |" for key, _, u in LOAD)
        lines.append(f"| {label} |{cells}")
    rows = [k for k in ("sqlite", "redis") if k in summary]
    if rows:
        head = (f"| round trip, one at a time ({opts.samples} each, 1 worker -c "
                f"{WORKER_CONCURRENCY}, median of {opts.repeat}) |")  # fmt: skip
        lines += ["", head + "".join(f" {h} ({u}) |" for _, h, u in ROUND_TRIP)]
        lines.append("|---|" + "---|" * len(ROUND_TRIP))
        for k in rows:
            cells = "".join(f" {_cell(summary[k].get(key), u, 2)} |" for key, _, u in ROUND_TRIP)
            lines.append(f"| {NAMES[k]} |{cells}")
        head = ("| where a round trip's time goes (median of each segment, cut at the job's "
                "stamps; medians do not add up; Redis keeps stamps to the ms) |")  # fmt: skip
        lines += ["", head + "".join(f" {h} (ms) |" for h in SEGMENT_HEADINGS)]
        lines.append("|---|" + "---|" * len(SEGMENTS))
        for k in rows:
            for path, label in (("wait", "gateway"), ("direct", "direct")):
                cells = "".join(f" {_cell(summary[k].get(f'{path}_{seg}'), 'ms', 2)} |"
                                for seg in SEGMENTS)  # fmt: skip
                lines.append(f"| {NAMES[k]}, {label} |{cells}")
    return lines


def _targets(summary: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    out = []
    for k in ("sqlite", "redis"):
        diff = summary.get(k, {}).get("diff_p50")
        if diff is not None:
            mark = "x" if diff["median"] <= TARGET_MS else " "
            runs = f"{diff['min']:.2f}-{diff['max']:.2f}"
            out.append(f"- [{mark}] {NAMES[k]}: gateway p50 - direct p50 <= {TARGET_MS:g} ms: "
                       f"{diff['median']:.2f} ms (runs {runs})")  # fmt: skip
        misses = sum(summary.get(k, {}).get(f"{m}_misses", {}).get("max", 0) for m in
                     ("wait", "direct"))  # fmt: skip
        if misses:
            out.append(f"- {NAMES[k]}: some round trips did not end within 5 s (see the JSON)")
    return out


def _profile_lines(profiles: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for kind, p in profiles.items():
        total = sum(p["loop_ms"].values())
        lines += ["", f"Where phase 1's gateway CPU goes, {NAMES[kind]} (cProfile, CPU time; "
                  f"event loop thread {total:.3f} ms per request, profiled; built-ins and the "
                  "standard library counted with their callers):", "",
                  "| group | ms per request | share |", "|---|---|---|"]  # fmt: skip
        for group, ms in sorted(p["loop_ms"].items(), key=lambda x: -x[1]):
            if ms >= 0.0005:
                lines.append(f"| {group} | {ms:.3f} | {ms / total:.0%} |")
        for group, ms in sorted(p["threads_ms"].items(), key=lambda x: -x[1]):
            lines.append(f"| other threads: {group} | {ms:.3f} | |")
        lines += ["", "| top functions, event loop thread (tottime) | ms per request |",
                  "|---|---|"]  # fmt: skip
        lines += [f"| `{f}` | {ms:.3f} |" for ms, f in p["top_loop"]]
    return lines


def _versions(redis_server: str | None) -> dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    for dist in ("dromos", "fastapi", "starlette", "uvicorn", "httpx", "h11", "httptools",
                 "uvloop", "pydantic", "msgspec", "redis", "hiredis"):  # fmt: skip
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    found["uvicorn http"] = "httptools" if _has("httptools") else "h11"
    if redis_server:
        text = subprocess.run([redis_server, "--version"], capture_output=True, text=True).stdout
        found["redis-server"] = text.split("v=", 1)[-1].split()[0] if "v=" in text else text
    return found


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5000, help="requests in phase 1 (N)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (C)")
    parser.add_argument("--samples", type=int, default=300, help="round trips of each kind")
    parser.add_argument("--repeat", type=int, default=3, help="runs; medians shown")
    parser.add_argument("--brokers", nargs="+", choices=["sqlite", "redis"],
                        default=["sqlite", "redis"])  # fmt: skip
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    parser.add_argument("--no-floors", action="store_true", help="skip the two floors")
    parser.add_argument("--profile", action="store_true", help="cProfile phase 1's gateway")
    parser.add_argument("--one-pool", action="store_true", help="phase 1's connections in one "
                        "httpx client (its pool then costs more per request)")  # fmt: skip
    parser.add_argument("--child", choices=["sqlite", "redis", *FLOORS], help=argparse.SUPPRESS)
    parser.add_argument("--child-serve", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--redis-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser


def _measure(opts: argparse.Namespace) -> tuple[dict[str, list[Any]], dict[str, Any], Any]:
    """Every run: the private Redis started first and stopped by its pid last."""
    redis = None
    if "redis" in opts.brokers:
        from redis_bench import PrivateRedis, _client

        redis = PrivateRedis(opts.redis_server)
        print(f"private redis-server pid {redis.proc.pid} on port {redis.port}", file=sys.stderr)
    kinds = [*opts.brokers, *([] if opts.no_floors else FLOORS)]
    runs: dict[str, list[Any]] = {k: [] for k in kinds}
    profiles: dict[str, Any] = {}
    samples: dict[str, list[Any]] = {}
    try:
        for r in range(opts.repeat):
            for kind in kinds:
                print(f"run {r + 1}/{opts.repeat}: {kind} ...", file=sys.stderr, flush=True)
                url = pid = None
                if kind == "redis" and redis is not None:
                    _client(redis.port).flushall()
                    url, pid = f"redis://127.0.0.1:{redis.port}/0", redis.proc.pid
                got = _run_child(kind, opts, url, pid)
                if got is not None:
                    runs[kind].append(got["figures"])
                    if "samples" in got:
                        samples.setdefault(kind, []).append(got["samples"])
                    if "profile" in got:
                        profiles.setdefault(kind, got["profile"])  # the first run's
    finally:
        with _signals_held():
            if redis is not None:
                redis.stop()
    return runs, profiles, samples


def main() -> None:
    opts = _parser().parse_args()
    if opts.child_serve:
        serve_profiled(opts)
        return
    if opts.child:
        print(json.dumps(child(opts)))
        return
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so that every process is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_before = os.getloadavg()
    runs, profiles, samples = _measure(opts)
    summary = {kind: _summary(got) for kind, got in runs.items() if got}
    lines = _tables(summary, opts)
    targets = _targets(summary)
    load = f"load average {load_before[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    print()
    print("\n".join(lines))
    if targets:
        print("\nIssue 5's target:\n")
        print("\n".join(targets))
    if opts.profile:
        print("\n(profiled: phase 1's gateway ran under cProfile, slower than unprofiled)")
        print("\n".join(_profile_lines(profiles)))
    print(f"\n{os.cpu_count()} CPUs; {load}")

    write_results(
        "http",
        {
            "options": {k: v for k, v in vars(opts).items() if v is not None},
            "machine": {"load": load},
            "versions": _versions(opts.redis_server if "redis" in opts.brokers else None),
            "summary": summary,
            "table": lines,
            "targets": targets,
            "profiles": profiles,
            "runs": runs,
            "round_trip_samples_ms": samples,
        },
    )


if __name__ == "__main__":
    main()
