"""PostgreSQL servers for tests: schemas on the shared server, and a private cluster for
fault tests.

The shared server (127.0.0.1:5432, user ``postgres``, trust, database ``test``) is never
stopped or reconfigured: a test gets a schema of its own (:func:`new_schema`) and
:func:`drop_schema` drops that schema, and only that one, with everything in it.

A private cluster (:class:`PrivatePostgres`, fixture ``private_postgres``) is made with
``initdb`` (trust auth, superuser ``postgres``) in ``tmp_path``, started with ``pg_ctl`` on a
free port of 127.0.0.1 with its unix socket directory in ``tmp_path`` too, and can be
restarted (a fast shutdown, or ``-m immediate``: a crash, recovered from the WAL on start).
At teardown, also when the test failed, the postmaster is stopped by its pid (SIGQUIT, an
immediate shutdown, then SIGKILL); an ``atexit`` hook does the same for any cluster a dying
pytest leaves behind.

The binaries are those of ``/usr/lib/postgresql/<version>/bin`` (the newest), else
``initdb`` and ``pg_ctl`` on PATH. PostgreSQL refuses to run as root: under root the cluster
runs as the ``postgres`` system user (``setpriv``), and since pytest's base temporary
directory is private to root (0700), its data directory then lives in a directory of its
own under the system temp dir (removed at teardown) that ``tmp_path`` links to as
``pgdata``. Outside CI a missing binary, psycopg or shared server skips the test; under
``CI=true`` it fails it.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.servers import require_server

__all__ = [
    "SHARED_DSN",
    "SHARED_HOST",
    "SHARED_PORT",
    "PrivatePostgres",
    "drop_schema",
    "new_schema",
    "pg_binary",
    "private_postgres",
    "require_psycopg",
    "require_shared_postgres",
]

SHARED_HOST, SHARED_PORT = "127.0.0.1", 5432
SHARED_DSN = f"postgresql://postgres@{SHARED_HOST}:{SHARED_PORT}/test"
HOST = "127.0.0.1"
_SCHEMA_PREFIX = "dromos_t_"
_READY_TIMEOUT = 30.0  # seconds for pg_ctl -w (a crash recovery replays the WAL first)
_STOP_TIMEOUT = 10.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _missing(why: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"{why}: CI must run the PostgreSQL tests")
    pytest.skip(why)


def require_psycopg() -> None:
    """Skip (under ``CI=true``: fail) unless psycopg and psycopg_pool import."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        _missing("psycopg is not installed: pip install -e '.[postgres]'")


def require_shared_postgres() -> str:
    """The shared server's DSN (database ``test``); skips or fails when it is not there."""
    require_server("postgresql", SHARED_HOST, SHARED_PORT)
    require_psycopg()
    return SHARED_DSN


def new_schema() -> str:
    """A schema name no other test uses."""
    return f"{_SCHEMA_PREFIX}{secrets.token_hex(6)}"


def drop_schema(schema: str, dsn: str = SHARED_DSN) -> None:
    """Drop one test's schema with everything in it (never anything else of the server)."""
    import psycopg

    if not schema.startswith(_SCHEMA_PREFIX) or not schema.replace("_", "").isalnum():
        raise ValueError(f"refusing to drop a schema that is not a test's own: {schema!r}")
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- a private cluster ---------------------------------------------------------------------
def pg_binary(name: str) -> str:
    """The path of PostgreSQL's ``name`` (initdb, pg_ctl, psql ...); skips (CI: fails) when
    it is not installed."""
    found = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(v) if (v := Path(p).parents[1].name).isdigit() else 0,
    )
    path = found[-1] if found else shutil.which(name)
    if path is None:
        _missing(f"{name} is not installed (neither /usr/lib/postgresql/*/bin nor PATH)")
    return path


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    """A port that is free now, below the kernel's ephemeral range."""
    for _ in range(200):
        port = random.randint(22001, 29000)
        if _bindable(port):
            return port
    raise RuntimeError("no free port for a private PostgreSQL")


class PrivatePostgres:
    """One private cluster: ``initdb`` once, then ``start()`` / ``stop()`` / ``restart()``
    on the same port, data and socket directories. ``.url(schema)`` names it for dromos."""

    def __init__(
        self, port: int, directory: Path, *, server_settings: dict[str, str] | None = None
    ) -> None:
        self.port = port
        # -c settings of the postmaster: the tests' default trades durability for speed (the
        # benchmark's cluster keeps PostgreSQL's own, fsync on).
        self.server_settings = (
            {"fsync": "off", "full_page_writes": "off"}
            if server_settings is None
            else server_settings
        )
        self.directory = directory  # in tmp_path: the log, the socket dir, pgdata (or a link)
        self.log_path = directory / "postgres.log"
        self.socket_dir = directory / "sock"
        self.data = directory / "pgdata"
        self._outside: Path | None = None  # the data's real home when running as root
        self._as: list[str] = []  # setpriv prefix when running as root
        self.pid: int | None = None  # the postmaster's, while it runs

    # -- names ------------------------------------------------------------------------------
    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def url(self, schema: str = "dromos_private") -> str:
        return f"{self.dsn}?schema={schema}"

    # -- life cycle -------------------------------------------------------------------------
    def init(self) -> None:
        """``initdb`` (trust auth, superuser ``postgres``, no fsync of the new files)."""
        initdb = pg_binary("initdb")
        pg_binary("pg_ctl")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            self._run_as_postgres_user()
        self._call([initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres",
                    "-E", "UTF8", "--no-sync", "--no-instructions"], 60.0)  # fmt: skip

    def _run_as_postgres_user(self) -> None:
        setpriv = shutil.which("setpriv")
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            user = None
        if setpriv is None or user is None:
            _missing("running as root, and no 'postgres' user or setpriv to run PostgreSQL as")
        self._as = [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                    "--init-groups"]  # fmt: skip
        self._outside = Path(tempfile.mkdtemp(prefix="dromos-pg-"))
        self.data.symlink_to(self._outside / "pgdata")
        self.socket_dir = self._outside / "sock"
        self.socket_dir.mkdir()
        for path in (self._outside, self.socket_dir):
            os.chown(path, user.pw_uid, user.pw_gid)
        self.log_path = self._outside / "postgres.log"
        (self.directory / "postgres.log").symlink_to(self.log_path)
        self.data = self._outside / "pgdata"

    def _call(self, argv: list[str], timeout: float) -> None:
        done = subprocess.run(
            [*self._as, *argv], capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
            cwd=self._outside or self.directory,
        )  # fmt: skip
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace")
            raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}):\n{out}\n"
                               f"{self.log_tail()}")  # fmt: skip

    def start(self) -> None:
        """Start the postmaster (``pg_ctl start -w``) and note its pid."""
        if self.running:
            raise RuntimeError(f"the private PostgreSQL on port {self.port} is already running")
        settings = {**self.server_settings, "max_connections": "100"}
        options = f"-p {self.port} -c listen_addresses={HOST} -k {self.socket_dir} " + " ".join(
            f"-c {name}={value}" for name, value in settings.items()
        )
        _LIVE.add(self)
        self._call([pg_binary("pg_ctl"), "start", "-D", str(self.data), "-l",
                    str(self.log_path), "-o", options, "-w", "-t", str(int(_READY_TIMEOUT))],
                   _READY_TIMEOUT + 10)  # fmt: skip
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    @property
    def running(self) -> bool:
        return self.pid is not None and _alive(self.pid)

    def stop(self, *, immediate: bool = False) -> None:
        """Stop the postmaster by its pid: SIGINT (a fast shutdown, a checkpoint), or with
        ``immediate`` SIGQUIT (no checkpoint: the next start recovers from the WAL, as after
        a crash). Killed if it has not exited within 10 s. No-op when stopped."""
        pid, self.pid = self.pid, None
        _LIVE.discard(self)
        if pid is None or not _alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT if immediate else signal.SIGINT)
        if not _wait_gone(pid, _STOP_TIMEOUT):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, _STOP_TIMEOUT)

    def restart(self, *, immediate: bool = True, down: float = 0.0) -> None:
        """Stop (immediately, by default), stay down ``down`` seconds, start again."""
        self.stop(immediate=immediate)
        time.sleep(down)
        self.start()

    def close(self) -> None:
        """Stop it at once and remove a data directory kept outside ``tmp_path``."""
        self.stop(immediate=True)
        if self._outside is not None:
            shutil.rmtree(self._outside, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


#: Every cluster started and not yet stopped: the last resort of :func:`_stop_all_at_exit`.
_LIVE: set[PrivatePostgres] = set()


@atexit.register
def _stop_all_at_exit() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.close()


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[Callable[[], PrivatePostgres]]:
    """``server = private_postgres()``: a started private cluster (``server.restart()``,
    ``server.stop()`` / ``server.start()``, ``server.url(schema)``); every one made is
    stopped by its pid at teardown, also when the test failed."""
    require_psycopg()
    made: list[PrivatePostgres] = []

    def make() -> PrivatePostgres:
        last: Exception | None = None
        for n in range(3):  # a port can be taken between choosing and binding it
            server = PrivatePostgres(_free_port(), tmp_path / f"pg-{len(made)}-{n}")
            made.append(server)
            try:
                server.init()
                server.start()
            except RuntimeError as exc:
                last = exc
                server.close()
                continue
            return server
        raise RuntimeError(f"no private PostgreSQL would start: {last}")

    yield make
    for server in made:
        server.close()
