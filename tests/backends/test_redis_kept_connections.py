"""On a single Redis the broker's scripts go out on connections kept aside, not through
redis-py's command layer: a blocking ``enqueue()`` through ``_SyncClient.run``, every other
call through ``TurnTakingRedis.send``. These tests pin what that must not change: many
threads or coroutines at once each get their own job's id, and a server that forgot the
scripts, connections cut, or a fork fall back to the client's own path and lose nothing.

On a private server: they flush its scripts and kill its connections.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import dromos
from dromos.brokers.redis import RedisBroker, _SyncClient
from dromos.brokers.redis_clients import KEPT
from dromos.job import JobState
from tests.backends._support import request
from tests.redis_servers import PrivateRedis, new_prefix

pytestmark = pytest.mark.slow


@pytest.fixture
def server(private_redis: Callable[..., PrivateRedis]) -> PrivateRedis:
    return private_redis(appendonly=False)


@pytest.fixture
def app(server: PrivateRedis) -> Iterator[dromos.App]:
    app = dromos.App("blocking", f"redis://127.0.0.1:{server.port}/0?prefix={new_prefix()}")

    @app.task
    async def echo(text: str) -> str:
        return text

    yield app
    app.close()


def _sync_client(app: dromos.App) -> _SyncClient:
    broker = app.broker
    assert isinstance(broker, RedisBroker)
    assert broker._sync is not None
    return broker._sync


def _stored(app: dromos.App, job: dromos.Job[Any], text: str) -> None:
    """The job is stored as enqueued: its task, queued, and its argument in its payload."""
    status = job.status()
    assert status is not None
    assert (status.task, status.state) == ("echo", JobState.QUEUED)
    broker = app.broker
    assert isinstance(broker, RedisBroker)
    key = f"{broker._tag('default')}:job:{job.id}"
    payload = _sync_client(app).client.hget(key, "payload")
    assert payload is not None
    assert f'"{text}"'.encode() in payload


def test_threads_at_once_each_get_their_own_job(app: dromos.App) -> None:
    echo = app.get_task("echo")
    echo.enqueue("warm-up")
    got: dict[str, str] = {}
    lock = threading.Lock()

    def enqueue_some(n: int) -> None:
        for i in range(20):
            text = f"{n}-{i}"
            job = echo.enqueue(text)
            with lock:
                got[job.id] = text

    threads = [threading.Thread(target=enqueue_some, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 24 * 20
    for job_id, text in list(got.items())[::37]:
        _stored(app, dromos.Job(app, job_id), text)
    sync = _sync_client(app)
    assert len(sync._kept) <= KEPT  # the rest went back to the pool


def test_a_server_that_forgot_the_scripts_or_cut_the_connections_still_takes_the_job(
    app: dromos.App, server: PrivateRedis
) -> None:
    echo = app.get_task("echo")
    echo.enqueue("warm-up")  # opens the broker
    echo.enqueue("warm-up")
    assert _sync_client(app)._kept  # a connection is kept aside now
    with redis.Redis(port=server.port) as admin:
        admin.script_flush()  # as a restart of a server without persistence does
        _stored(app, echo.enqueue("after the flush"), "after the flush")
        killed = admin.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        _stored(app, echo.enqueue("after the kill"), "after the kill")
        _stored(app, echo.enqueue("and again"), "and again")


def _enqueue_some(app: dromos.App, who: str) -> dict[str, str]:
    """Enqueue 100 jobs; their ids and texts."""
    echo = app.get_task("echo")
    return {echo.enqueue(text).id: text for text in (f"{who}-{i}" for i in range(100))}


def _child(app: dromos.App, go: Any, out: Any) -> None:
    go.wait(30)
    out.put(_enqueue_some(app, "child"))


def test_a_forked_child_does_not_share_the_kept_connections(app: dromos.App) -> None:
    _enqueue_some(app, "before")
    assert _sync_client(app)._kept  # a connection is kept aside in the parent
    fork = multiprocessing.get_context("fork")
    go, out = fork.Event(), fork.Queue()
    child = fork.Process(target=_child, args=(app, go, out))
    child.start()
    go.set()  # both enqueue at once: on a shared socket their replies would cross
    mine = _enqueue_some(app, "parent")
    theirs = out.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0
    assert len(mine) == len(theirs) == 100
    for job_id, text in [*mine.items(), *theirs.items()]:
        _stored(app, dromos.Job(app, job_id), text)


async def test_coroutines_at_once_each_get_their_own_job(server: PrivateRedis) -> None:
    broker = RedisBroker(f"redis://127.0.0.1:{server.port}/0?prefix={new_prefix()}")
    try:
        requests = [request(args=[n]) for n in range(300)]
        replies = await asyncio.gather(*(broker.enqueue([r]) for r in requests))
        assert [ids for ids in replies] == [[r.message.id] for r in requests]
        claimed = await broker.claim(["default"], 300, 30.0)
        assert {d.job_id: d.payload for d in claimed} == {r.message.id: r.payload for r in requests}
        client = (await broker._state()).client
        assert 1 <= len(client._kept) <= KEPT  # the rest went back to the pool
        flushed, killed = request(), request()
        with redis.Redis(port=server.port) as admin:
            admin.script_flush()
            assert await broker.enqueue([flushed]) == [flushed.message.id]
            assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
            assert await broker.enqueue([killed]) == [killed.message.id]
        status = await broker.status(killed.message.id)
        assert status is not None
        assert status.state is JobState.QUEUED
    finally:
        await broker.close()
