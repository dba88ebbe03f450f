"""The conformance suite's fixtures: every test in tests/backends/ runs once per backend.

The tests here know nothing of any backend: they get a URL (``backend``) and use the public
API (``dromos.App``, tasks, ``Worker``) or the :class:`dromos.Broker` interface.

Adding a backend (Redis, RabbitMQ, PostgreSQL) is ONE entry in ``BACKENDS``: a factory that
yields a :class:`Target` naming a fresh, empty store private to one test, and cleans it up
afterwards. A backend that needs a server calls :func:`require_server` first; outside CI an
absent server skips its tests, and under ``CI=true`` it fails them, so CI can never pass by
skipping a backend. ``_redis`` and ``_redis_cluster`` below are the model: a key prefix
private to one test on the shared server (or on the session's private Redis Cluster, see
``tests/redis_servers.py``), whose keys, and only those, are deleted afterwards.

Selecting backends: ``-k memory``, ``-k sqlite``, ``-k redis`` (both Redis backends),
``-k "redis and not cluster"`` (the shared server), ``-k redis-cluster`` (the cluster),
``-k postgres`` (the shared PostgreSQL server, one fresh schema per test), ``-k rabbitmq``
(the shared RabbitMQ node under a name prefix per test, records in Redis; with
``DROMOS_TEST_RABBITMQ_STORES=all`` also in SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dromos
from dromos.brokers import create_broker
from dromos.brokers.base import Broker, BrokerOptions
from tests import redis_servers
from tests.redis_servers import private_redis, redis_cluster
from tests.servers import require_server

__all__ = ["BACKENDS", "Target", "Workers", "private_redis", "redis_cluster", "require_server"]


@dataclass(frozen=True)
class Target:
    """Where one test's jobs travel: a broker URL (and a result backend, for brokers that
    keep no status)."""

    broker: str
    backend: str | None = None


BackendFactory = Callable[[Path, str], AbstractContextManager[Target]]


@contextlib.contextmanager
def _memory(tmp_path: Path, test_id: str) -> Iterator[Target]:
    yield Target("memory://")  # every broker instance is its own empty store


@contextlib.contextmanager
def _sqlite(tmp_path: Path, test_id: str) -> Iterator[Target]:
    yield Target(f"sqlite:///{tmp_path}/x.db")


def _require_redis_broker() -> None:
    # Until the lead lands brokers/redis.py, the Redis entries skip instead of failing.
    if importlib.util.find_spec("dromos.brokers.redis") is None:
        pytest.skip("redis broker not implemented yet")


@contextlib.contextmanager
def _redis(tmp_path: Path, test_id: str) -> Iterator[Target]:
    """The shared server, db 0, under a prefix of this test's own; only its keys are deleted."""
    _require_redis_broker()
    host, port = redis_servers.SHARED_HOST, redis_servers.SHARED_PORT
    require_server("redis", host, port)
    prefix = redis_servers.new_prefix()
    try:
        yield Target(f"redis://{host}:{port}/0?prefix={prefix}")
    finally:
        redis_servers.delete_prefix(host, port, prefix)


@contextlib.contextmanager
def _redis_cluster(tmp_path: Path, test_id: str) -> Iterator[Target]:
    """The session's private 3-master Redis Cluster (started by the first test that uses it),
    under a prefix of this test's own, deleted from every node afterwards."""
    _require_redis_broker()
    cluster = redis_servers.session_cluster()
    prefix = redis_servers.new_prefix()
    try:
        yield Target(cluster.url(prefix))
    finally:
        cluster.delete_prefix(prefix)


POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
POSTGRES_DSN = f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/test"


@contextlib.contextmanager
def _postgres(tmp_path: Path, test_id: str) -> Iterator[Target]:
    """The shared server's database ``test``, in a schema of this test's own (the broker
    creates it on open), dropped with everything in it afterwards."""
    require_server("postgresql", POSTGRES_HOST, POSTGRES_PORT)
    if (
        importlib.util.find_spec("psycopg") is None
        or importlib.util.find_spec("psycopg_pool") is None
    ):
        why = "psycopg is not installed: pip install -e '.[postgres]'"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why}: CI must run the tests of every backend")
        pytest.skip(why)
    schema = f"dromos_t_{secrets.token_hex(6)}"
    try:
        yield Target(f"{POSTGRES_DSN}?schema={schema}")
    finally:
        drop_postgres_schema(schema)


def drop_postgres_schema(schema: str) -> None:
    """Drop one test's schema (never anything else of the shared server)."""
    import psycopg

    assert schema.startswith("dromos_t_")
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672


@contextlib.contextmanager
def _rabbitmq(store: BackendFactory, tmp_path: Path, test_id: str) -> Iterator[Target]:
    """The shared RabbitMQ node under a name prefix of this test's own (every queue and
    exchange declared under it is deleted afterwards), its records in ``store``'s."""
    require_server("rabbitmq", RABBITMQ_HOST, RABBITMQ_PORT)
    if importlib.util.find_spec("aio_pika") is None:
        why = "aio-pika is not installed: pip install -e '.[rabbitmq]'"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why}: CI must run the tests of every backend")
        pytest.skip(why)
    prefix = f"dromos_t_{secrets.token_hex(6)}"
    url = f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/?prefix={prefix}&publish_timeout=5"
    with store(tmp_path, test_id) as records:
        try:
            yield Target(url, records.broker)
        finally:
            from dromos.brokers.rabbitmq_transport import AmqpTransport

            async def delete() -> None:
                transport = AmqpTransport(url)
                await transport.delete_names(set(transport.declared))

            asyncio.run(delete())


#: name -> factory of a fresh store; the suite is parametrized over these names.
#: ``-k redis`` selects both Redis backends, ``-k redis-cluster`` the cluster alone.
BACKENDS: dict[str, BackendFactory] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
    "redis-cluster": _redis_cluster,
    "postgres": _postgres,
    "rabbitmq-redis": functools.partial(_rabbitmq, _redis),
}
# RabbitMQ with its other state stores: the RabbitMQ side is the same code, and each store's
# relay mode is proved on its own (test_relay_primitives.py), so the whole suite runs on these
# pairs only when asked (DROMOS_TEST_RABBITMQ_STORES=all), to keep `make test` under ten
# minutes.
if os.environ.get("DROMOS_TEST_RABBITMQ_STORES") == "all":
    BACKENDS["rabbitmq-sqlite"] = functools.partial(_rabbitmq, _sqlite)
    BACKENDS["rabbitmq-postgres"] = functools.partial(_rabbitmq, _postgres)


@pytest.fixture(scope="session", autouse=True)
def _stop_redis_cluster() -> Iterator[None]:
    # The redis-cluster factory starts the cluster lazily (it has no fixture access): stop it
    # at the end of the session, whether or not any test asked for the ``redis_cluster`` fixture.
    yield
    redis_servers.stop_session_cluster()


@pytest.fixture(autouse=True)
def _no_environment_override(monkeypatch: pytest.MonkeyPatch) -> None:
    # $DROMOS_BROKER would silently point every test at one store.
    monkeypatch.delenv("DROMOS_BROKER", raising=False)
    monkeypatch.delenv("DROMOS_BACKEND", raising=False)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """A fresh, empty store of each backend in turn."""
    test_id = re.sub(r"\W+", "_", request.node.name)[-60:]
    with BACKENDS[request.param](tmp_path, test_id) as target:
        yield target


MakeBroker = Callable[..., Awaitable[Broker]]


@pytest.fixture
async def make_broker(backend: Target) -> AsyncIterator[MakeBroker]:
    """``await make_broker(max_recoveries=1, ...)``: an opened broker with these options.

    Each call makes a new broker *instance* on the test's store (for the memory backend a
    new instance is a new store, so tests that need two clients share one instance).
    """
    made: list[Broker] = []

    async def make(**options: Any) -> Broker:
        broker = create_broker(backend.broker, BrokerOptions(**options), backend.backend)
        await broker.open()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()


@pytest.fixture
async def broker(make_broker: MakeBroker) -> Broker:
    """An opened broker with the default options."""
    return await make_broker()


@pytest.fixture
async def make_app(backend: Target) -> AsyncIterator[Callable[..., dromos.App]]:
    """``make_app(lease=1.0)``: an app on the test's store (closed at teardown)."""
    apps: list[dromos.App] = []

    def make(**kwargs: Any) -> dromos.App:
        kwargs.setdefault("lease", 2.0)
        app = dromos.App("conformance", broker=backend.broker, backend=backend.backend, **kwargs)
        apps.append(app)
        return app

    yield make
    for app in apps:
        await app.aclose()
        app.portal.stop()


@pytest.fixture
def app(make_app: Callable[..., dromos.App]) -> dromos.App:
    """An app with a short lease (2 s), so heartbeats come every ~0.7 s."""
    return make_app()


class Workers:
    """Starts in-process workers as asyncio tasks and makes sure each one stops."""

    def __init__(self) -> None:
        self._running: dict[dromos.Worker, asyncio.Task[None]] = {}

    def start(self, app: dromos.App, **kwargs: Any) -> dromos.Worker:
        kwargs.setdefault("concurrency", 4)
        worker = dromos.Worker(app, **kwargs)
        self._running[worker] = asyncio.create_task(worker.run())
        return worker

    async def stop(self, worker: dromos.Worker, *, now: bool = False, timeout: float = 10) -> None:
        """Stop ``worker`` and wait until its ``run()`` returned (re-raising its error)."""
        worker.stop(now=now)
        task = self._running.pop(worker)
        await asyncio.wait_for(task, timeout)

    async def ended(self, worker: dromos.Worker, timeout: float = 10) -> None:
        """Wait until ``worker``'s ``run()`` returns by itself (re-raising its error)."""
        task = self._running[worker]
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        finally:
            if task.done():
                del self._running[worker]

    async def stop_all(self) -> None:
        for worker in list(self._running):
            await self.stop(worker, now=True)


@pytest.fixture
async def workers() -> AsyncIterator[Workers]:
    """``workers.start(app, concurrency=2)``; every worker still running is stopped after."""
    pool = Workers()
    yield pool
    await pool.stop_all()
