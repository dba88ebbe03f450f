"""A producer with no Python: a Node.js script with ``amqplib`` (from the npm registry)
publishes jobs on RabbitMQ following docs/wire-format.md ("Producing on RabbitMQ"), and a
dromos worker process runs them (the ledger says so), with a status and a result each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Cluster, rabbitmq_cluster

pytestmark = pytest.mark.slow

PRODUCER = """
const amqp = require("amqplib");
(async () => {
  const [url, exchange, jobsJson] = process.argv.slice(2);
  const connection = await amqp.connect(url);
  const channel = await connection.createConfirmChannel();
  for (const job of JSON.parse(jobsJson)) {
    const band = job.priority > 0 ? "high" : job.priority < 0 ? "low" : "normal";
    channel.publish(exchange, `${job.queue}.${band}`, Buffer.from(JSON.stringify(job)), {
      messageId: job.id, persistent: true, contentType: "application/json", mandatory: true,
      headers: { "x-dromos-priority": job.priority },
    });
  }
  await channel.waitForConfirms();
  await connection.close();
})().catch((err) => { console.error(err); process.exit(1); });
"""


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        why = f"{binary} is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why}: CI must run the cross-language test")
        pytest.skip(why)
    return path


@pytest.fixture
def on_rabbitmq(tmp_path: Path) -> Iterator[Cluster]:
    with rabbitmq_cluster(tmp_path) as cluster:
        yield cluster


def test_jobs_published_by_node_amqplib_run_on_a_dromos_worker(on_rabbitmq: Cluster) -> None:
    cluster = on_rabbitmq
    node, npm = _need("node"), _need("npm")
    project = cluster.dir / "producer"
    project.mkdir()
    subprocess.run(
        [npm, "install", "--silent", "--no-audit", "--no-fund", "amqplib@0"],
        cwd=project, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (project / "produce.js").write_text(PRODUCER)
    worker = cluster.start("-c", "4")
    cluster.wait_for_boots(1)
    cluster.task("noop").enqueue(-1).result(timeout=30)  # the worker consumes: queues exist

    jobs = [
        {"v": 1, "id": str(uuid.uuid4()), "task": "noop", "queue": "default", "args": [n],
         "kwargs": {}, "priority": priority, "created_at": "2026-11-26T10:00:00Z",
         "headers": {}}
        for n, priority in ((1, 0), (2, 5), (3, -5))
    ]  # fmt: skip
    # The least a producer writes: the required fields (docs/wire-format.md's JSON Schema).
    jobs.append({"id": str(uuid.uuid4()), "task": "noop", "args": [4],
                 "created_at": "2026-11-26T10:00:00Z"})  # fmt: skip
    jobs[-1].update(queue="default", priority=0)  # (the script routes by these)
    url = cluster.url.partition("?")[0]
    exchange = cluster.app.broker.transport.names.jobs  # type: ignore[attr-defined]
    done = subprocess.run(
        [node, "produce.js", url, exchange, json.dumps(jobs)],
        cwd=project, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    ids = {job["id"] for job in jobs}
    cluster.wait_until(lambda: ids <= set(cluster.ledger.count("ok")), 30.0, "the node jobs")
    assert worker.poll() is None, f"the worker exited:\n{cluster.log_tail()}"
    for job in jobs:
        status = cluster.status(str(job["id"]))
        assert (status.state.value, status.result, status.priority) == (
            "succeeded", job["args"][0], job["priority"],  # type: ignore[index]
        )  # fmt: skip
