"""A worker killed with SIGKILL mid-job: its lease expires and the job runs again (#1).

Run on every broker (``any_cluster``).
"""

from __future__ import annotations

import signal

import pytest

from dromos import JobState
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

LEASE = 2.0


def test_job_of_a_killed_worker_runs_again_after_its_lease(any_cluster: Cluster) -> None:
    cluster = any_cluster
    job = cluster.task("nap").enqueue(60.0, later=0.0)
    first = cluster.start("-c", "2", lease=LEASE)
    started = cluster.wait_until(lambda: cluster.ledger.runs("start", job.id), 30.0, "job start")
    # Without -p the command's own process is the worker that runs the job.
    assert [e.pid for e in started] == [first.pid]

    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert cluster.status(job.id).state is JobState.RUNNING  # the dead worker's lease holds it

    cluster.start("-c", "2", lease=LEASE)
    assert job.result(timeout=30.0) == 2

    status = cluster.status(job.id)
    assert status.state is JobState.SUCCEEDED
    assert status.attempts == 2
    assert [e.type for e in status.errors] == ["WorkerLost"]
    assert status.errors[0].attempt == 1
    assert [(e.attempt, e.outcome) for e in cluster.ledger.entries() if e.job_id == job.id] == [
        (1, "start"),
        (2, "start"),
        (2, "ok"),
    ]
    assert [e.pid for e in cluster.ledger.runs("ok", job.id)] != [first.pid]
