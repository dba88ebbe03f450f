"""procrastinate's side of the PostgreSQL benchmark task: count the completion, return the int.

Run by ``bench/.venvs/procrastinate``'s python: the worker as
``python -m procrastinate --app=procrastinate_tasks.app worker ...``, the peer by import.
The connector is ``PsycopgConnector`` (psycopg 3, the docs' asynchronous connector, the one
a worker needs) on the private cluster, with the pool dromos has by default: at most
``POOL_MAX`` connections (psycopg_pool's own default, which procrastinate keeps, is 4).
Deferring from plain code uses the ``SyncPsycopgConnector`` the connector makes for itself
when the app is opened synchronously (the docs' "automatic connector selection").
"""

from __future__ import annotations

import procrastinate
from _pgcounter import aincr_counter, dsn, private_port

POOL_MIN, POOL_MAX = 1, 10  # as dromos's broker: min_size=1, max_size=10

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(
        conninfo=dsn(private_port()), min_size=POOL_MIN, max_size=POOL_MAX
    )
)


@app.task(name="noop", queue="default")
async def noop(i: int) -> int:
    """The benchmark's task: ``UPDATE bench.counter SET n = n + 1`` on the private cluster."""
    await aincr_counter()
    return i
