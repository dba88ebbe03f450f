"""Redis URL options: password, database and TLS reach a private server as the URL says.

Each test starts its own ``redis-server`` on a free port (a password, or TLS with a
certificate made here) and stops it by its pid.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

import dromos
from tests.redis_servers import _free_port, require_binary

pytestmark = pytest.mark.slow


def _serve(argv: list[str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"redis-server did not listen on {port}")


@dataclass(frozen=True)
class Server:
    port: int  # plain, with a password
    tls_port: int  # TLS, same password
    cert: Path  # the CA certificate a client trusts


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A private redis-server with a password on the plain port and TLS on another."""
    binary = require_binary("redis-server")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"),
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port, tls_port = _free_port(), _free_port()
    cert = tmp_path / "cert.pem"
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(tmp_path), "--requirepass", "s3cret",
            "--tls-port", str(tls_port), "--tls-cert-file", str(cert),
            "--tls-key-file", str(tmp_path / "key.pem"), "--tls-ca-cert-file", str(cert),
            "--tls-auth-clients", "no"]  # fmt: skip
    process = _serve(argv, port)
    try:
        yield Server(port, tls_port, cert)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _round_trip(url: str) -> int:
    app = dromos.App("urls", broker=url)

    @app.task
    async def double(i: int) -> int:
        return 2 * i

    worker = app.worker(concurrency=2)
    running = asyncio.create_task(worker.run())
    try:
        job = await double.aenqueue(21)
        return await job.aresult(timeout=10)
    finally:
        worker.stop()
        await running
        await app.aclose()


async def test_a_password_and_a_database_in_the_url_are_used(server: Server) -> None:
    port = server.port
    assert await _round_trip(f"redis://:s3cret@127.0.0.1:{port}/3?prefix=urls") == 42
    keys = redis.Redis(port=port, password="s3cret", db=3).keys("*urls*")
    assert keys, "the jobs went to database 3"


async def test_a_wrong_password_is_a_clear_broker_error(server: Server) -> None:
    port = server.port
    app = dromos.App("urls", broker=f"redis://:wrong@127.0.0.1:{port}/0")

    @app.task
    async def nothing() -> None: ...

    # At once, with the server's word: a refusal is not retried as a lost connection is.
    with pytest.raises(dromos.BrokerError, match=f"127.0.0.1:{port}") as raised:
        await asyncio.wait_for(nothing.aenqueue(), 2.0)
    assert "password" in str(raised.value).lower()
    await app.aclose()


async def test_rediss_speaks_tls(server: Server) -> None:
    url = f"rediss://:s3cret@127.0.0.1:{server.tls_port}/0?prefix=tls&ssl_ca_certs={server.cert}"
    assert await _round_trip(url) == 42
