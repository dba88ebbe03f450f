"""The ``dromos`` command line: one click group, commands in modules named for what they do.

Errors raised by dromos are shown as one clear line (and exit code 1), never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from dromos import __version__
from dromos.errors import DromosError

__all__ = ["cli", "main"]


# command name -> (module under dromos.cli, attribute). A command's module is imported only
# when that command runs (or help lists it): a worker process then carries neither rich nor
# the demo nor the gateway, a few MiB of memory and ~100 ms of start-up less.
_COMMANDS = {
    "worker": ("worker", "worker"),
    "serve": ("serve", "serve"),
    "enqueue": ("jobs", "enqueue"),
    "status": ("jobs", "status"),
    "jobs": ("jobs", "jobs"),
    "queues": ("jobs", "queues"),
    "dlq": ("jobs", "dlq"),
    "schedules": ("schedules", "schedules"),
    "batch": ("batch", "batch"),
    "publish": ("events", "publish"),
    "events": ("events", "events"),
    "demo": ("demo", "demo"),
    "migrate": ("migrate", "migrate"),
}


class _LazyGroup(click.Group):
    """A group whose commands are imported on first use (click's documented lazy pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, attr = _COMMANDS[cmd_name]
        command = getattr(importlib.import_module(f"dromos.cli.{module}"), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dromos")
def cli() -> None:
    """dromos: background jobs, status and results for Python services."""


def main() -> None:
    """Entry point of the ``dromos`` console script."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DromosError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
