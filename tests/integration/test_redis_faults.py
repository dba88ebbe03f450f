"""Real worker processes on Redis under faults, judged by the ledger (RELIABILITY #1, #3, #4).

Scenarios 1 and 2 (kill -9, SIGTERM) run on every broker, Redis included, in
test_crash_recovery.py and test_graceful_shutdown.py (``any_cluster``); here, scenario 1 once
more for what only Redis does: an enqueue hands a job to an idle worker just killed (its entry
among the idle workers has not lapsed yet). Scenario 3 kills and restarts a private
``redis-server --appendonly yes --appendfsync always`` while jobs are enqueued and run; the
connection tests cut the clients' connections of a private server, refuse a command the idle
worker sends, and point at a closed port. Every worker is killed at teardown
(``Cluster.close``), before the server stops or the prefix is deleted.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

import dromos
from dromos import JobState
from tests.integration.conftest import HERE, Cluster, Producer
from tests.redis_servers import PrivateRedis, new_prefix

pytestmark = pytest.mark.slow


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


# -- 1. a worker killed while idle, a job on its way to it ---------------------------------
def test_a_job_handed_to_a_worker_killed_while_idle_runs_once_its_lease_ends(
    on_durable: Cluster, durable: PrivateRedis
) -> None:
    # An idle worker is entered in its queue's idle workers; killed, its entry stays until it
    # lapses (2 s after its last claim), and an enqueue meanwhile hands the job to the dead.
    cluster = on_durable
    first = cluster.start("-c", "2", lease=2.0)
    cluster.wait_for_boots(1)
    with redis.Redis(host="127.0.0.1", port=durable.port) as admin:
        cluster.wait_until(lambda: admin.keys("*:idle") or None, 30.0, "an idle worker's entry")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        job = cluster.task("nap").enqueue(0.0)
        assert cluster.status(job.id).state is JobState.RUNNING  # leased to the dead worker
    cluster.start("-c", "2", lease=2.0)
    assert job.result(timeout=30.0) == 2  # its second attempt: the first never started
    status = cluster.status(job.id)
    assert [e.type for e in status.errors] == ["WorkerLost"]
    assert [(e.attempt, e.outcome) for e in cluster.ledger.entries() if e.job_id == job.id] == [
        (2, "start"),
        (2, "ok"),
    ]


# -- 3. the server killed and restarted under load -------------------------------------------
JOBS = 5_000
BATCH = 50
CONCURRENCY = 32
# (accepted jobs, seconds down): the server is killed at that count and restarted after that
# long. The client retries a command for ~9 s (8 retries, backoff 0.1 s doubling to 2 s), so
# the short outage is invisible to callers, and the long one makes enqueues and claims fail.
RESTARTS = ((1_500, 0.5), (3_500, 10.5))


def test_every_job_whose_enqueue_returned_runs_across_redis_restarts(
    on_durable: Cluster, durable: PrivateRedis
) -> None:
    cluster = on_durable
    worker = cluster.start("-c", str(CONCURRENCY), lease=3.0)
    cluster.wait_for_boots(1)
    producer = Producer(cluster, JOBS, BATCH, (dromos.BrokerError, redis.RedisError))

    # Restarts from the main thread (see redis_servers):
    accepted = producer.run_through(
        [(mark, functools.partial(durable.restart, down=outage)) for mark, outage in RESTARTS],
        60.0,
    )
    # unaccepted: stored by an enqueue that raised: allowed, reported
    oks, duplicates, unaccepted = producer.ledger(accepted, 60.0)
    assert worker.poll() is None, f"the worker exited:\n{cluster.log_tail()}"
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
    # Deterministically, where a dropped connection hits only by chance: SUBSCRIBE (which an
    # idle worker sends when it first waits for work, and nothing else does) is refused
    # until the worker has met the error.
    cluster = on_durable
    with redis.Redis(host="127.0.0.1", port=durable.port, socket_timeout=5) as admin:
        admin.acl_setuser("default", enabled=True, commands=["-subscribe"], reset_keys=False)
        try:
            worker = cluster.start("-c", "2")
            cluster.wait_until(
                lambda: "waiting for work failed" in cluster.log_tail(),
                30.0,
                "the worker to meet the error",
            )
        finally:
            admin.acl_setuser("default", enabled=True, commands=["+@all"])
    assert worker.poll() is None, f"the worker exited:\n{cluster.log_tail()}"
    noop = cluster.task("noop")
    job = noop.enqueue(2)
    cluster.wait_until(lambda: cluster.ledger.runs("ok", job.id), 30.0, "the next job")
    assert worker.poll() is None


def test_enqueue_to_an_unreachable_redis_raises_a_broker_error_naming_it() -> None:
    port = _closed_port()
    # retries=1: the default 8 retries wait about 9 s for a server that never comes.
    url = f"redis://127.0.0.1:{port}/0?prefix={new_prefix()}&retries=1"
    app = dromos.App("unreachable", url)

    @app.task()
    async def noop(n: int) -> int:
        return n

    try:
        with pytest.raises(
            dromos.BrokerError, match=rf"cannot reach Redis at redis://127\.0\.0\.1:{port}/0: "
        ):
            noop.enqueue(1)
    finally:
        app.close()


def test_worker_against_an_unreachable_redis_exits_with_one_error_line(tmp_path: Path) -> None:
    port = _closed_port()
    env = {
        **os.environ,
        "DROMOS_BROKER": f"redis://127.0.0.1:{port}/0?prefix={new_prefix()}&retries=1",
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
