"""``dromos schedules MODULE:APP``: the app's periodic tasks and their next runs."""

from __future__ import annotations

import click
import msgspec
from rich.console import Console
from rich.table import Table

from dromos.cli._load import load_app
from dromos.cli.jobs import json_option
from dromos.schedules import describe

__all__ = ["schedules"]


@click.command()
@click.argument("app_path", metavar="MODULE:APP")
@click.option("-n", "--runs", type=click.IntRange(min=1), default=3, show_default=True,
              help="Next runs shown per task.")  # fmt: skip
@json_option
def schedules(app_path: str, runs: int, as_json: bool) -> None:
    """List the periodic tasks of MODULE:APP with their schedules and next runs."""
    rows = describe(load_app(app_path).periodics, runs)
    if as_json:
        out = [{"task": t, "schedule": s, "next": [r.isoformat() for r in n]} for t, s, n in rows]
        click.echo(msgspec.json.encode(out).decode())
        return
    if not rows:
        click.echo("no periodic tasks: declare one with @app.periodic(cron=... or every=...)",
                   err=True)  # fmt: skip
        return
    table = Table(box=None, header_style="bold")
    for name in ("task", "schedule", "next runs"):
        table.add_column(name)
    for task, schedule, upcoming in rows:
        table.add_row(task, schedule, "\n".join(r.isoformat(sep=" ") for r in upcoming))
    Console().print(table)
