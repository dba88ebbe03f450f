"""Real ``dromos worker`` processes on a SQLite file in ``tmp_path``, judged by a ledger.

The ``cluster`` fixture starts workers as the command line does (``python -m dromos worker
ledger_app:app ...``), each in its own session so that teardown can SIGKILL the whole process
group (a supervisor and its children) even when a test fails half-way. Worker output goes to
``workers.log`` in ``tmp_path``; its tail is shown when a wait times out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import pytest

import dromos
from tests import pg_servers
from tests.integration.ledger_app import BOOT, create_app
from tests.pg_servers import private_postgres
from tests.redis_servers import SHARED_HOST, SHARED_PORT, delete_prefix, new_prefix, private_redis
from tests.servers import require_server

__all__ = [
    "HERE",
    "Cluster",
    "Entry",
    "Ledger",
    "Producer",
    "alive",
    "children",
    "cluster",
    "private_postgres",
    "private_redis",
]

T = TypeVar("T")
HERE = Path(__file__).parent


class Entry(NamedTuple):
    """One line of the ledger: one event of one run of one job."""

    job_id: str
    attempt: int
    pid: int
    outcome: str


class Ledger:
    """The file the tasks append to; read it whole each time (it is small)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[Entry]:
        if not self.path.exists():
            return []
        rows = []
        # A read can meet a line whose write is half copied (a read takes no lock against
        # a write to a regular file): only whole lines, which end with their newline, count.
        for line in self.path.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            job_id, attempt, pid, outcome = line.split()
            rows.append(Entry(job_id, int(attempt), int(pid), outcome))
        return rows

    def runs(self, outcome: str, job_id: str | None = None) -> list[Entry]:
        """Entries with this outcome (of one job, if given)."""
        return [
            e
            for e in self.entries()
            if e.outcome == outcome and (job_id is None or e.job_id == job_id)
        ]

    def count(self, outcome: str) -> collections.Counter[str]:
        """How many times each job id wrote ``outcome``."""
        return collections.Counter(e.job_id for e in self.runs(outcome))

    def boots(self) -> list[int]:
        """Pids of the worker processes that started, in order."""
        return [e.pid for e in self.runs(BOOT)]


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (from /proc)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return {int(p) for p in path.read_text().split()}
    except FileNotFoundError:
        return set()


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Cluster:
    """Worker processes, the test's own app on the same broker, and the ledger.

    The broker is a SQLite file in ``tmp_path`` unless ``url`` names another one.
    """

    def __init__(self, tmp_path: Path, url: str | None = None, backend: str | None = None) -> None:
        self.dir = tmp_path
        self.url = url or f"sqlite:///{tmp_path / 'x.db'}"
        self.backend = backend  # the state store, for a broker that keeps none (RabbitMQ)
        self.ledger = Ledger(tmp_path / "ledger.txt")
        self.log = tmp_path / "workers.log"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.app = create_app(self.url, backend=backend)

    # -- processes --------------------------------------------------------------------------
    def start(
        self, *args: str, lease: float = 30.0, max_recoveries: int = 3
    ) -> subprocess.Popen[bytes]:
        """Start ``dromos worker ledger_app:app *args`` with this cluster's broker and ledger."""
        env = {
            **os.environ,
            "DROMOS_BROKER": self.url,
            **({"DROMOS_BACKEND": self.backend} if self.backend else {}),
            "LEDGER_PATH": str(self.ledger.path),
            "LEDGER_LEASE": str(lease),
            "LEDGER_MAX_RECOVERIES": str(max_recoveries),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        }
        cmd = [sys.executable, "-m", "dromos", "worker", "ledger_app:app", *args]
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                cmd, cwd=self.dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def wait_for_boots(self, n: int, timeout: float = 30.0) -> list[int]:
        """Wait until ``n`` worker processes in all have started; return their pids."""

        def started() -> list[int] | None:
            pids = self.ledger.boots()
            return pids[:n] if len(pids) >= n else None

        return self.wait_until(started, timeout, f"{n} worker process(es) to start")

    def wait_until_serving(self, pids: set[int], timeout: float = 60.0) -> set[str]:
        """Wait until each of these worker processes has started a job; return the ids of the
        naps that it took (each has ended by then).

        A boot line is written when a process loads the app, before its first claim: a process
        up earlier than the others can run a whole burst of quick jobs alone. Naps reach the
        others as they come up: each round is more than one process holds at once (twice its
        concurrency), and rounds go on until every process has started one.
        """
        nap = self.task("nap")
        ids: set[str] = set()
        deadline = time.monotonic() + timeout
        while True:
            ids |= {j.id for j in nap.enqueue_many([(0.2,)] * 100)}
            round_end = time.monotonic() + 2.0
            while time.monotonic() < round_end:
                started = {e.pid for e in self.ledger.runs("start") if e.job_id in ids}
                if pids <= started:
                    for job_id in ids:
                        self.app.job(job_id).result(timeout=max(1.0, deadline - time.monotonic()))
                    return ids
                time.sleep(0.05)
            if time.monotonic() > deadline:
                raise AssertionError(f"worker processes {sorted(pids - started)} never took a job")

    def close(self) -> None:
        """Kill every process group this cluster started, then close the app."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self.app.close()

    # -- the broker, from the test process ----------------------------------------------------
    def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        """Run a broker coroutine function on the app's blocking portal."""
        return self.app.portal.call(fn, *args, **kwargs)

    def task(self, name: str) -> dromos.Task[Any, Any]:
        return self.app.tasks[name]

    def counts(self) -> collections.Counter[str]:
        """Jobs per state, over every queue."""
        total: collections.Counter[str] = collections.Counter()
        for q in self.call(self.app.broker.queues):
            total.update(q.counts)
        return total

    def status(self, job_id: str) -> dromos.JobStatus:
        return self.app.job(job_id).status()

    # -- waiting -----------------------------------------------------------------------------
    def wait_until(self, predicate: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n"
                                     f"--- workers.log (tail) ---\n{self.log_tail()}")  # fmt: skip
            if self.procs and all(p.poll() is not None for p in self.procs):
                raise AssertionError(f"every worker process exited while waiting for {what}\n"
                                     f"--- workers.log (tail) ---\n{self.log_tail()}")  # fmt: skip
            time.sleep(0.02)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class Producer(threading.Thread):
    """Enqueues ``jobs`` noop jobs in batches of ``batch`` through the normal API while the
    broker fails (the fault tests); a batch whose enqueue raised one of ``errors`` is retried
    (as new jobs) until one returns. Only the ids of batches whose enqueue returned count."""

    def __init__(
        self,
        cluster: Cluster,
        jobs: int,
        batch: int,
        errors: tuple[type[BaseException], ...] = (dromos.BrokerError,),
        tries: int = 2_000,
    ) -> None:
        super().__init__(name="producer", daemon=True)
        self.cluster, self.jobs, self.batch, self.errors_caught = cluster, jobs, batch, errors
        self.tries = tries  # of one batch, before the producer gives up (bounded)
        self.accepted: list[str] = []
        self.refused = 0  # enqueue calls that raised
        self.errors: list[str] = []
        self.failure: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        noop = self.cluster.task("noop")
        try:
            for start in range(0, self.jobs, self.batch):
                for _ in range(self.tries):
                    if self.stop.is_set():
                        return
                    try:
                        jobs = noop.enqueue_many([(n,) for n in range(start, start + self.batch)])
                    except self.errors_caught as exc:  # only what raised is retried
                        self.refused += 1
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                        time.sleep(0.05)
                        continue
                    self.accepted += [j.id for j in jobs]
                    break
                else:
                    raise AssertionError(f"batch at {start} never accepted: {self.errors[-1]}")
        except BaseException as exc:
            self.failure = exc

    def run_through(
        self, outages: Sequence[tuple[int, Callable[[], object]]], wait: float
    ) -> set[str]:
        """Produce every job, calling each outage once ``mark`` jobs were accepted (in the
        calling thread); the ids of every job whose enqueue returned: all of them."""
        self.start()
        try:
            for mark, outage in outages:
                self.cluster.wait_until(
                    lambda mark=mark: len(self.accepted) >= mark or self.failure,
                    wait,
                    f"{mark} accepted jobs",
                )
                outage()
            self.join(timeout=wait)
            assert not self.is_alive(), "the producer did not finish"
        finally:
            self.stop.set()
            self.join(timeout=10.0)
        assert self.failure is None, self.failure
        accepted = set(self.accepted)
        assert len(accepted) == self.jobs
        return accepted

    def ledger(
        self, accepted: set[str], wait: float
    ) -> tuple[collections.Counter[str], int, set[str]]:
        """Once every accepted job ran: the ledger's runs per job, the duplicate runs, and the
        jobs run that were not accepted (stored by an enqueue that raised)."""
        cluster = self.cluster
        cluster.wait_until(
            lambda: accepted <= set(cluster.ledger.count("ok")),
            wait,
            "every accepted job to succeed",
        )
        oks = cluster.ledger.count("ok")
        return oks, sum(n - 1 for n in oks.values()), set(oks) - accepted


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Workers on a SQLite file: for the scenarios specific to one machine (-p, poison)."""
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


@contextlib.contextmanager
def redis_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Workers on the shared Redis under a fresh prefix; only that prefix's keys are deleted."""
    require_server("redis", SHARED_HOST, SHARED_PORT)
    prefix = new_prefix()
    c = Cluster(tmp_path, f"redis://{SHARED_HOST}:{SHARED_PORT}/0?prefix={prefix}")
    try:
        yield c
    finally:
        c.close()
        delete_prefix(SHARED_HOST, SHARED_PORT, prefix)


@contextlib.contextmanager
def postgres_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Workers on the shared PostgreSQL (database ``test``) in a fresh schema, dropped with
    everything in it afterwards (after every worker is killed)."""
    dsn = pg_servers.require_shared_postgres()
    schema = pg_servers.new_schema()
    c = Cluster(tmp_path, f"{dsn}?schema={schema}")
    try:
        yield c
    finally:
        c.close()
        pg_servers.drop_schema(schema)


async def _registered(store: str) -> set[Any]:
    """The queues and exchanges the RabbitMQ broker registered in its store ``store``."""
    from dromos.brokers import create_broker
    from dromos.brokers.rabbitmq_transport import Name

    records = create_broker(store)
    await records.open()
    try:
        return {Name("queue", n) for n in await records.names_list("queue")} | {
            Name("exchange", n) for n in await records.names_list("exchange")
        }
    finally:
        await records.close()


@contextlib.contextmanager
def rabbitmq_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Workers on the shared RabbitMQ node under a fresh name prefix, their records in the
    shared Redis under a fresh key prefix; both deleted afterwards (after every worker is
    killed)."""
    require_server("rabbitmq", "127.0.0.1", 5672)
    require_server("redis", SHARED_HOST, SHARED_PORT)
    from dromos.brokers.rabbitmq_events_log import LogNames
    from dromos.brokers.rabbitmq_transport import BANDS, AmqpTransport, Name

    prefix = new_prefix()
    url = f"amqp://guest:guest@127.0.0.1:5672/?prefix={prefix}"
    store = f"redis://{SHARED_HOST}:{SHARED_PORT}/0?prefix={prefix}"
    c = Cluster(tmp_path, url, backend=store)
    try:
        yield c
    finally:
        c.close()
        transport = AmqpTransport(url)
        names = transport.names
        queues = {t.queue for t in c.app.tasks.values()} | {"default"}
        declared = {Name("queue", names.queue(q, b)) for q in queues for b in BANDS}
        declared |= {Name("exchange", names.jobs), Name("exchange", names.dlx),
                     Name("queue", names.dead)}  # fmt: skip
        # The event bus's, also when a worker killed between declaring and registering them
        # left them out of the store (such queues were found left on the shared node).
        bus = LogNames(prefix)
        declared |= {Name("queue", bus.log), Name("exchange", bus.exchange)}
        declared |= {Name("queue", bus.group(s.group)) for s in c.app.subscribers}
        registered = asyncio.run(_registered(store))  # the event bus's, by any worker
        asyncio.run(transport.delete_names(declared | transport.declared | registered))
        delete_prefix(SHARED_HOST, SHARED_PORT, prefix)


@pytest.fixture(params=["sqlite", "redis", "postgres", "rabbitmq"])
def any_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """The same process-level scenario on every broker (a new broker adds a param here)."""
    if request.param == "redis":
        with redis_cluster(tmp_path) as c:
            yield c
    elif request.param == "rabbitmq":
        with rabbitmq_cluster(tmp_path) as c:
            yield c
    elif request.param == "postgres":
        with postgres_cluster(tmp_path) as c:
            yield c
    else:
        c = Cluster(tmp_path)
        try:
            yield c
        finally:
            c.close()
