"""A private PostgreSQL cluster for ``postgres_bench.py``, started and stopped by pid.

``initdb`` (trust auth, superuser ``postgres``) in a new temporary directory, then the
postmaster on a free port of 127.0.0.1 with its unix socket in that directory too; ``stop()``
ends it by its pid (SIGINT: a fast shutdown; SIGKILL if it is still there after 30 s) and
removes the directory. The shared server on 5432 is never used, not even looked at.

Settings: PostgreSQL's defaults (``fsync=on``, ``synchronous_commit=on``,
``full_page_writes=on``, 128 MB of shared buffers) but for the address, the port, the socket
directory, ``max_connections=100`` and (``--fsync off``) ``fsync=off``. The same cluster, with
the same settings, serves every system of a run.

PostgreSQL refuses to run as root: under root the cluster runs as the ``postgres`` system
user (``setpriv``), its directory owned by that user. Stdlib only.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
SHARED_PORT = 5432  # the shared server: never used here


def pg_binary(name: str) -> str:
    """``name`` (initdb, pg_ctl, postgres ...) of the newest /usr/lib/postgresql/<v>/bin,
    else from PATH."""
    found = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(v) if (v := Path(p).parents[1].name).isdigit() else 0,
    )
    path = found[-1] if found else shutil.which(name)
    if path is None:
        raise SystemExit(f"{name} is not installed (neither /usr/lib/postgresql/*/bin nor PATH)")
    return path


def _free_port() -> int:
    """A port free now, below the kernel's ephemeral range; never the shared server's."""
    for _ in range(200):
        port = random.randint(22001, 29000)
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        if port != SHARED_PORT:
            return port
    raise RuntimeError("no free port for a private PostgreSQL")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class PrivatePostgres:
    """``initdb`` + ``pg_ctl start`` at construction; ``stop()`` by pid. ``dsn`` names it."""

    def __init__(self, fsync: bool = True) -> None:
        self.fsync = fsync
        self.dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        self.data = self.dir / "pgdata"
        self.sock = self.dir / "sock"
        self.log = self.dir / "postgres.log"
        self.sock.mkdir()
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")  # KeyError: no such user, nothing to run it as
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                raise SystemExit("running as root and no setpriv to run PostgreSQL as postgres")
            self._as = [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                        "--init-groups"]  # fmt: skip
            for path in (self.dir, self.sock):
                os.chown(path, user.pw_uid, user.pw_gid)
        self.pid: int | None = None
        self._call([pg_binary("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                    "-E", "UTF8", "--no-instructions"], 120)  # fmt: skip
        last = ""
        for _ in range(3):  # a port can be taken between choosing and binding it
            self.port = _free_port()
            try:
                self._start()
                return
            except RuntimeError as exc:
                last = str(exc)
        self.stop()
        raise RuntimeError(f"the private PostgreSQL would not start:\n{last}")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def _call(self, argv: list[str], timeout: float) -> None:
        done = subprocess.run([*self._as, *argv], capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd=self.dir)  # fmt: skip
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace")
            raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}):\n{out}")

    def _start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses={HOST} -k {self.sock} "
                   f"-c max_connections=100 -c fsync={'on' if self.fsync else 'off'}")  # fmt: skip
        self._call([pg_binary("pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log),
                    "-o", options, "-w", "-t", "60"], 90)  # fmt: skip
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

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

    def stop(self) -> None:
        """Fast shutdown by pid (SIGINT), SIGKILL after 30 s; then remove the directory."""
        pid, self.pid = self.pid, None
        if pid is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                while _alive(pid):
                    time.sleep(0.05)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
