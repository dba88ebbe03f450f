"""dromos on PostgreSQL through the shared driver (``--store postgres``; the project's ``.venv``).

The same measuring code as ``dromos_peer.py`` (Redis), on the broker URL
``postgresql://postgres@127.0.0.1:<port>/postgres?schema=dromos`` of the private cluster:
dromos's tables in a schema of their own, migrated on first use (``prepare`` does it once,
before the first phase, so that no figure contains it), at the broker's defaults (a pool of
at most 10 connections per event loop, plus one listening connection).

- Status and results always on (dromos keeps each job's state and result in its row).
- Worker: ``dromos worker dromos_pg_tasks:app -c 32 -q default`` (``-p 2``: dromos's own
  second process), woken by ``LISTEN``/``NOTIFY`` (no polling while notifications arrive).
- Enqueue: ``noop.enqueue(i)`` one at a time (blocking, through the app's portal thread);
  bulk ``noop.enqueue_many`` of 1,000 (one ``INSERT ... SELECT FROM unnest(...)`` each).
- Round trip: ``noop.enqueue(i).result(timeout=60)``, which waits on the ``done``
  notification (``LISTEN``), not by polling.
- Extras: ``await noop.aenqueue(i)`` one at a time, and from 64 coroutines at once.
"""

from __future__ import annotations

import asyncio

from _driver import main
from _pgcounter import dsn
from dromos_peer import Dromos

SCHEMA = "dromos"


class DromosPostgres(Dromos):
    name = "dromos"
    tasks = "dromos_pg_tasks"
    port_env = "BENCH_PG_PORT"

    def _url(self, port: int) -> str:
        return f"{dsn(port)}?schema={SCHEMA}"

    def prepare(self, port: int) -> None:
        """Apply dromos's migrations now (the first use would), outside every figure."""
        mod = self._app(port)

        async def migrate() -> None:
            await mod.app.broker.migrate()

        asyncio.run(migrate())


if __name__ == "__main__":
    main(DromosPostgres())
