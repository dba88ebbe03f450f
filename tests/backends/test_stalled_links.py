"""A worker whose link to its broker stalls mid-drain (RELIABILITY.md #4): the link goes
silent, no reset arrives, then it flows again. Every job runs, none is left ``running``, and
a job runs twice at most when the stall cut off the write of its outcome (it runs again
once its lease ended).

The link goes through a TCP proxy on loopback (:class:`tests.proxy.Proxy`) in front of the
shared server, which itself is never touched. Each broker gets its own short deadline for a
silent link, so that the stall crosses it: Redis's ``socket_timeout`` (redis-py's), the
PostgreSQL broker's ``query_timeout``, RabbitMQ's ``heartbeat`` (the state store's link is
not stalled).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import dromos
from tests.backends._support import eventually
from tests.backends.conftest import BACKENDS, Target, Workers
from tests.proxy import Proxy

# backend -> (the server's port in its URL, the URL options that make a silent link fail fast)
_LINKS = {
    "redis": (6379, "socket_timeout=0.5"),
    "postgres": (5432, "query_timeout=0.5"),
    "rabbitmq-redis": (5672, "heartbeat=1"),
}


@pytest.fixture(params=sorted(_LINKS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    with BACKENDS[request.param](tmp_path, f"stall_{request.param}") as target:
        yield target


@pytest.fixture
async def stalled(
    backend: Target, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Proxy, str]]:
    """The proxy, and the backend's broker URL through it with its short deadline."""
    port, options = _LINKS[request.node.callspec.params["backend"]]
    proxy = Proxy(port)
    await proxy.start()
    url = re.sub(f":{port}/", f":{proxy.port}/", backend.broker, count=1)
    url += ("&" if "?" in url else "?") + options
    yield proxy, url
    proxy.flowing.set()
    await proxy.stop()


async def test_a_worker_whose_link_stalls_runs_every_job_once_the_link_flows_again(
    backend: Target, stalled: tuple[Proxy, str], workers: Workers
) -> None:
    proxy, url = stalled
    app = dromos.App("stall", url, backend=backend.backend)
    ran: list[int] = []

    @app.task(retries=0)
    async def record(n: int) -> int:
        ran.append(n)
        await asyncio.sleep(0.01)
        return n

    jobs = await record.aenqueue_many([(n,) for n in range(60)])
    worker = workers.start(app, concurrency=4, lease=3.0)
    await eventually(lambda: len(ran) >= 10, what="ten jobs run")
    proxy.flowing.clear()  # mid-drain: claims, settles and heartbeats all stall
    await asyncio.sleep(2)
    proxy.flowing.set()
    results = [await job.aresult(timeout=60) for job in jobs]
    assert results == list(range(60))
    assert set(ran) == set(range(60))
    assert len(ran) <= 60 + 4  # at most one extra run per job held when the link stalled
    await workers.stop(worker)
    await app.aclose()
