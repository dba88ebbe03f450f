"""``dromos batch status BATCH_ID [--watch]``: a batch's counts, live with a progress bar."""

from __future__ import annotations

import asyncio
import time

import click
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dromos.batch import BatchStatus
from dromos.brokers.base import Broker
from dromos.cli.jobs import _print_json, broker_option, json_option, with_broker
from dromos.errors import DromosError

__all__ = ["batch"]

_POLL = 0.25


@click.group()
def batch() -> None:
    """Batches: jobs submitted together (task.map, app.batch, POST /v1/batches)."""


def _line(s: BatchStatus) -> str:
    parts = [f"{s.succeeded} succeeded"]
    if s.failed:
        parts.append(f"[red]{s.failed} failed[/red]")
    if s.cancelled:
        parts.append(f"{s.cancelled} cancelled")
    return ", ".join(parts)


async def _status(broker: Broker, batch_id: str) -> BatchStatus:
    found = await broker.batch_status(batch_id)
    if found is None:
        raise DromosError(f"no batch {batch_id!r} (check the id and --broker)")
    return found


@batch.command("status")
@click.argument("batch_id")
@click.option("--watch", is_flag=True, help="Follow it with a progress bar until it is done.")
@click.option("--timeout", type=float, default=None, help="Stop watching after this long.")
@broker_option
@json_option
def status(
    batch_id: str, watch: bool, timeout: float | None, broker_url: str, as_json: bool
) -> None:
    """Show a batch: its jobs' counts, and its on_complete job once done."""
    console = Console()

    async def follow(broker: Broker) -> BatchStatus:
        s = await _status(broker, batch_id)
        if not watch or s.done:
            return s
        deadline = None if timeout is None else time.monotonic() + timeout
        columns = (TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.description}"), TimeElapsedColumn())  # fmt: skip
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(_line(s), total=s.total, completed=s.ended)
            while not s.done and (deadline is None or time.monotonic() < deadline):
                await asyncio.sleep(_POLL)
                s = await _status(broker, batch_id)
                bar.update(task, completed=s.ended, description=_line(s))
        return s

    s = with_broker(broker_url, follow)
    if as_json:
        _print_json({**msgspec.to_builtins(s), "ended": s.ended, "done": s.done})
        return
    state = "done" if s.done else "running"
    console.print(f"batch {s.id}: {state}, {s.ended}/{s.total} ended: {_line(s)}",
                  highlight=False)  # fmt: skip
    if s.callback_id:
        console.print(f"on_complete job: {s.callback_id}", highlight=False)
    if watch and not s.done:
        raise DromosError(f"batch {batch_id} not done after {timeout:g}s")
