"""A private PostgreSQL cluster for ``postgres_bench.py``: the tests' own
(``tests/pg_servers.py``: ``initdb``, a free port of 127.0.0.1, run as the ``postgres`` user
under root, stopped by its pid), in a new temporary directory removed at the end. The shared
server on 5432 is never used, not even looked at.

Settings: PostgreSQL's defaults (``fsync=on``, ``synchronous_commit=on``,
``full_page_writes=on``, 128 MB of shared buffers) but for the address, the port, the socket
directory, ``max_connections=100`` and (``--fsync off``) ``fsync=off``. The same cluster, with
the same settings, serves every system of a run.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/
from tests import pg_servers

__all__ = ["PrivatePostgres"]


class PrivatePostgres(pg_servers.PrivatePostgres):
    """Initialised and started at construction; ``stop()`` ends it and removes its files."""

    def __init__(self, fsync: bool = True) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        last = ""
        for attempt in range(3):  # a port can be taken between choosing and binding it
            super().__init__(
                pg_servers._free_port(), self.tmp / f"cluster-{attempt}",
                server_settings={"fsync": "on" if fsync else "off"},
            )  # fmt: skip
            self.init()
            try:
                self.start()
                return
            except RuntimeError as exc:
                last = str(exc)
                super().stop(immediate=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        raise RuntimeError(f"the private PostgreSQL would not start:\n{last}")

    def settings(self) -> dict[str, str]:
        """The server's version and the settings that bear on the figures."""
        import psycopg

        names = ("fsync", "synchronous_commit", "full_page_writes", "shared_buffers",
                 "wal_level", "max_wal_size", "checkpoint_timeout", "max_connections")  # fmt: skip
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            out = {"server_version": str(conn.execute("SHOW server_version").fetchone()[0])}  # type: ignore[index]
            for name in names:
                out[name] = str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
        return out

    def stop(self, *, immediate: bool = False) -> None:
        """Stop the postmaster by its pid and remove the cluster's files (``close()`` stops
        through here too)."""
        super().stop(immediate=immediate)
        if self._outside is not None:  # the data directory the postgres user owns (root)
            shutil.rmtree(self._outside, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
