"""A private RabbitMQ node for the tests that stop or restart their broker.

The shared node (127.0.0.1:5672) is never stopped or reconfigured: a test that kills its
broker starts its own node here, with its own node name, ports, Erlang cookie (its own
``HOME``), configuration and data directory in the test's temporary directory, and stops it
by its process group, which it started itself. A restart keeps the data directory, so durable
quorum queues and their messages come back as after a crash.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.redis_servers import require_binary

__all__ = ["PrivateRabbitMQ", "private_rabbitmq"]

_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # Debian's, without its su wrapper


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRabbitMQ:
    """One node on 127.0.0.1:``port``, its files under ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = _free_port()
        self.dist_port = _free_port()
        self.name = f"dromos_t_{secrets.token_hex(4)}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        base.mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self, timeout: float = 60.0) -> None:
        """Start the node (again) and wait until it accepts AMQP connections."""
        env = {
            **os.environ,
            "HOME": str(self.base),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(self.base / "pid"),
        }
        with (self.base / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [_SERVER], env=env, cwd=self.base, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.2)
        tail = (self.base / "server.log").read_text(errors="replace")[-2000:]
        self.stop(kill=True)
        raise RuntimeError(f"the private RabbitMQ node did not start:\n{tail}")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the node: SIGKILL with ``kill`` (a crash), else SIGTERM; wait until gone."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # The Erlang VM may outlive its wrapper for a moment: wait until the port is free.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                time.sleep(0.1)
            except OSError:
                return

    def restart(self, *, kill: bool = True, down: float = 0.0) -> None:
        """Stop (a crash, by default), stay down ``down`` seconds, start again (as
        ``PrivatePostgres.restart``)."""
        self.stop(kill=kill)
        time.sleep(down)
        self.start()


@pytest.fixture
def private_rabbitmq(tmp_path: Path) -> Iterator[Callable[[], PrivateRabbitMQ]]:
    """``node = private_rabbitmq()``: a started private node, stopped at teardown."""
    started: list[PrivateRabbitMQ] = []

    def make() -> PrivateRabbitMQ:
        require_binary("rabbitmq-server")
        require_binary("erl")
        node = PrivateRabbitMQ(tmp_path / f"rabbitmq-{len(started)}")
        started.append(node)
        node.start()
        return node

    yield make
    for node in started:
        node.stop(kill=True)
