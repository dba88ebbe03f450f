"""Completion webhooks survive the delivering process: a receiver that is down while the jobs
end, and a worker killed with SIGKILL in between; once a worker runs again and the receiver is
back, every event arrives, signed, each job's under its one webhook-id.
"""

from __future__ import annotations

import base64
import signal

import pytest

from dromos.webhooks import verify
from tests.integration.conftest import Cluster
from tests.receiver import Receiver

pytestmark = pytest.mark.slow

SECRET = "whsec_" + base64.b64encode(b"restart-test-secret-012345").decode()
JOBS = 30


def test_no_webhook_is_lost_across_a_receiver_outage_and_a_killed_worker(
    any_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = any_cluster
    monkeypatch.setenv("DROMOS_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("LEDGER_WEBHOOK_BACKOFF", "0.2,0.4")
    # Deliveries the killed worker held mid-attempt come back when its lease ends: 2 x 2 +
    # 10 = 14 s here, well within the wait below (with the default 10 s timeout: 30 s).
    monkeypatch.setenv("LEDGER_WEBHOOK_TIMEOUT", "2")
    receiver = Receiver()  # not started: its port refuses connections
    noop = cluster.task("noop").options(callback_url=receiver.url)
    jobs = [noop.enqueue(i) for i in range(JOBS)]
    first = cluster.start("-c", "8")

    def all_tried() -> bool:
        return all(cluster.status(j.id).webhooks for j in jobs)

    cluster.wait_until(all_tried, 30.0, "a refused attempt for every job")
    assert all(not a.delivered for j in jobs for a in cluster.status(j.id).webhooks)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)

    receiver.start()
    try:
        cluster.start("-c", "8")
        got = receiver.wait_for(JOBS, timeout=60.0)
        ids: dict[str, str] = {}
        for delivery in got:
            event = verify(delivery.body, delivery.headers, SECRET)
            ids.setdefault(str(event["subject"]), delivery.headers["webhook-id"])
            # A repeat (possible after the kill) carries the same webhook-id.
            assert ids[str(event["subject"])] == delivery.headers["webhook-id"]
        assert set(ids) == {j.id for j in jobs}

        def all_recorded() -> bool:
            return all(cluster.status(j.id).webhooks[-1].delivered for j in jobs)

        cluster.wait_until(all_recorded, 30.0, "every delivery recorded")
    finally:
        receiver.stop()
