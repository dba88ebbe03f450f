"""A rate limit of 50/s over three worker processes: no second holds more than 50 starts (#8).

Run on every broker (``any_cluster``). The ledger notes when each job started (the task's
first line); the verdict counts the starts of every calendar second, and of every window of
one second (less a small allowance for the time from the broker's reservation to that line).
"""

from __future__ import annotations

import collections
import signal

import pytest

from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

JOBS = 250
LIMIT = 50


def test_a_rate_limit_holds_across_three_worker_processes(any_cluster: Cluster) -> None:
    cluster = any_cluster
    supervisor = cluster.start("-p", "3", "-c", "32", "--grace", "5")
    workers = set(cluster.wait_for_boots(3))
    jobs = cluster.task("limited").enqueue_many([(n,) for n in range(JOBS)])

    def starts() -> list[float] | None:
        found = [e for e in cluster.ledger.entries() if e.outcome.startswith("limited@")]
        return [float(e.outcome.partition("@")[2]) for e in found] if len(found) >= JOBS else None

    times = sorted(cluster.wait_until(starts, 60.0, f"{JOBS} rate-limited starts"))
    assert len(times) == JOBS  # each job once
    per_second = collections.Counter(int(t) for t in times)
    assert max(per_second.values()) <= LIMIT, per_second
    window = 1.0 - 0.05
    most = max(sum(1 for t in times[i:] if t < start + window) for i, start in enumerate(times))
    assert most <= LIMIT
    assert times[-1] - times[0] >= (JOBS / LIMIT) - 1.5  # held back: 250 starts take ~4 s
    pids = {e.pid for e in cluster.ledger.entries() if e.outcome.startswith("limited@")}
    assert len(pids & workers) >= 2  # the limit is shared by processes that all started jobs
    assert {cluster.status(job.id).state.value for job in jobs} == {"succeeded"}

    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30.0) == 0
