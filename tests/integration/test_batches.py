"""A batch of 1,000 jobs over three worker processes: its callback runs exactly once."""

from __future__ import annotations

import signal
import time

import pytest

from tests.integration.conftest import Cluster, Entry

pytestmark = pytest.mark.slow

JOBS = 1_000
FAILING = JOBS // 10  # batch_member fails every tenth job, for good


def test_a_batch_over_three_processes_calls_back_exactly_once_with_its_counts(
    any_cluster: Cluster,
) -> None:
    cluster = any_cluster
    supervisor = cluster.start("-p", "3", "-c", "16", "--grace", "5")
    workers = set(cluster.wait_for_boots(3))
    naps = cluster.wait_until_serving(workers)  # else one process may run the batch alone

    member, done = cluster.task("batch_member"), cluster.task("batch_done")
    batch = member.map(range(JOBS), on_complete=done.call("nightly"))
    assert len(batch.jobs) == JOBS

    def callbacks() -> list[Entry]:
        return [e for e in cluster.ledger.entries() if e.outcome.startswith("batch-done:")]

    cluster.wait_until(callbacks, 120.0, "the batch's callback")
    time.sleep(1.0)  # a second callback, if any, would have run by now
    expected = f"batch-done:{JOBS}:{JOBS - FAILING}:{FAILING}:0:nightly"
    assert [(e.job_id, e.outcome) for e in callbacks()] == [(batch.id, expected)]

    status = batch.status()
    assert (status.total, status.succeeded, status.failed, status.cancelled) == (
        JOBS, JOBS - FAILING, FAILING, 0,
    )  # fmt: skip
    assert status.done
    assert status.callback_id is not None
    assert cluster.status(status.callback_id).state.value == "succeeded"
    members = {j.id for j in batch.jobs}
    ran = cluster.ledger.count("ok") + cluster.ledger.count("fail")
    for nap in naps:
        del ran[nap]
    assert set(ran) == members  # every job ran ...
    assert set(ran.values()) == {1}  # ... exactly once
    oks = cluster.ledger.runs("ok")
    assert len({e.pid for e in oks if e.job_id in members} & workers) >= 2  # shared out

    results = batch.results(timeout=10, return_exceptions=True)
    assert [r for r in results if isinstance(r, int)] == [n for n in range(JOBS) if n % 10]

    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30.0) == 0
