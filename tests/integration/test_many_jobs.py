"""10,000 jobs through two supervised worker processes: each succeeds exactly once."""

from __future__ import annotations

import signal

import pytest

from tests.integration.conftest import Cluster, alive, children

pytestmark = pytest.mark.slow

JOBS = 10_000
BATCH = 1_000


def test_ten_thousand_jobs_through_two_processes_each_succeed_exactly_once(
    cluster: Cluster,
) -> None:
    supervisor = cluster.start("-p", "2", "-c", "32", "--grace", "5")
    workers = set(cluster.wait_for_boots(2))
    assert children(supervisor.pid) == workers

    noop = cluster.task("noop")
    ids: set[str] = set()
    for start in range(0, JOBS, BATCH):
        ids |= {j.id for j in noop.enqueue_many([(n,) for n in range(start, start + BATCH)])}
    assert len(ids) == JOBS

    def ended() -> bool:
        counts = cluster.counts()
        assert counts["failed"] == 0, counts
        return counts["succeeded"] == JOBS

    cluster.wait_until(ended, 100.0, f"{JOBS} jobs to succeed")

    oks = cluster.ledger.runs("ok")
    per_job = cluster.ledger.count("ok")
    assert set(per_job) == ids  # every id ran, and no unknown one
    assert set(per_job.values()) == {1}  # exactly once each
    assert {e.pid for e in oks} == workers  # both processes did work

    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30.0) == 0
    assert not any(alive(pid) for pid in workers)
