"""The demo's batch and chain: a few hundred thumbnails with a live progress bar and one
completion report, and a three-step feed import, each step fed the one before's result."""

from __future__ import annotations

import asyncio
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from dromos.demo import app as demo
from dromos.errors import DromosError

__all__ = ["run_workflows"]

Expectation = tuple[str, bool, str]  # (what, held, detail)
PHOTOS = 300
CORRUPT = sum(1 for i in range(PHOTOS) if i % 50 == 49)


async def run_workflows(console: Console, timeout: float = 30.0) -> list[Expectation]:
    """Run the batch and the chain; the expectations for the demo's verdict."""
    out: list[Expectation] = []
    console.print(f"\n[bold]A batch[/]: {PHOTOS} thumbnails in one write, a report when all end")
    batch = await demo.make_thumbnail.amap(range(PHOTOS), on_complete=demo.batch_report)
    deadline = time.monotonic() + timeout
    columns = (TextColumn("  thumbnails"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.description}"))  # fmt: skip
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("", total=PHOTOS)
        status = await batch.astatus()
        while not status.done and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            status = await batch.astatus()
            bar.update(task, completed=status.ended, description=f"{status.failed} failed")
    report = None
    if status.done and status.callback_id:
        try:
            report = await demo.app.job(status.callback_id).aresult(timeout=10)
        except DromosError as exc:
            report = f"(the report failed: {exc})"
    console.print(f"  on_complete ran once: {report}", highlight=False)
    out.append((
        "the batch's report ran once with the right counts",
        report == f"{PHOTOS - CORRUPT} thumbnails made, {CORRUPT} photos corrupt",
        f"got {report!r}",
    ))  # fmt: skip
    console.print("\n[bold]A chain[/]: fetch_feed | parse_feed | store_items")
    chain = (
        demo.fetch_feed.call("https://shop.example/feed")
        | demo.parse_feed.step()
        | demo.store_items.step("products")
    )
    handle = await chain.aenqueue()
    try:
        result = await handle.aresult(timeout=10)
    except DromosError as exc:
        result = f"(failed: {exc})"
    steps = (await handle.astatus()).steps
    for step in steps:
        if step is not None:
            console.print(f"  {step.task:12} -> {step.result!r}"[:110], highlight=False)
    out.append(("the chain's three steps ran in order", result == "3 rows into products",
                f"got {result!r}"))  # fmt: skip
    return out
