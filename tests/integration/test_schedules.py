"""Three worker processes run the scheduler of a 1-second schedule; the one holding its lease
is killed with SIGKILL: every tick runs exactly once, none is missed (#8).

Run on every broker (``any_cluster``).
"""

from __future__ import annotations

import collections
import signal
import time
from datetime import datetime

import pytest

from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

TICKS = 10


def _holder_pid(cluster: Cluster) -> int | None:
    """The pid of the worker holding the scheduler's lease, read from the store itself (the
    state store, for RabbitMQ)."""
    store = cluster.backend or cluster.url
    if store.startswith("sqlite"):
        import sqlite3

        db = sqlite3.connect(store.removeprefix("sqlite:///"))
        try:
            row = db.execute("SELECT holder, until FROM dromos_leases").fetchone()
        except sqlite3.OperationalError:  # no table yet: no worker has opened the file
            row = None
        finally:
            db.close()
        holder = row[0] if row and row[1] > time.time() else None
    elif store.startswith("postgres"):
        import psycopg

        dsn, _, query = store.partition("?")
        schema = query.removeprefix("schema=")
        with psycopg.connect(dsn, autocommit=True) as conn:
            try:
                row = conn.execute(
                    f'SELECT holder FROM "{schema}".dromos_leases WHERE name = %s '
                    "AND holder <> '' AND until > date_part('epoch', now())",
                    ("dromos:scheduler:ledger",),
                ).fetchone()
            except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
                row = None  # no worker has migrated the schema yet
        holder = row[0] if row else None
    else:
        import redis

        from dromos.brokers.redis import RedisBroker

        broker = RedisBroker(store)
        key = f"{{{broker.prefix}:__leases__}}:lease:dromos:scheduler:ledger"
        raw = redis.Redis.from_url(store.split("?")[0]).get(key)
        holder = raw.decode() if raw else None
    return int(holder.split(":")[1]) if holder else None


def test_every_tick_runs_once_across_a_killed_scheduler(
    any_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = any_cluster
    monkeypatch.setenv("LEDGER_PERIODIC", "1")
    procs = {p.pid: p for p in (cluster.start("-c", "4", lease=2.0) for _ in range(3))}
    cluster.wait_for_boots(3)
    holder = cluster.wait_until(lambda: _holder_pid(cluster), 30.0, "a scheduler lease")
    first = cluster.wait_until(lambda: cluster.ledger.runs("tick") or None, 30.0, "a tick")
    start = datetime.fromisoformat(first[0].job_id).timestamp()
    time.sleep(3.2)
    procs[holder].send_signal(signal.SIGKILL)  # the scheduler dies; another takes over
    procs[holder].wait(timeout=10)
    end = start + TICKS - 1

    def all_ticks() -> bool | None:
        stamps = {datetime.fromisoformat(e.job_id).timestamp() for e in cluster.ledger.runs("tick")}
        return all(start + k in stamps for k in range(TICKS)) or None

    cluster.wait_until(all_ticks, 30.0, f"{TICKS} ticks")
    time.sleep(1.5)  # a duplicate, were there one, would have run by now
    runs = collections.Counter(
        datetime.fromisoformat(e.job_id).timestamp() for e in cluster.ledger.runs("tick")
    )
    window = {t: n for t, n in runs.items() if start <= t <= end}
    assert sorted(window) == [start + k for k in range(TICKS)]  # none missed
    assert set(window.values()) == {1}  # none twice
    new_holder = _holder_pid(cluster)
    assert new_holder is not None
    assert new_holder != holder
