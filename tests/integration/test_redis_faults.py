"""Real worker processes on Redis under faults, judged by the ledger (RELIABILITY #1-#4).

Scenarios 1 and 2 (kill -9, SIGTERM) run on the shared server under a key prefix of their
own, deleted afterwards; scenario 3 kills and restarts a private ``redis-server --appendonly
yes --appendfsync always`` while jobs are enqueued and run; the connection tests cut the
clients' connections of a private server, refuse a command the idle worker sends, and point
at a closed port. Every worker is killed at teardown (``Cluster.close``), before the server
stops or the prefix is deleted.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

import dromos
from dromos import JobState
from tests.integration.conftest import HERE, Cluster
from tests.redis_servers import (
    SHARED_HOST,
    SHARED_PORT,
    PrivateRedis,
    delete_prefix,
    new_prefix,
)

pytestmark = pytest.mark.slow

LEASE = 2.0
GRACE = 3.0
EXIT_MARGIN = 1.5  # seconds after the grace period by which the process must be gone


def _require_shared_redis() -> None:
    try:
        socket.create_connection((SHARED_HOST, SHARED_PORT), timeout=0.5).close()
    except OSError as exc:
        why = f"redis is not reachable at {SHARED_HOST}:{SHARED_PORT} ({exc})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why}: CI must run the Redis tests")
        pytest.skip(why)


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Cluster]:
    """Workers on the shared Redis under a fresh prefix; only that prefix's keys are deleted."""
    _require_shared_redis()
    prefix = new_prefix()
    cluster = Cluster(tmp_path, f"redis://{SHARED_HOST}:{SHARED_PORT}/0?prefix={prefix}")
    try:
        yield cluster
    finally:
        cluster.close()
        delete_prefix(SHARED_HOST, SHARED_PORT, prefix)


@pytest.fixture
def durable(private_redis: Callable[..., PrivateRedis]) -> PrivateRedis:
    """A private server that fsyncs every write to its AOF (stopped by ``private_redis``)."""
    return private_redis(appendonly=True)


@pytest.fixture
def on_durable(tmp_path: Path, durable: PrivateRedis) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, durable.url)
    try:
        yield cluster
    finally:
        cluster.close()


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- 1. kill -9 mid-job ----------------------------------------------------------------------
def test_job_of_a_worker_killed_on_redis_runs_again_after_its_lease(shared: Cluster) -> None:
    job = shared.task("nap").enqueue(60.0, later=0.0)
    first = shared.start("-c", "2", lease=LEASE)
    started = shared.wait_until(lambda: shared.ledger.runs("start", job.id), 30.0, "job start")
    assert [e.pid for e in started] == [first.pid]

    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert shared.status(job.id).state is JobState.RUNNING  # the dead worker's lease holds it

    shared.start("-c", "2", lease=LEASE)
    assert job.result(timeout=30.0) == 2

    status = shared.status(job.id)
    assert status.state is JobState.SUCCEEDED
    assert status.attempts == 2
    assert [e.type for e in status.errors] == ["WorkerLost"]
    assert status.errors[0].attempt == 1
    assert [(e.attempt, e.outcome) for e in shared.ledger.entries() if e.job_id == job.id] == [
        (1, "start"),
        (2, "start"),
        (2, "ok"),
    ]
    assert [e.pid for e in shared.ledger.runs("ok", job.id)] != [first.pid]


# -- 2. SIGTERM under load -------------------------------------------------------------------
def test_sigterm_on_redis_acks_jobs_done_in_grace_and_hands_back_the_rest(
    shared: Cluster,
) -> None:
    nap, nap_sync = shared.task("nap"), shared.task("nap_sync")
    # 20 jobs fill the 20 slots: 10 end within the grace period, 10 would take a minute
    # (half async, half plain functions in threads). 10 more wait, claimed, for a slot.
    quick = nap.enqueue_many([nap.call(0.5 + i * 0.15) for i in range(10)])
    slow = nap.enqueue_many([nap.call(60.0)] * 5) + nap_sync.enqueue_many([(60.0,)] * 5)
    waiting = nap.enqueue_many([nap.call(60.0)] * 10)
    quick_ids = {j.id for j in quick}
    handed_back = {j.id for j in slow + waiting}

    worker = shared.start("-c", "20", "--grace", str(GRACE))
    shared.wait_until(lambda: len(shared.ledger.runs("start")) >= 20, 30.0, "20 running jobs")
    assert shared.counts()["running"] == 30  # 20 in slots + 10 prefetched

    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=GRACE + 30.0) == 0
    assert time.monotonic() - sent < GRACE + EXIT_MARGIN

    started = {e.job_id for e in shared.ledger.runs("start")}
    assert started == quick_ids | {j.id for j in slow}  # the waiting ones never started
    states = {s.id: s.state for s in shared.call(shared.app.broker.jobs, limit=1000)}
    assert {i for i, s in states.items() if s is JobState.SUCCEEDED} == quick_ids
    assert {i for i, s in states.items() if s is JobState.QUEUED} == handed_back
    assert len(states) == 30
    oks = shared.ledger.count("ok")
    assert set(oks) == quick_ids
    assert set(oks.values()) == {1}

    shared.start("-c", "20")
    shared.wait_until(lambda: shared.counts()["succeeded"] == 30, 30.0, "all 30 jobs")
    oks = shared.ledger.count("ok")
    assert set(oks) == quick_ids | handed_back
    assert set(oks.values()) == {1}
    assert {shared.status(i).attempts for i in handed_back} == {2}


# -- 3. the server killed and restarted under load -------------------------------------------
JOBS = 5_000
BATCH = 50
CONCURRENCY = 32
# (accepted jobs, seconds down): the server is killed at that count and restarted after that
# long. The client retries a command for ~9 s (8 retries, backoff 0.1 s doubling to 2 s), so
# the short outage is invisible to callers, and the long one makes enqueues and claims fail.
RESTARTS = ((1_500, 0.5), (3_500, 10.5))


class _Producer(threading.Thread):
    """Enqueues ``JOBS`` noop jobs in batches; a batch whose enqueue raised is retried (as
    new jobs) until one returns. Only the ids of batches whose enqueue returned count."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(name="producer", daemon=True)
        self.cluster = cluster
        self.accepted: list[str] = []
        self.refused = 0  # enqueue calls that raised
        self.errors: list[str] = []
        self.failure: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        noop = self.cluster.task("noop")
        try:
            for start in range(0, JOBS, BATCH):
                for _ in range(2_000):  # bounded: 2,000 tries of one batch is a failure
                    if self.stop.is_set():
                        return
                    try:
                        jobs = noop.enqueue_many([(n,) for n in range(start, start + BATCH)])
                    except (dromos.BrokerError, redis.RedisError) as exc:
                        self.refused += 1
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                        time.sleep(0.02)
                        continue
                    self.accepted += [j.id for j in jobs]
                    break
                else:
                    raise AssertionError(f"batch at {start} never accepted: {self.errors[-1]}")
        except BaseException as exc:
            self.failure = exc


def test_every_job_whose_enqueue_returned_runs_across_redis_restarts(
    on_durable: Cluster, durable: PrivateRedis
) -> None:
    cluster = on_durable
    worker = cluster.start("-c", str(CONCURRENCY), lease=3.0)
    cluster.wait_for_boots(1)
    producer = _Producer(cluster)
    producer.start()
    try:
        for mark, outage in RESTARTS:  # the main thread restarts it (see redis_servers)
            cluster.wait_until(
                lambda mark=mark: len(producer.accepted) >= mark or producer.failure,
                60.0,
                f"{mark} accepted jobs",
            )
            durable.stop(kill=True)
            time.sleep(outage)
            durable.start()
        producer.join(timeout=60.0)
        assert not producer.is_alive(), "the producer did not finish"
    finally:
        producer.stop.set()
        producer.join(timeout=10.0)
    assert producer.failure is None, producer.failure
    accepted = set(producer.accepted)
    assert len(accepted) == JOBS

    def all_ran() -> bool:
        return accepted <= set(cluster.ledger.count("ok"))

    cluster.wait_until(all_ran, 60.0, "every accepted job to succeed")
    assert worker.poll() is None, f"the worker exited:\n{cluster.log_tail()}"

    oks = cluster.ledger.count("ok")
    duplicates = sum(n - 1 for n in oks.values())
    unaccepted = set(oks) - accepted  # stored by an enqueue that raised: allowed, reported
    # No job stuck running (nor queued: a batch whose enqueue raised may have been stored).
    counts = cluster.wait_until(
        lambda: (c := cluster.counts()).keys() == {"succeeded"} and c, 30.0, "only ended jobs"
    )
    print(
        f"\nredis restarts: {len(RESTARTS)}; enqueue calls refused: {producer.refused}; "
        f"duplicates: {duplicates}; run but not accepted: {len(unaccepted)}; states: {counts}"
    )
    # Duplicates come from jobs in flight at a restart: at most the worker's capacity each
    # (its slots and as many prefetched).
    assert duplicates <= 2 * CONCURRENCY * len(RESTARTS)
    assert counts == {"succeeded": len(oks)}


# -- 4. connections cut, and an unreachable server -------------------------------------------
def test_worker_survives_its_connections_being_killed_between_jobs(
    on_durable: Cluster, durable: PrivateRedis
) -> None:
    # A worker that finds no work waits for a push; a connection dropped during that wait
    # (or during any command) must cost a reconnect, not the process.
    cluster = on_durable
    worker = cluster.start("-c", "4", lease=3.0)
    cluster.wait_for_boots(1)
    noop = cluster.task("noop")
    rng = random.Random(7)
    accepted: set[str] = set()
    kills = 0
    with redis.Redis(host="127.0.0.1", port=durable.port, socket_timeout=5) as admin:
        for n in range(150):
            assert worker.poll() is None, f"the worker exited:\n{cluster.log_tail()}"
            with contextlib.suppress(dromos.BrokerError):  # our own connection is cut too
                accepted.add(noop.enqueue(n).id)
            time.sleep(rng.uniform(0.0, 0.02))  # let the worker run dry and wait for work
            if rng.random() < 0.3:
                kills += admin.client_kill_filter(_type="normal", skipme=True)
                kills += admin.client_kill_filter(_type="pubsub", skipme=True)

    cluster.wait_until(lambda: accepted <= set(cluster.ledger.count("ok")), 30.0, "every job")
    assert worker.poll() is None, f"the worker exited:\n{cluster.log_tail()}"
    print(f"\nconnections killed: {kills}; jobs: {len(accepted)}")
    assert kills > 0
    assert len(accepted) == 150  # the client reconnects and retries: every enqueue returns


def test_an_error_while_the_worker_waits_for_work_does_not_stop_it(
    on_durable: Cluster, durable: PrivateRedis
) -> None:
    # Deterministically, where a dropped connection hits only by chance: ZCARD (which the
    # idle worker's wait_for_work sends, and no script does) is refused for a while.
    cluster = on_durable
    worker = cluster.start("-c", "2")
    noop = cluster.task("noop")
    first = noop.enqueue(1)
    cluster.wait_until(lambda: cluster.ledger.runs("ok", first.id), 30.0, "the first job")
    with redis.Redis(host="127.0.0.1", port=durable.port, socket_timeout=5) as admin:
        admin.acl_setuser("default", enabled=True, commands=["-zcard"], reset_keys=False)
        try:
            cluster.wait_until(
                lambda: "waiting for work failed" in cluster.log_tail(),
                30.0,
                "the worker to meet the error",
            )
        finally:
            admin.acl_setuser("default", enabled=True, commands=["+@all"])
    assert worker.poll() is None, f"the worker exited:\n{cluster.log_tail()}"
    second = noop.enqueue(2)
    cluster.wait_until(lambda: cluster.ledger.runs("ok", second.id), 30.0, "the next job")
    assert worker.poll() is None


def test_enqueue_to_an_unreachable_redis_raises_a_broker_error_naming_it() -> None:
    port = _closed_port()
    app = dromos.App("unreachable", f"redis://127.0.0.1:{port}/0?prefix={new_prefix()}")

    @app.task()
    async def noop(n: int) -> int:
        return n

    try:
        began = time.monotonic()
        with pytest.raises(
            dromos.BrokerError, match=rf"cannot reach Redis at redis://127\.0\.0\.1:{port}/0: "
        ):
            noop.enqueue(1)
        took = time.monotonic() - began
    finally:
        app.close()
    print(f"\nBrokerError after {took:.2f}s")
    assert took < 30.0  # redis-py's retries (8, backoff 0.1 s doubling to 2 s) end it


def test_worker_against_an_unreachable_redis_exits_with_one_error_line(tmp_path: Path) -> None:
    port = _closed_port()
    env = {
        **os.environ,
        "DROMOS_BROKER": f"redis://127.0.0.1:{port}/0?prefix={new_prefix()}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "dromos", "worker", "ledger_app:app"],
        cwd=tmp_path, env=env, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    print(f"\nworker exited {done.returncode} after {time.monotonic() - began:.2f}s")
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert f"error: cannot reach Redis at redis://127.0.0.1:{port}/0: " in err
    assert "Traceback" not in err
