"""The Redis test fixtures themselves, checked with raw redis-py: the private cluster, the
private restartable server, and prefix cleanup that never touches another prefix's keys."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
import redis.asyncio

from tests.backends import conftest
from tests.backends.conftest import BACKENDS, require_server
from tests.redis_servers import (
    SHARED_HOST,
    SHARED_PORT,
    PrivateRedis,
    RedisCluster,
    RedisProcess,
    delete_prefix,
    new_prefix,
)


def _prefix_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["prefix"][0]


@pytest.fixture
def shared_redis() -> Iterator[redis.Redis]:
    require_server("redis", SHARED_HOST, SHARED_PORT)
    with redis.Redis(host=SHARED_HOST, port=SHARED_PORT, db=0) as client:
        yield client


@pytest.fixture
def sentinel(shared_redis: redis.Redis) -> Iterator[bytes]:
    """A key under another test's prefix on the shared server, removed at teardown."""
    key = f"{{{new_prefix()}:default}}:ready".encode()
    shared_redis.set(key, b"keep")
    yield key
    shared_redis.unlink(key)


def _exists(client: redis.Redis, keys: list[str] | list[bytes]) -> int:
    return int(client.exists(*keys))


def test_cluster_covers_all_16384_slots_with_three_masters(redis_cluster: RedisCluster) -> None:
    with redis.Redis(host="127.0.0.1", port=redis_cluster.ports[0]) as client:
        slots = client.cluster("SLOTS")
    owners = {tuple(entry[2][:2]) for entry in slots}
    assert sum(end - start + 1 for start, end, *_ in slots) == 16384
    assert {port for _host, port in owners} == set(redis_cluster.ports)


def test_a_cluster_whose_first_join_fails_starts_on_fresh_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A join that times out (a loaded machine) costs one more try, not the session's
    cluster tests: the first try's nodes are stopped, the second starts new ones."""
    real = RedisCluster._start_once
    tried: list[list[RedisProcess]] = []

    def first_fails(self: RedisCluster, masters: int) -> None:
        if not tried:
            self._start_node()
            tried.append(list(self.nodes))
            raise RuntimeError("redis-cli --cluster create timed out")
        real(self, masters)

    monkeypatch.setattr(RedisCluster, "_start_once", first_fails)
    cluster = RedisCluster(tmp_path)
    try:
        cluster.start()
        assert len(cluster.nodes) == 3
        assert not any(node in cluster.nodes for node in tried[0])
        assert not tried[0][0].running
        with redis.Redis(host="127.0.0.1", port=cluster.ports[0]) as client:
            assert client.cluster("INFO")["cluster_state"] == "ok"
    finally:
        cluster.stop()


async def test_cluster_accepts_keys_across_slots(redis_cluster: RedisCluster) -> None:
    prefix = new_prefix()
    keys = [f"{{{prefix}:q{i}}}:ready" for i in range(30)]
    try:
        async with redis.asyncio.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[1]) as rc:
            for i, key in enumerate(keys):
                await rc.set(key, i)
            nodes = {rc.get_node_from_key(key).port for key in keys}
            values = [await rc.get(key) for key in keys]
        assert nodes == set(redis_cluster.ports)  # the keys really span every master
        assert values == [str(i).encode() for i in range(30)]
    finally:
        redis_cluster.delete_prefix(prefix)


async def test_cluster_prefix_cleanup_deletes_the_prefix_on_every_node(
    redis_cluster: RedisCluster,
) -> None:
    prefix, other = new_prefix(), new_prefix()
    keys = [f"{{{prefix}:q{i}}}:ready" for i in range(30)]
    kept = [f"{{{other}:q{i}}}:ready" for i in range(30)]
    async with redis.asyncio.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0]) as rc:
        for key in keys + kept:
            await rc.set(key, 1)
        assert redis_cluster.delete_prefix(prefix) == 30
        left = [key for key in keys if await rc.exists(key)]
        still = [key for key in kept if await rc.exists(key)]
    redis_cluster.delete_prefix(other)
    assert left == []
    assert still == kept


def test_delete_prefix_removes_only_keys_containing_the_prefix(
    shared_redis: redis.Redis, sentinel: bytes
) -> None:
    prefix = new_prefix()
    keys = [f"{{{prefix}:default}}:ready", f"{{{prefix}:default}}:job:1", f"x:{prefix}"]
    keys += [f"{{{prefix}:bulk}}:{i}" for i in range(1200)]  # more than one SCAN batch
    shared_redis.mset(dict.fromkeys(keys, b"1"))

    assert delete_prefix(SHARED_HOST, SHARED_PORT, prefix) == len(keys)

    assert _exists(shared_redis, keys) == 0
    assert shared_redis.get(sentinel) == b"keep"


@pytest.mark.parametrize("prefix", ["", "*", "dromos-test-?", "a[bc]"])
def test_delete_prefix_refuses_an_empty_or_pattern_prefix(prefix: str) -> None:
    with pytest.raises(ValueError, match="refusing"):
        delete_prefix(SHARED_HOST, SHARED_PORT, prefix)


def test_redis_backend_gives_each_test_a_prefix_and_deletes_only_its_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_redis: redis.Redis, sentinel: bytes
) -> None:
    monkeypatch.setattr(conftest, "_require_redis_broker", lambda: None)
    with BACKENDS["redis"](tmp_path, "a") as first, BACKENDS["redis"](tmp_path, "b") as second:
        prefix = _prefix_of(first.broker)
        assert prefix != _prefix_of(second.broker)
        assert urlsplit(first.broker).netloc == f"{SHARED_HOST}:{SHARED_PORT}"
        key = f"{{{prefix}:default}}:ready"
        shared_redis.set(key, b"1")
    assert shared_redis.exists(key) == 0
    assert shared_redis.get(sentinel) == b"keep"


def test_redis_cluster_backend_deletes_its_prefix_from_every_node(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_cluster: RedisCluster
) -> None:
    monkeypatch.setattr(conftest, "_require_redis_broker", lambda: None)
    with redis.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0]) as cluster:
        with BACKENDS["redis-cluster"](tmp_path, "a") as target:
            assert urlsplit(target.broker).port in redis_cluster.ports
            prefix = _prefix_of(target.broker)
            keys = [f"{{{prefix}:q{i}}}:ready" for i in range(30)]
            for key in keys:
                cluster.set(key, 1)
        assert sum(int(cluster.exists(key)) for key in keys) == 0


def test_redis_backends_skip_until_the_broker_exists(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(conftest.importlib.util, "find_spec", lambda name: None)
    skipped = pytest.raises(pytest.skip.Exception, match="redis broker not implemented yet")
    with skipped, BACKENDS["redis"](tmp_path, "a"):
        pytest.fail("the redis backend ran without a redis broker")


def test_private_redis_keeps_an_aof_key_across_a_kill_and_restart(
    private_redis: Callable[..., PrivateRedis],
) -> None:
    server = private_redis(appendonly=True)
    first_pid = server.pid
    with redis.Redis(port=server.port) as client:
        client.set("acknowledged", b"yes")

    server.stop(kill=True)
    server.start()

    assert server.pid != first_pid
    with redis.Redis(port=server.port) as client:
        assert client.get("acknowledged") == b"yes"


def test_private_redis_stop_ends_its_process(private_redis: Callable[..., PrivateRedis]) -> None:
    server = private_redis()
    pid = server.pid

    server.stop()

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_private_redis_url_names_its_port_and_a_prefix(
    private_redis: Callable[..., PrivateRedis],
) -> None:
    server = private_redis(appendonly=False)
    url = urlsplit(server.url)
    assert (url.scheme, url.port) == ("redis", server.port)
    assert _prefix_of(server.url).startswith("dromos-test-")
