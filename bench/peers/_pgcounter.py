"""The PostgreSQL benchmark's completion counter: one row of the private cluster.

Every system's task (``dromos_pg_tasks.py``, ``procrastinate_tasks.py``) takes an int, runs
``UPDATE bench.counter SET n = n + 1`` on the private cluster and returns the int; the driver
(``_driver.py --store postgres``) reads ``n`` every 2 ms and empties the tables between
phases (``flush``).

One connection per worker process (made on first use, in the worker's event loop), in
autocommit with ``synchronous_commit = off``: the counter's commit does not wait for its WAL
flush. It is the benchmark's bookkeeping, not the systems' work: at ``on`` (with ``fsync=on``)
one connection's increments top out at about 3,300/s on this VM, which would cap both
systems' drains at the counter; at ``off``, about 8,000 to 11,000/s. The systems' own
transactions keep the cluster's ``synchronous_commit = on``. Both systems pay the same cost
per job here (one round trip of a one-row ``UPDATE``).

Imports only psycopg (both virtualenvs have it) and the stdlib.
"""

from __future__ import annotations

import os
from typing import Any

SHARED_PORT = 5432  # the shared server: never used here
TABLE = "bench.counter"


def dsn(port: int) -> str:
    """The private cluster's ``postgres`` database; the shared server is refused."""
    if port == SHARED_PORT or port <= 0:
        raise RuntimeError(f"refusing PostgreSQL port {port}: not the benchmark's private one")
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def private_port() -> int:
    """``$BENCH_PG_PORT``: the benchmark's private cluster."""
    return int(os.environ.get("BENCH_PG_PORT", "0"))


_async: dict[int, Any] = {}


async def aincr_counter() -> None:
    """``UPDATE bench.counter SET n = n + 1`` (an async task: one loop per worker process)."""
    pid = os.getpid()
    conn = _async.get(pid)
    if conn is None or conn.closed:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(dsn(private_port()), autocommit=True)
        await conn.execute("SET synchronous_commit = off")
        _async[pid] = conn
    await conn.execute(f"UPDATE {TABLE} SET n = n + 1 WHERE id = 1")


# -- the driver's side ---------------------------------------------------------------------------
_TABLES = (
    "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname NOT IN "
    "('pg_catalog', 'information_schema') AND tablename NOT LIKE '%schema_version'"
)


def flush(port: int) -> None:
    """Empty every table of the database but migration bookkeeping, the counter back to 0,
    then a ``CHECKPOINT``."""
    import psycopg

    with psycopg.connect(dsn(port), autocommit=True) as conn:
        conn.execute("SET lock_timeout = '30s'")
        tables = [row[0] for row in conn.execute(_TABLES).fetchall()]
        if tables:
            conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id int PRIMARY KEY, n bigint NOT NULL)")
        conn.execute(f"INSERT INTO {TABLE} VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET n = 0")
        conn.execute("CHECKPOINT")


def analyze(port: int) -> None:
    """``ANALYZE`` the database: after a flush and a fill, as autovacuum would within its
    minute (``autovacuum_naptime``), so that the drain's queries are planned with statistics."""
    import psycopg

    with psycopg.connect(dsn(port), autocommit=True) as conn:
        conn.execute("ANALYZE")


class Reader:
    """Reads the counter (``reader()``) on a connection of its own."""

    def __init__(self, port: int) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn(port), autocommit=True)

    def __call__(self) -> int:
        row = self.conn.execute(f"SELECT n FROM {TABLE} WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.conn.close()
