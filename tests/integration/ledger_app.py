"""The app the integration tests run in real worker processes, and the ledger its tasks write.

Every run of a task appends one line ``job_id attempt pid outcome`` to the file named by
``$LEDGER_PATH`` (``O_APPEND``, one ``write`` per line, so lines from many processes never
interleave). The ledger is independent of the broker: the tests compute their verdict from it
and from the broker's final state. A worker process also writes ``- 0 pid boot`` when it
imports this module, which tells the tests that it started and what its pid is.

The worker's settings come from the environment (``DROMOS_BROKER``, ``LEDGER_LEASE``,
``LEDGER_MAX_RECOVERIES``); the test process builds its own app with :func:`create_app`.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from typing import Any

import msgspec

import dromos

__all__ = ["BOOT", "create_app"]

BOOT = "boot"
_fd: int | None = None


def _write(job_id: str, attempt: int, outcome: str) -> None:
    global _fd
    path = os.environ.get("LEDGER_PATH")
    if not path:
        return
    if _fd is None:
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, f"{job_id} {attempt} {os.getpid()} {outcome}\n".encode())


def _record(outcome: str) -> int:
    """Write this run's ledger line; return the attempt number."""
    job = dromos.current_job()
    _write(job.id, job.attempt, outcome)
    return job.attempt


def create_app(
    broker: str | None = None,
    *,
    lease: float = 30.0,
    max_recoveries: int = 3,
    backend: str | None = None,
) -> dromos.App:
    """An app with the ledger tasks, on ``broker`` (``$DROMOS_BROKER`` wins, as always) and,
    for a broker that keeps no status, the state store ``backend`` (``$DROMOS_BACKEND``)."""
    app = dromos.App("ledger", broker, backend=backend, lease=lease, max_recoveries=max_recoveries)

    @app.task(retries=0)
    async def noop(n: int) -> int:
        """Succeed at once."""
        _record("ok")
        return n

    @app.task(retries=0)
    async def gc_settings() -> list[int]:
        """The worker process's young-collection threshold and how many objects it froze."""
        return [gc.get_threshold()[0], gc.get_freeze_count()]

    @app.task(retries=0)
    async def nap(first: float, later: float = 0.0) -> int:
        """Sleep ``first`` seconds on the first attempt and ``later`` on the others."""
        attempt = _record("start")
        await asyncio.sleep(first if attempt == 1 else later)
        _record("ok")
        return attempt

    @app.task(retries=0)
    def nap_sync(first: float, later: float = 0.0) -> int:
        """``nap`` as a plain function in a worker thread; it stops early when interrupted."""
        attempt = _record("start")
        job = dromos.current_job()
        deadline = time.monotonic() + (first if attempt == 1 else later)
        while time.monotonic() < deadline:
            if job.cancelled:
                _record("interrupted")
                return attempt
            time.sleep(0.02)
        _record("ok")
        return attempt

    @app.subscriber(
        "ledger.#", group="ledger", retries=0, start="earliest",
        timeout=float(os.environ.get("LEDGER_EVENT_TIMEOUT", "30")),
    )  # fmt: skip
    async def on_event(event: dromos.Event[float]) -> None:
        """Nap as long as the event's data says (the first delivery only), ledgered."""
        _write(event.id, event.attempt, "event-start")
        await asyncio.sleep(event.data if event.attempt == 1 else 0.0)
        _write(event.id, event.attempt, "event-ok")

    if os.environ.get("LEDGER_PERIODIC"):  # seconds between ticks (only where a test asks)

        @app.periodic(every=float(os.environ["LEDGER_PERIODIC"]), retries=0)
        async def tick() -> None:
            """Note which tick this run is for (the scheduler puts it in the headers)."""
            job = dromos.current_job()
            _write(job.headers["scheduled_for"], job.attempt, "tick")

    @app.task(retries=0)
    async def batch_member(n: int) -> int:
        """A job of a batch: every tenth one fails for good (no retries)."""
        if n % 10 == 0:
            _record("fail")
            raise ValueError(f"member {n} fails")
        _record("ok")
        return n

    @app.task(retries=0)
    async def batch_done(summary: dict[str, Any], tag: str) -> None:
        """A batch's on_complete: one ledger line ``batch_id 0 pid batch-done:T:S:F:C:tag``."""
        counts = ":".join(str(summary[k]) for k in ("total", "succeeded", "failed", "cancelled"))
        _write(summary["batch_id"], 0, f"batch-done:{counts}:{tag}")

    @app.task(retries=0, rate_limit="50/s")
    async def limited(n: int) -> int:
        """At most 50 starts per second across every worker; ledgers when it started."""
        _record(f"limited@{time.time():.6f}")
        return n

    @app.task(retries=0)
    async def die() -> None:
        """Kill the worker process on every attempt (a poison job)."""
        _record("start")
        os._exit(1)

    return app


def _from_env() -> dromos.App:
    app = create_app(
        lease=float(os.environ.get("LEDGER_LEASE", "30")),
        max_recoveries=int(os.environ.get("LEDGER_MAX_RECOVERIES", "3")),
    )
    backoff = os.environ.get("LEDGER_WEBHOOK_BACKOFF")  # seconds, comma-separated
    if backoff:
        schedule = tuple(float(x) for x in backoff.split(","))
        app.webhooks = msgspec.structs.replace(app.webhooks, backoff=schedule)
    timeout = os.environ.get("LEDGER_WEBHOOK_TIMEOUT")  # seconds an attempt may take
    if timeout:
        app.webhooks = msgspec.structs.replace(app.webhooks, timeout=float(timeout))
    return app


def __getattr__(name: str) -> dromos.App:
    # ``dromos worker ledger_app:app`` builds the app on first access only, so that merely
    # importing this module (as the test process does) creates nothing.
    if name == "app":
        global app
        app = _from_env()
        _write("-", 0, BOOT)
        return app
    raise AttributeError(name)
