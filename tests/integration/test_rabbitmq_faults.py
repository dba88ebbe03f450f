"""Real worker processes on RabbitMQ under faults, judged by the ledger (RELIABILITY #3).

Scenarios 1 and 2 (kill -9, SIGTERM) run on every broker, RabbitMQ included, in
test_crash_recovery.py and test_graceful_shutdown.py (``any_cluster``). Here a private
RabbitMQ node (tests/rabbitmq_servers.py) is killed with SIGKILL and restarted while 5,000
jobs are enqueued and run: every job whose enqueue returned runs, and nothing is left queued
or running. The records live in the shared Redis under a prefix of the test's own.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Cluster, Producer
from tests.rabbitmq_servers import PrivateRabbitMQ, private_rabbitmq
from tests.redis_servers import SHARED_HOST, SHARED_PORT, delete_prefix, new_prefix
from tests.servers import require_server

__all__ = ["private_rabbitmq"]  # the fixture, imported for this module's tests

pytestmark = pytest.mark.slow

JOBS = 5_000
BATCH = 50
CONCURRENCY = 32
# (accepted jobs, seconds down before the restart begins); a start takes about 5 s more.
# Publishes retry for publish_timeout=3 s: the first outage makes some enqueues fail (they
# are withdrawn and retried by the producer), both make claims and relay passes fail.
RESTARTS = ((1_500, 0.5), (3_500, 3.0))


@pytest.fixture
def node(private_rabbitmq: Callable[[], PrivateRabbitMQ]) -> PrivateRabbitMQ:
    return private_rabbitmq()


@pytest.fixture
def on_node(tmp_path: Path, node: PrivateRabbitMQ) -> Iterator[Cluster]:
    require_server("redis", SHARED_HOST, SHARED_PORT)
    prefix = new_prefix()
    url = f"{node.url}?prefix={prefix}&publish_timeout=3"
    cluster = Cluster(
        tmp_path, url, backend=f"redis://{SHARED_HOST}:{SHARED_PORT}/0?prefix={prefix}"
    )
    try:
        yield cluster
    finally:
        cluster.close()
        delete_prefix(SHARED_HOST, SHARED_PORT, prefix)


def test_every_job_whose_enqueue_returned_runs_across_rabbitmq_restarts(
    on_node: Cluster, node: PrivateRabbitMQ
) -> None:
    cluster = on_node
    worker = cluster.start("-c", str(CONCURRENCY), lease=3.0)
    cluster.wait_for_boots(1)
    # The queues exist (declared by the first job's enqueue and the worker's consumers) and
    # have settled before the first crash: on RabbitMQ 3.10 a quorum queue declared a moment
    # before its node is killed may come back without a leader (its consumers then time out;
    # the node log shows "leader not known"); a deployment's queues are older than that.
    cluster.task("noop").enqueue(-1).result(timeout=30)
    time.sleep(6.0)
    producer = Producer(cluster, JOBS, BATCH)

    accepted = producer.run_through(
        [(mark, functools.partial(node.restart, down=outage)) for mark, outage in RESTARTS],
        120.0,
    )
    # unaccepted: a withdraw that failed in the outage: allowed, reported
    oks, duplicates, unaccepted = producer.ledger(accepted, 120.0)
    assert worker.poll() is None, f"the worker exited:\n{cluster.log_tail()}"

    def settled() -> dict[str, int] | None:
        c = cluster.counts()
        return dict(c) if set(c) <= {"succeeded", "cancelled"} else None

    counts = cluster.wait_until(settled, 60.0, "only ended jobs")
    print(
        f"\nrabbitmq restarts: {len(RESTARTS)}; enqueue calls refused: {producer.refused}; "
        f"duplicates: {duplicates}; run but not accepted: {len(unaccepted)}; states: {counts}"
    )
    # A cancelled job is one whose publish failed (withdrawn): never one that was accepted.
    assert counts["succeeded"] == len(oks)
    assert duplicates <= 2 * CONCURRENCY * len(RESTARTS)
