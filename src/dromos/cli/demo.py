"""``dromos demo``: the whole story end to end, on the embedded broker, then exit.

It needs nothing but this package: a fresh SQLite file in a temporary directory, two worker
processes it starts and stops itself, and the demo app in :mod:`dromos.demo.app`. It exits 0
only if every job ended as expected, so CI runs it as a smoke test.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import sys
import tempfile
from pathlib import Path

import click
from rich.console import Console

__all__ = ["demo"]

#: Files a previous run left in a ``--dir``; replaced so each run starts from an empty store.
_OWN_FILES = ("demo.db", "demo.db-wal", "demo.db-shm", "warehouse-outage", "events.log")


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the demo's SQLite file and worker logs here "
    "(its demo.db is replaced). Default: a temporary directory, removed on success.",
)
@click.option(
    "--burst",
    type=click.IntRange(min=1),
    default=3000,
    show_default=True,
    help="Small jobs in the bulk burst.",
)
@click.option(
    "-p",
    "--processes",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Worker processes.",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Jobs at once per worker process.",
)
@click.option(
    "--timeout",
    type=float,
    default=45.0,
    show_default=True,
    help="Seconds to wait for every job before declaring failure.",
)
def demo(
    directory: Path | None, burst: int, processes: int, concurrency: int, timeout: float
) -> None:
    """Run the whole story on the embedded broker: progress, retries, a dead letter and
    its replay, a delayed job, priorities and a burst of small jobs; check every outcome.

    Exits 0 when everything ended as expected, 1 otherwise (it doubles as a smoke test).
    """
    keep = directory is not None
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="dromos-demo-"))
    else:
        directory.mkdir(parents=True, exist_ok=True)
        for name in _OWN_FILES:
            (directory / name).unlink(missing_ok=True)
    directory = directory.resolve()
    url = f"sqlite:///{directory / 'demo.db'}"
    # For the demo app (read when it is imported, just below) and the workers it starts.
    os.environ["DROMOS_BROKER"] = url
    # Signs the webhooks the workers send to the demo's receiver (a fresh secret per run).
    secret = base64.b64encode(os.urandom(24)).decode()
    os.environ.setdefault("DROMOS_WEBHOOK_SECRET", f"whsec_{secret}")
    # Where the workers' subscribers note what they handled (the third act reads it).
    os.environ["DROMOS_DEMO_EVENTS"] = str(directory / "events.log")
    from dromos.demo.show import run

    console = Console()
    ok = asyncio.run(
        run(
            directory,
            url,
            burst=burst,
            processes=processes,
            concurrency=concurrency,
            timeout=timeout,
            console=console,
        )
    )
    if ok and not keep:
        shutil.rmtree(directory, ignore_errors=True)
    elif not ok:
        console.print(f"the demo's files are kept in {directory}")
    sys.exit(0 if ok else 1)
