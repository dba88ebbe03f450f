"""``dromos worker MODULE:APP``: run jobs, in this process or in ``-p`` supervised ones."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import click

from dromos._loop import loop_factory, tune_gc
from dromos.cli._load import load_app
from dromos.worker.runtime import Worker
from dromos.worker.supervisor import SUPERVISOR_ENV, Supervisor

__all__ = ["worker"]


@click.command()
@click.argument("app_path", metavar="MODULE:APP")
@click.option(
    "-c", "--concurrency", default=16, show_default=True, help="Jobs at once per process."
)
@click.option("-p", "--processes", default=1, show_default=True, help="Supervised processes.")
@click.option("-q", "--queues", default="", help="Comma-separated queues (default: all tasks').")
@click.option("-g", "--groups", default=None,
              help="Comma-separated subscriber groups (default: all; '' for none).")  # fmt: skip
@click.option("--no-schedules", is_flag=True, help="Never fire the periodic tasks here.")
@click.option("--prefetch", type=int, default=None, help="Jobs claimed ahead (default: -c).")
@click.option("--grace", default=30.0, show_default=True, help="Seconds to finish jobs on SIGTERM.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))  # fmt: skip
def worker(
    app_path: str,
    concurrency: int,
    processes: int,
    queues: str,
    groups: str | None,
    no_schedules: bool,
    prefetch: int | None,
    grace: float,
    log_level: str,
) -> None:
    """Run the jobs and subscribers of MODULE:APP until SIGTERM or Ctrl-C (a second one stops
    at once)."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    queue_list = [q.strip() for q in queues.split(",") if q.strip()]
    if processes > 1:
        argv = [sys.executable, "-m", "dromos", "worker", app_path, "-c", str(concurrency),
                "--grace", str(grace), "--log-level", log_level]  # fmt: skip
        if queues:
            argv += ["-q", queues]
        if groups is not None:
            argv += ["-g", groups]
        if no_schedules:
            argv.append("--no-schedules")
        if prefetch is not None:
            argv += ["--prefetch", str(prefetch)]
        sys.exit(Supervisor(argv, processes, grace=grace).run())
    app = load_app(app_path)
    group_list = None if groups is None else [g.strip() for g in groups.split(",") if g.strip()]
    runner = Worker(app, queues=queue_list or None, concurrency=concurrency,
                    prefetch=prefetch, grace=grace, groups=group_list,
                    schedules=not no_schedules)  # fmt: skip

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            runner.stop(now=signals > 1)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        watch = asyncio.create_task(_watch_supervisor(runner))
        # Once the broker is open (its client imported, connected), the process has started
        # up: what it holds now lives as long as it does.
        await app.abroker()
        tune_gc()
        await runner.run()
        watch.cancel()
        await app.aclose()

    with asyncio.Runner(loop_factory=loop_factory()) as loop_runner:
        loop_runner.run(serve())
    sys.stdout.flush()
    sys.stderr.flush()
    if runner.executors is not None and runner.executors.abandoned:
        # Threads of plain tasks that overran cannot be stopped; do not wait for them.
        os._exit(0)


async def _watch_supervisor(runner: Worker) -> None:
    """Under ``-p``: stop gracefully if the supervisor dies (we would be re-parented)."""
    parent = os.environ.get(SUPERVISOR_ENV)
    if not parent:
        return
    while os.getppid() == int(parent):  # noqa: ASYNC110 - no event tells us of a parent's death
        await asyncio.sleep(1.0)
    logging.getLogger("dromos.worker").warning("the supervisor is gone; stopping")
    runner.stop()
