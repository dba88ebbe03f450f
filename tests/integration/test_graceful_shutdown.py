"""SIGTERM with jobs in flight or arriving: none lost, none run twice (RELIABILITY #2)."""

from __future__ import annotations

import random
import signal
import time

import pytest

from dromos import JobState
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

GRACE = 3.0
EXIT_MARGIN = 1.5  # seconds after the grace period by which the process must be gone


def test_sigterm_acks_jobs_done_in_grace_and_hands_back_the_rest(any_cluster: Cluster) -> None:
    cluster = any_cluster  # on every broker
    nap, nap_sync = cluster.task("nap"), cluster.task("nap_sync")
    # 20 jobs fill the 20 slots: 10 end within the grace period, 10 would take a minute
    # (half async, half plain functions in threads). 10 more wait, claimed, for a slot.
    quick = nap.enqueue_many([nap.call(0.5 + i * 0.15) for i in range(10)])
    slow = nap.enqueue_many([nap.call(60.0)] * 5) + nap_sync.enqueue_many([(60.0,)] * 5)
    waiting = nap.enqueue_many([nap.call(60.0)] * 10)
    quick_ids = {j.id for j in quick}
    handed_back = {j.id for j in slow + waiting}

    worker = cluster.start("-c", "20", "--grace", str(GRACE))
    cluster.wait_until(lambda: len(cluster.ledger.runs("start")) >= 20, 30.0, "20 running jobs")
    assert cluster.counts()["running"] == 30  # 20 in slots + 10 prefetched

    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=GRACE + 30.0) == 0
    assert time.monotonic() - sent < GRACE + EXIT_MARGIN

    started = {e.job_id for e in cluster.ledger.runs("start")}
    assert started == quick_ids | {j.id for j in slow}  # the waiting ones never started
    states = {s.id: s.state for s in cluster.call(cluster.app.broker.jobs, limit=1000)}
    assert {i for i, s in states.items() if s is JobState.SUCCEEDED} == quick_ids
    assert {i for i, s in states.items() if s is JobState.QUEUED} == handed_back
    assert len(states) == 30
    oks = cluster.ledger.count("ok")
    assert set(oks) == quick_ids
    assert set(oks.values()) == {1}

    cluster.start("-c", "20")
    cluster.wait_until(lambda: cluster.counts()["succeeded"] == 30, 30.0, "all 30 jobs")
    oks = cluster.ledger.count("ok")
    assert set(oks) == quick_ids | handed_back
    assert set(oks.values()) == {1}
    assert {cluster.status(i).attempts for i in handed_back} == {2}


def test_sigterm_hands_back_jobs_not_started_before_the_grace_period(cluster: Cluster) -> None:
    nap = cluster.task("nap")
    nap.enqueue_many([nap.call(60.0)] * 2)  # hold both slots for the whole grace period
    waiting = {j.id for j in nap.enqueue_many([nap.call(0.0)] * 4)}
    worker = cluster.start("-c", "2", "--prefetch", "4", "--grace", "30")
    cluster.wait_until(lambda: len(cluster.ledger.runs("start")) == 2, 30.0, "2 running jobs")
    assert cluster.counts()["running"] == 6  # 2 in slots + 4 prefetched

    worker.send_signal(signal.SIGTERM)

    def handed_back() -> bool:
        return {cluster.status(i).state for i in waiting} == {JobState.QUEUED}

    cluster.wait_until(handed_back, 10.0, "the prefetched jobs to be queued again")
    assert worker.poll() is None  # still in its grace period: the jobs went back at once
    assert {cluster.status(i).attempts for i in waiting} == {1}
    worker.send_signal(signal.SIGINT)  # a second signal ends the grace period
    assert worker.wait(timeout=30.0) == 0
    assert cluster.counts() == {"queued": 6}


def test_sigterm_while_claiming_a_stream_of_jobs_leaves_none_running(cluster: Cluster) -> None:
    # A busy worker is claiming most of the time; jobs claimed just before the signal
    # must be handed back too, not left running until their lease expires.
    noop = cluster.task("noop")
    for start in range(0, 6_000, 1_000):
        noop.enqueue_many([(n,) for n in range(start, start + 1_000)])
    for cycle in range(1, 4):
        worker = cluster.start("-c", "16")
        done = len(cluster.ledger.runs("ok"))
        cluster.wait_until(
            lambda done=done: len(cluster.ledger.runs("ok")) >= done + 300, 30.0, "300 jobs"
        )
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30.0) == 0
        counts = cluster.counts()
        assert counts["running"] == 0, (cycle, counts)
        assert counts["succeeded"] == len(cluster.ledger.runs("ok")), (cycle, counts)
    assert set(cluster.ledger.count("ok").values()) == {1}


def test_workers_replaced_one_by_one_while_jobs_trickle_in_run_each_job_once(
    any_cluster: Cluster,
) -> None:
    # Jobs come one at a time with pauses, so the workers are mostly idle between them: on
    # Redis each new job is handed straight to an idle worker, on PostgreSQL a worker woken
    # by NOTIFY claims without its recovery pass, on RabbitMQ it takes what the delivery
    # brought. Meanwhile the oldest worker is stopped with SIGTERM and a new one started,
    # three times, so jobs keep arriving while a worker stops claiming.
    cluster = any_cluster
    noop = cluster.task("noop")
    pace = random.Random(7)
    workers = [cluster.start("-c", "4") for _ in range(2)]
    cluster.wait_for_boots(2)
    accepted: list[str] = []
    stopped = []
    for n in range(240):
        accepted.append(noop.enqueue(n).id)
        time.sleep(pace.random() * 0.008)
        if n % 60 == 59 and len(stopped) < 3:
            oldest = workers.pop(0)
            oldest.send_signal(signal.SIGTERM)
            stopped.append(oldest)
            workers.append(cluster.start("-c", "4"))
            cluster.wait_for_boots(len(stopped) + 2)  # the next one stops a running worker
    assert [w.wait(timeout=30.0) for w in stopped] == [0, 0, 0]
    # Well within the 30 s lease: a job left with a stopped worker would wait for it to end.
    cluster.wait_until(lambda: cluster.counts()["succeeded"] == 240, 15.0, "all 240 jobs")
    oks = cluster.ledger.count("ok")
    assert set(oks) == set(accepted)
    assert set(oks.values()) == {1}
