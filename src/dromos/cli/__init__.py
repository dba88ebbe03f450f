"""The ``dromos`` command line: one click group, commands in modules named for what they do.

Errors raised by dromos are shown as one clear line (and exit code 1), never a traceback.
"""

from __future__ import annotations

import sys

import click

from dromos import __version__
from dromos.errors import DromosError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dromos")
def cli() -> None:
    """dromos: background jobs, status and results for Python services."""


def _register() -> None:
    from dromos.cli import demo, jobs, serve, worker

    inspect = [jobs.status, jobs.jobs, jobs.queues, jobs.dlq]
    for command in (worker.worker, serve.serve, jobs.enqueue, *inspect, demo.demo):
        cli.add_command(command)


_register()


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
