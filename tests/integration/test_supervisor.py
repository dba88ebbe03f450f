"""``-p N``: the supervisor restarts a worker process that dies, and poison jobs end (#7)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from dromos import JobState
from dromos._loop import GC_YOUNG
from tests.integration.conftest import Cluster, alive, children

pytestmark = pytest.mark.slow


def test_supervisor_restarts_a_killed_worker_process_and_jobs_keep_flowing(
    cluster: Cluster,
) -> None:
    supervisor = cluster.start("-p", "2", "-c", "4")
    first = cluster.wait_for_boots(2)
    assert children(supervisor.pid) == set(first)
    victim, survivor = first

    os.kill(victim, signal.SIGKILL)
    replacement = cluster.wait_for_boots(3)[2]
    assert replacement not in first
    cluster.wait_until(
        lambda: children(supervisor.pid) == {survivor, replacement}, 10.0, "the new child"
    )
    assert not alive(victim)

    noop = cluster.task("noop")
    ids = {j.id for j in noop.enqueue_many([(n,) for n in range(200)])}
    cluster.wait_until(lambda: cluster.counts()["succeeded"] == 200, 30.0, "200 jobs")
    assert cluster.ledger.count("ok") == dict.fromkeys(ids, 1)
    assert supervisor.poll() is None
    # Each worker process set its collector once started (dromos._loop.tune_gc).
    young, frozen = cluster.task("gc_settings").enqueue().result(timeout=10)
    assert young == GC_YOUNG
    assert frozen > 10_000  # modules, the app, the broker's client


def test_poison_job_is_dead_lettered_after_its_recoveries_and_other_jobs_flow(
    cluster: Cluster,
) -> None:
    recoveries = 2
    # One job per process at a time, so the poison job takes no other job down with it.
    supervisor = cluster.start(
        "-p", "2", "-c", "1", "--prefetch", "0", lease=1.0, max_recoveries=recoveries
    )
    cluster.wait_for_boots(2)
    poison = cluster.task("die").enqueue()
    noop = cluster.task("noop")
    good = {j.id for j in noop.enqueue_many([(n,) for n in range(20)])}

    status = cluster.call(cluster.app.broker.wait, poison.id, 60.0)
    assert status is not None, cluster.log_tail()
    assert status.state is JobState.FAILED
    assert status.attempts == recoveries + 1
    assert [e.type for e in status.errors] == ["WorkerLost"] * (recoveries + 1) + ["Poison"]
    assert status.error is not None
    assert status.error.type == "Poison"
    runs = cluster.ledger.runs("start", poison.id)
    assert [e.attempt for e in runs] == [1, 2, 3]
    assert len({e.pid for e in runs}) == 3  # each run killed its process

    # The supervisor replaced every process the poison job killed, and jobs still flow.
    assert supervisor.poll() is None
    cluster.wait_for_boots(2 + recoveries + 1)
    good |= {j.id for j in noop.enqueue_many([(n,) for n in range(20, 40)])}
    cluster.wait_until(lambda: cluster.counts()["succeeded"] == 40, 30.0, "40 good jobs")
    assert cluster.ledger.count("ok") == dict.fromkeys(good, 1)
    cluster.wait_until(lambda: len(children(supervisor.pid)) == 2, 10.0, "2 live children")


def test_supervisor_stopped_while_restarting_a_child_starts_no_new_one(cluster: Cluster) -> None:
    supervisor = cluster.start("-p", "2", "-c", "4", "--grace", "1")
    victim, survivor = cluster.wait_for_boots(2)
    os.kill(victim, signal.SIGKILL)
    # Reaped and not yet replaced: the supervisor sleeps its restart delay (0.5 s) now.
    cluster.wait_until(lambda: children(supervisor.pid) == {survivor}, 10.0, "the reaping")

    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30.0) == 0
    assert cluster.ledger.boots() == [victim, survivor]
    assert "did not stop in time" not in cluster.log.read_text()


def test_workers_stop_by_themselves_when_their_supervisor_is_killed(cluster: Cluster) -> None:
    supervisor = cluster.start("-p", "2", "-c", "4", "--grace", "1")
    workers = cluster.wait_for_boots(2)
    assert children(supervisor.pid) == set(workers)
    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait(timeout=10.0)
    deadline = time.monotonic() + 30.0  # they notice within a second, then stop gracefully
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers), cluster.log_tail()
    assert cluster.log.read_text().count("the supervisor is gone; stopping") == 2
