"""A producer with no Python: ``psql`` enqueues jobs with plain SQL, a dromos worker process
runs them (the ledger says so).

The producer writes the JSON envelope of docs/wire-format.md and calls the schema's
``dromos_enqueue(envelope jsonb)`` (migration 0004, docs/wire-format.md "Producing from
SQL"), in its own transaction: a job whose transaction rolls back never runs.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Cluster, postgres_cluster
from tests.pg_servers import pg_binary

pytestmark = pytest.mark.slow


@pytest.fixture
def on_shared(tmp_path: Path) -> Iterator[Cluster]:
    with postgres_cluster(tmp_path) as cluster:
        yield cluster


def _psql(cluster: Cluster, script: str) -> list[str]:
    """Run ``script`` through ``psql`` (stdin, stop at the first error); its output lines."""
    dsn, _, query = cluster.url.partition("?")
    schema = query.removeprefix("schema=")
    done = subprocess.run(
        [pg_binary("psql"), dsn, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
         "-v", f"schema={schema}"],
        input=script, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_jobs_enqueued_by_psql_run_on_a_dromos_worker(on_shared: Cluster) -> None:
    cluster = on_shared
    cluster.call(cluster.app.broker.migrate)  # type: ignore[attr-defined]
    worker = cluster.start("-c", "4")
    cluster.wait_for_boots(1)
    given = json.dumps({
        "v": 1, "id": "0195f00d-0000-7000-8000-00000000psql", "task": "noop", "queue": "default",
        "args": [7], "kwargs": {}, "attempt": 0, "max_attempts": 1, "eta": None, "priority": 0,
        "timeout": None, "created_at": "2026-11-25T22:40:09.136297Z", "headers": {},
    })  # fmt: skip
    script = f"""
        \\set full '{given}'
        SELECT :"schema".dromos_enqueue(:'full');
        -- the least a producer writes: the task and its arguments
        SELECT :"schema".dromos_enqueue('{{"task": "nap", "kwargs": {{"first": 0.01}}}}');
        -- an idempotency key: the second call names the first job and adds nothing
        SELECT :"schema".dromos_enqueue('{{"task": "noop", "args": [1],
                                          "headers": {{"idempotency_key": "order-7"}}}}');
        SELECT :"schema".dromos_enqueue('{{"task": "noop", "args": [2],
                                          "headers": {{"idempotency_key": "order-7"}}}}');
        -- in a transaction rolled back: never stored, never run
        BEGIN;
        SELECT :"schema".dromos_enqueue('{{"task": "noop", "args": [3]}}');
        ROLLBACK;
    """
    began = time.monotonic()
    full, least, keyed, again, rolled = _psql(cluster, script)
    assert full == "0195f00d-0000-7000-8000-00000000psql"
    assert again == keyed

    ran = {full, least, keyed}
    cluster.wait_until(lambda: ran <= set(cluster.ledger.count("ok")), 30.0, "psql's jobs")
    took = time.monotonic() - began
    assert cluster.app.job(full).result(timeout=10) == 7
    # The ledger's "ok" is written by the task, before its worker settles the job.
    cluster.app.job(least).result(timeout=10)
    assert cluster.status(least).state.value == "succeeded"
    time.sleep(0.3)
    assert set(cluster.ledger.count("ok")) == ran  # once each; not the rolled-back one
    assert all(n == 1 for n in cluster.ledger.count("ok").values())
    assert cluster.call(cluster.app.broker.status, rolled) is None
    assert worker.poll() is None, cluster.log_tail()
    print(f"\npsql to three jobs run: {took:.2f}s")
    assert took < 10.0  # woken by the NOTIFY (the idle worker also looks once a second)
