"""Redis servers for tests: the shared server's key prefixes, a private standalone
``redis-server`` (for fault tests) and a private 3-master Redis Cluster.

Every server here is a child process of pytest, started from the ``redis-server`` binary on
free ports in a temporary directory and stopped by its pid (SIGTERM, then SIGKILL). Where
``setpriv`` exists, each child also gets SIGKILL as its parent-death signal, so a pytest that
is killed outright (``kill -9``, a ``thread``-method timeout) leaves no server behind either.
Start servers from the main thread: the parent-death signal fires when the *thread* that
started the child exits.

The shared server (127.0.0.1:6379) is never flushed, stopped or reconfigured: tests get a
unique key prefix and :func:`delete_prefix` removes only the keys that contain it.

Fixtures (import them into a ``conftest.py`` to use them):

- ``redis_cluster`` (session): the private :class:`RedisCluster`, started on first use.
- ``private_redis`` (function): ``private_redis(appendonly=True)`` starts a
  :class:`PrivateRedis`; every one started is stopped at teardown.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "SHARED_HOST",
    "SHARED_PORT",
    "PrivateRedis",
    "RedisCluster",
    "delete_prefix",
    "new_prefix",
    "private_redis",
    "redis_cluster",
    "require_binary",
    "session_cluster",
]

SHARED_HOST = "127.0.0.1"
SHARED_PORT = 6379
HOST = "127.0.0.1"

_SETPRIV = shutil.which("setpriv")
_STOP_TIMEOUT = 5.0
_READY_TIMEOUT = 5.0
_CLUSTER_TIMEOUT = 20.0
_CLUSTER_ATTEMPTS = 3  # fresh nodes on fresh ports each time


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_binary(name: str = "redis-server") -> str:
    """The path of ``name``; skips (under ``CI=true``: fails) the test when it is absent."""
    path = shutil.which(name)
    if path is None:
        why = f"{name} is not installed (not on PATH)"
        if _in_ci():
            pytest.fail(f"{why}: CI must run the Redis tests")
        pytest.skip(why)
    return path


def new_prefix() -> str:
    """A key prefix no other test uses (fixed length, so no prefix contains another)."""
    return f"dromos-test-{uuid.uuid4().hex}"


def delete_prefix(host: str, port: int, prefix: str, *, db: int = 0, batch: int = 500) -> int:
    """UNLINK every key of one server (one cluster node) that contains ``prefix``.

    SCANs with ``MATCH *<prefix>*`` in batches; each key is its own UNLINK in a pipeline, so
    this also works on a cluster node, where one command may not span hash slots. Returns
    how many keys were removed. Never touches a key without ``prefix`` in its name.
    """
    if not prefix or any(c in prefix for c in "*?[]\\"):
        raise ValueError(f"refusing to delete by a prefix that is empty or a pattern: {prefix!r}")
    deleted = 0
    with redis.Redis(host=host, port=port, db=db, socket_timeout=10) as client:
        keys: list[bytes] = []
        for key in client.scan_iter(match=f"*{prefix}*", count=1000):
            keys.append(key)
            if len(keys) >= batch:
                deleted += _unlink(client, keys)
                keys = []
        if keys:
            deleted += _unlink(client, keys)
    return deleted


def _unlink(client: redis.Redis, keys: Sequence[bytes]) -> int:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    return sum(int(n) for n in pipe.execute())


def _probe(port: int) -> redis.Redis:
    """A client that fails at once (redis-py's default retries take seconds to give up)."""
    return redis.Redis(host=HOST, port=port, socket_timeout=2, retry=Retry(NoBackoff(), 0))


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port(*, with_bus: bool = False) -> int:
    """A port that is free now (and, for a cluster node, whose bus port +10000 is too).

    Chosen below the kernel's ephemeral range, so outgoing connections cannot take it.
    """
    for _ in range(200):
        port = random.randint(15000, 22000)
        if _bindable(port) and (not with_bus or _bindable(port + 10000)):
            return port
    raise RuntimeError("no free port for redis-server")


class RedisProcess:
    """One ``redis-server`` child on ``port``, writing its files and log to ``directory``."""

    def __init__(self, port: int, directory: Path, options: Sequence[str]) -> None:
        self.port = port
        self.directory = directory
        self.options = list(options)
        self.log_path = directory / f"redis-{port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        """The server's pid (``ValueError`` when it is not running)."""
        if self._process is None:
            raise ValueError(f"redis-server on port {self.port} is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (same port, same directory) and wait until it answers PING."""
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        binary = require_binary("redis-server")
        argv = [binary, "--port", str(self.port), "--bind", HOST, "--daemonize", "no"]
        argv += ["--dir", str(self.directory), *self.options]
        if _SETPRIV is not None:
            argv = [_SETPRIV, "--pdeathsig", "KILL", *argv]
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        _LIVE.add(self)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"redis-server on port {self.port} exited:\n{self.log_tail()}")
            if self._answers_ping():
                return
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise RuntimeError(
                    f"redis-server on port {self.port} did not answer PING in "
                    f"{_READY_TIMEOUT} s:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _answers_ping(self) -> bool:
        try:
            with _probe(self.port) as client:
                return bool(client.ping())
        except redis.RedisError:  # not listening yet, or still loading its AOF
            return False

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server by its pid: SIGTERM (a clean shutdown), or SIGKILL with ``kill``.

        A server that does not exit within 5 s of SIGTERM is killed. No-op when stopped.
        """
        process, self._process = self._process, None
        _LIVE.discard(self)
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(_STOP_TIMEOUT)

    def restart(self, *, kill: bool = True, down: float = 0.0) -> None:
        """Stop (a crash, by default), stay down ``down`` seconds, start again (as
        ``PrivatePostgres.restart``)."""
        self.stop(kill=kill)
        time.sleep(down)
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


#: Every server started and not yet stopped: the last resort of :func:`_stop_all_at_exit`.
_LIVE: set[RedisProcess] = set()


@atexit.register
def _stop_all_at_exit() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop(kill=True)


class PrivateRedis(RedisProcess):
    """A private standalone server; with ``appendonly`` every write is fsynced to its AOF,
    so ``stop()`` (even ``stop(kill=True)``) then ``start()`` keeps every acknowledged write.

    ``.url`` names it with a fresh key prefix; ``.port``, ``.pid``, ``.directory`` as usual.
    """

    def __init__(self, port: int, directory: Path, *, appendonly: bool = True) -> None:
        options = ["--save", ""]
        if appendonly:
            options += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            options += ["--appendonly", "no"]
        super().__init__(port, directory, options)
        self.prefix = new_prefix()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0?prefix={self.prefix}"


class RedisCluster:
    """A private Redis Cluster of three masters (no replicas) on free ports."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.nodes: list[RedisProcess] = []

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def pids(self) -> list[int]:
        return [node.pid for node in self.nodes]

    def url(self, prefix: str) -> str:
        """The broker URL: any one node names the whole cluster."""
        return f"redis://{HOST}:{self.nodes[0].port}?prefix={prefix}"

    def start(self, masters: int = 3) -> None:
        """Start the nodes, join them with ``redis-cli --cluster create`` and wait for
        ``cluster_state:ok`` on every node. A try that fails (a loaded machine can keep the
        join waiting past its bound) is stopped, and the next starts new nodes on fresh
        ports; what the last try started is stopped too before its error is raised."""
        for attempt in range(1, _CLUSTER_ATTEMPTS + 1):
            try:
                self._start_once(masters)
                return
            except BaseException as exc:  # a node that would not start, a join timed out
                self.stop()
                self.nodes.clear()
                if attempt == _CLUSTER_ATTEMPTS or not isinstance(exc, Exception):
                    raise

    def _start_once(self, masters: int) -> None:
        cli = require_binary("redis-cli")
        for _ in range(masters):
            self._start_node()
        addresses = [f"{HOST}:{port}" for port in self.ports]
        options = ["--cluster-replicas", "0", "--cluster-yes"]
        try:
            created = subprocess.run(
                [cli, "--cluster", "create", *addresses, *options],
                capture_output=True,
                timeout=_CLUSTER_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            said = (exc.stdout or b"").decode(errors="replace")[-500:]
            logs = "\n".join(f"node {n.port}:\n{n.log_tail(5)}" for n in self.nodes)
            raise RuntimeError(
                f"redis-cli --cluster create timed out; it said:\n{said}\n{logs}"
            ) from exc
        if created.returncode != 0:
            out = (created.stdout + created.stderr).decode(errors="replace")
            raise RuntimeError(f"redis-cli --cluster create failed:\n{out}")
        self._wait_ok()

    def _start_node(self) -> None:
        for attempt in range(3):  # a port can be taken between choosing and binding it
            port = _free_port(with_bus=True)
            options = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
            options += ["--cluster-node-timeout", "5000", "--appendonly", "no", "--save", ""]
            node = RedisProcess(port, self.directory, options)
            try:
                node.start()
            except RuntimeError:
                if attempt == 2:
                    raise
                continue
            self.nodes.append(node)
            return

    def _wait_ok(self) -> None:
        """Bounded wait until every node reports the cluster ok, all slots assigned, and
        knows every master (so a client may bootstrap from any node)."""
        deadline = time.monotonic() + _CLUSTER_TIMEOUT
        pending = list(self.nodes)
        while pending:
            node = pending[0]
            with _probe(node.port) as client:
                info = client.cluster("INFO")
            if (
                info.get("cluster_state") == "ok"
                and int(info.get("cluster_slots_assigned", 0)) == 16384
                and int(info.get("cluster_known_nodes", 0)) == len(self.nodes)
            ):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis Cluster not ok after {_CLUSTER_TIMEOUT} s: {info}")
            time.sleep(0.05)

    def delete_prefix(self, prefix: str) -> int:
        """:func:`delete_prefix` on every node; returns the total removed."""
        return sum(delete_prefix(HOST, port, prefix) for port in self.ports)

    def stop(self) -> None:
        """Stop every node by its pid (SIGTERM, then SIGKILL)."""
        for node in self.nodes:
            node.stop()


class _SessionCluster:
    """The one private cluster of a test session, started on first use.

    Used both by the ``redis-cluster`` conformance backend (whose factory has no fixture
    access) and by the ``redis_cluster`` fixture. A failed start is remembered, so the
    tests that follow fail (or skip) at once instead of each waiting for a start.
    """

    def __init__(self) -> None:
        self._cluster: RedisCluster | None = None
        self._failure: str | None = None

    def get(self) -> RedisCluster:
        if self._cluster is not None:
            return self._cluster
        if self._failure is not None:
            pytest.fail(self._failure)
        require_binary("redis-server")
        require_binary("redis-cli")
        cluster = RedisCluster(Path(tempfile.mkdtemp(prefix="dromos-redis-cluster-")))
        try:
            cluster.start()
        except Exception as exc:
            shutil.rmtree(cluster.directory, ignore_errors=True)
            self._failure = f"the private Redis Cluster did not start: {exc}"
            pytest.fail(self._failure)
        self._cluster = cluster
        return cluster

    def stop(self) -> None:
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.directory, ignore_errors=True)


_SESSION = _SessionCluster()
atexit.register(_SESSION.stop)
session_cluster = _SESSION.get


def stop_session_cluster() -> None:
    """Stop the session's cluster if one was started (the session fixture's teardown)."""
    _SESSION.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """The private 3-master Redis Cluster (started on first use, stopped at session end)."""
    yield session_cluster()
    stop_session_cluster()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., PrivateRedis]]:
    """``server = private_redis(appendonly=True)``: a started private ``redis-server``.

    ``server.stop()`` / ``server.stop(kill=True)`` and ``server.start()`` restart it on the
    same port and directory (its AOF reloads); every server is stopped at teardown.
    """
    started: list[PrivateRedis] = []

    def make(*, appendonly: bool = True) -> PrivateRedis:
        require_binary("redis-server")
        last: Exception | None = None
        for _ in range(3):  # a port can be taken between choosing and binding it
            port = _free_port()
            server = PrivateRedis(port, tmp_path / f"redis-{port}", appendonly=appendonly)
            started.append(server)
            try:
                server.start()
            except RuntimeError as exc:
                last = exc
                continue
            return server
        raise RuntimeError(f"no private redis-server would start: {last}")

    yield make
    for server in started:
        server.stop()
