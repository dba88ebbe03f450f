"""The demo's second act: another service uses dromos over HTTP alone, both ways.

The gateway (``dromos.http.gateway``) is served on a free 127.0.0.1 port, and a small webhook
receiver listens on another. Over plain HTTP the demo then:

* asks for a price quote and waits for it in the same request (``Prefer: wait``: 200 and
  the result: the synchronous style);
* asks for another with a ``callback_url`` and no wait (202, ``Location``), follows the status
  URL until the job is done, while the worker's signed webhook reaches the receiver, which
  verifies it (the asynchronous style);
* sends arguments that do not fit the task (422, and nothing queued).

Each side's view is printed; each expectation is returned for the demo's verdict.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from rich.console import Console

from dromos.demo import app as demo
from dromos.webhooks import WebhookVerificationError, verify

__all__ = ["run_http"]

Expectation = tuple[str, bool, str]  # (what, held, detail)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _Receiver:
    """Another service's webhook endpoint: verifies each delivery, keeps what it saw."""

    secret: str
    port: int = field(default_factory=_free_port)
    events: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/quotes"

    def start(self) -> _Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = dict(self.headers.items())
                try:
                    receiver.events.append(verify(body, headers, receiver.secret))
                    receiver.headers.append(headers)
                    receiver.arrived.set()
                    status = 204
                except WebhookVerificationError as exc:
                    receiver.refused.append(str(exc))
                    status = 401
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


async def run_http(console: Console, timeout: float = 15.0) -> list[Expectation]:
    """Serve the gateway, play the other service's part, and return what held."""
    import httpx
    import uvicorn

    from dromos.http import gateway

    say = console.print
    secret = os.environ.get("DROMOS_WEBHOOK_SECRET") or demo.app.webhooks.secret
    if secret is None:
        return [("a webhook secret is configured for the demo", False, "none set")]
    receiver = _Receiver(secret).start()
    port = _free_port()
    config = uvicorn.Config(
        gateway(demo.app), host="127.0.0.1", port=port, log_level="warning",
        lifespan="off", access_log=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    out: list[Expectation] = []
    try:
        while not server.started:
            if serving.done():
                await serving  # raises what stopped it
                return [("the gateway starts", False, "it exited")]
            await asyncio.sleep(0.02)
        base = f"http://127.0.0.1:{port}"
        say(f"\n[bold]over HTTP[/]: the gateway on {base}, a webhook receiver on {receiver.url}")
        async with httpx.AsyncClient(base_url=base, timeout=timeout) as client:
            out += await _synchronous(client, say)
            out += await _asynchronous(client, receiver, say, timeout)
            out += await _refused(client, say)
    finally:
        server.should_exit = True
        await serving
        receiver.stop()
    return out


async def _synchronous(client: Any, say: Any) -> list[Expectation]:
    body = {"kwargs": {"sku": "mug", "quantity": 3}}
    began = time.perf_counter()
    answer = await client.post(
        "/v1/tasks/price_quote/jobs", json=body, headers={"Prefer": "wait=10"}
    )
    ms = (time.perf_counter() - began) * 1000
    data = answer.json()
    say(
        f"  POST /v1/tasks/price_quote/jobs  Prefer: wait=10  -> [bold]{answer.status_code}[/] "
        f"in {ms:.0f} ms, result {json.dumps(data.get('result'))}",
        highlight=False,
    )
    ok = answer.status_code == 200 and data.get("result", {}).get("total_cents") == 5997
    return [("Prefer: wait answers 200 with the result in the same request", ok, answer.text)]


async def _asynchronous(
    client: Any, receiver: _Receiver, say: Any, timeout: float
) -> list[Expectation]:
    body = {"args": ["lamp"], "options": {"callback_url": receiver.url}}
    answer = await client.post("/v1/tasks/price_quote/jobs", json=body)
    location = answer.headers.get("location", "")
    say(
        f"  POST /v1/tasks/price_quote/jobs  (callback_url) -> [bold]{answer.status_code}[/], "
        f"Location: {location}",
        highlight=False,
    )
    out = [("without Prefer: wait it answers 202 with a Location", answer.status_code == 202
            and location.startswith("/v1/jobs/"), answer.text)]  # fmt: skip
    deadline = time.monotonic() + timeout
    polls, state = 0, ""
    while location and time.monotonic() < deadline:
        polls += 1
        status = (await client.get(location)).json()
        state = status.get("state", "")
        if state in ("succeeded", "failed", "cancelled"):
            break
        await asyncio.sleep(0.05)
    say(f"  GET {location} x{polls} -> {state}", highlight=False)
    out.append(("the status URL reaches succeeded", state == "succeeded", state))
    job_id = location.rsplit("/", 1)[-1]
    await asyncio.to_thread(receiver.arrived.wait, max(0.0, deadline - time.monotonic()))
    if receiver.events:
        event, headers = receiver.events[0], receiver.headers[0]
        say(
            f"  receiver: POST {event['type']} for job {event['subject']}, signature verified "
            f"(webhook-id {headers.get('webhook-id')})",
            highlight=False,
        )
    ok = (
        len(receiver.events) == 1
        and not receiver.refused
        and receiver.events[0]["type"] == "dromos.job.succeeded"
        and receiver.events[0]["subject"] == job_id
    )
    seen = f"{len(receiver.events)} verified, {len(receiver.refused)} refused"
    out.append(("the receiver got one signed webhook for the job", ok, seen))
    return out


async def _refused(client: Any, say: Any) -> list[Expectation]:
    broker = await demo.app.abroker()
    # The task's own jobs, not the queues' counts: the periodic task and the subscribers'
    # jobs may move those at any moment.
    counts = len(await broker.jobs(task="price_quote", limit=1000))
    body = {"kwargs": {"sku": "mug", "quantity": "many"}}
    answer = await client.post("/v1/tasks/price_quote/jobs", json=body)
    after = len(await broker.jobs(task="price_quote", limit=1000))
    problem = answer.json()
    fields = [".".join(map(str, e.get("loc", []))) for e in problem.get("errors", [])]
    say(
        f'  POST quantity="many" -> [bold]{answer.status_code}[/] {problem.get("title", "")}: '
        f"{', '.join(fields)}",
        highlight=False,
    )
    ok = answer.status_code == 422 and after == counts > 0  # the two calls above made some
    return [("arguments that do not fit answer 422 and queue nothing", ok, answer.text)]
