"""The gateway's tests run against a real uvicorn server and real workers.

One uvicorn per test module (``server``) listens on a free port of 127.0.0.1 in a thread of
its own; each test installs its own gateway in it (``make_stack``), on a fresh store: a
SQLite file in ``tmp_path``, or a key prefix of its own on the shared Redis
(127.0.0.1:6379, whose keys with that prefix, and only those, are deleted afterwards; without
the server the Redis tests skip, and under ``CI=true`` they fail). A worker runs the jobs in
a thread with its own event loop and its own app, as a separate worker process would. Tests
talk to the gateway with httpx, as any client would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

import dromos
from dromos.http import Gateway, gateway
from tests import redis_servers
from tests.http.tasks_app import create_app
from tests.servers import require_server

T = TypeVar("T")

#: Keys with each scope, long enough for the gateway's minimum.
READ_KEY = "read-key-0123456789abcdef"
ENQUEUE_KEY = "enqueue-key-0123456789abcdef"
BOTH_KEY = "both-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
API_KEYS = f"{READ_KEY}:read,{ENQUEUE_KEY}:enqueue,{BOTH_KEY}:enqueue+read,{ADMIN_KEY}:admin"


@pytest.fixture(autouse=True)
def _no_environment_override(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DROMOS_BROKER", "DROMOS_BACKEND", "DROMOS_API_KEYS", "DROMOS_RATE_LIMIT"):
        monkeypatch.delenv(name, raising=False)


class Server:
    """uvicorn on 127.0.0.1:<free port> in a thread, serving the ASGI app in ``target``.

    The lifespan protocol is off by default: the module's server outlives each test's gateway,
    whose app the test closes itself.
    """

    def __init__(
        self, target: ASGIApp | None = None, *, lifespan: Literal["on", "off"] = "off"
    ) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.target = target
        config = uvicorn.Config(
            self._dispatch, interface="asgi3", lifespan=lifespan, log_level="warning",
            access_log=False, timeout_graceful_shutdown=2,
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="uvicorn", daemon=True)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self.target
        assert target is not None, "no gateway installed"
        await target(scope, receive, send)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._server.serve(sockets=[self._socket]))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert self._thread.is_alive(), "uvicorn did not start"
            assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()
        assert not self._thread.is_alive(), "uvicorn did not stop"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        """Run ``coro`` on the server's event loop (where the gateway's broker lives)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """A real uvicorn for the whole module; each test installs its gateway into it."""
    s = Server()
    s.start()
    yield s
    s.stop()


class WorkerThread:
    """A worker on its own app (as another process would have), in a thread with its loop."""

    def __init__(self, url: str) -> None:
        self.app = create_app(url)
        self.worker = self.app.worker(concurrency=4, grace=0.5)
        self._loop = asyncio.new_event_loop()
        self._main: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="worker", daemon=True)

    def _run(self) -> None:
        self._main = self._loop.create_task(self._serve())
        self._loop.run_until_complete(self._main)
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    async def _serve(self) -> None:
        try:
            await self.worker.run()
        finally:
            await self.app.aclose()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.worker.stop(now=True)
        self._thread.join(timeout=5)  # a worker stopping "now" ends in milliseconds
        assert not self._thread.is_alive(), "the worker did not stop"


@dataclass
class Stack:
    """One test's gateway (in the shared server), its app, a worker and an httpx client."""

    app: dromos.App
    api: Gateway
    client: httpx.Client
    server: Server
    worker: WorkerThread | None = None

    def enqueue(self, task: str, *args: Any, headers: dict[str, str] | None = None,
                **body: Any) -> httpx.Response:  # fmt: skip
        """``POST /v1/tasks/{task}/jobs`` with ``args`` and the body's other keys."""
        payload = {"args": list(args), **body}
        return self.client.post(f"/v1/tasks/{task}/jobs", json=payload, headers=headers)

    def status(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def counts(self) -> dict[str, dict[str, int]]:
        """Jobs per state per queue, as ``GET /v1/queues`` tells (with an admin key if any)."""
        response = self.client.get("/v1/queues", headers={"X-API-Key": ADMIN_KEY})
        assert response.status_code == 200, response.text
        return {q["queue"]: q["counts"] for q in response.json()["queues"]}

    def wait_for(self, job_id: str, predicate: Callable[[dict[str, Any]], bool],
                 timeout: float = 10) -> dict[str, Any]:  # fmt: skip
        """Poll the job's status until ``predicate`` holds; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if predicate(status):
                return status
            assert time.monotonic() < deadline, f"timed out; last status: {status}"
            time.sleep(0.02)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@contextlib.contextmanager
def _redis_url() -> Iterator[str]:
    host, port = redis_servers.SHARED_HOST, redis_servers.SHARED_PORT
    require_server("redis", host, port)
    prefix = redis_servers.new_prefix()
    try:
        yield f"redis://{host}:{port}/0?prefix={prefix}"
    finally:
        redis_servers.delete_prefix(host, port, prefix)


@pytest.fixture(params=["sqlite", "redis"])
def backend_url(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[str]:
    """A fresh store of each broker in turn: the same routes must behave the same on both."""
    if request.param == "sqlite":
        yield sqlite_url
    else:
        with _redis_url() as url:
            yield url


MakeStack = Callable[..., Stack]


@pytest.fixture
def make_stack(server: Server) -> Iterator[MakeStack]:
    """``make_stack(url, worker=True, **gateway_options)``: install a gateway on ``url``."""
    made: list[Stack] = []

    def make(url: str, *, worker: bool = True, **options: Any) -> Stack:
        app = create_app(url)
        api = gateway(app, **options)
        server.target = api
        client = httpx.Client(base_url=server.url, timeout=30)
        stack = Stack(app, api, client, server)
        made.append(stack)
        if worker:
            stack.worker = WorkerThread(url)
            stack.worker.start()
        return stack

    yield make
    for stack in made:
        stack.client.close()
        if stack.worker is not None:
            stack.worker.stop()
        server.call(stack.app.aclose())
        stack.app.portal.stop()
    server.target = None


@pytest.fixture
def stack(make_stack: MakeStack, backend_url: str) -> Stack:
    """A gateway without keys and a worker, on each broker in turn."""
    return make_stack(backend_url)


@pytest.fixture
def sqlite_stack(make_stack: MakeStack, sqlite_url: str) -> Stack:
    """A gateway without keys and a worker, on SQLite (for what does not depend on the broker)."""
    return make_stack(sqlite_url)
