"""``dromos migrate [--broker URL]``: bring the broker's schema up to date.

Only the PostgreSQL broker has versioned migrations (``postgres_migrations/``); a deploy runs
this once before starting new workers, although every broker also migrates on its first
use (under an advisory lock, so many workers starting at once is safe too). SQLite creates
and updates its tables when it opens its file, and Redis and memory have no schema: for those
this says so and changes nothing.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import click

from dromos.brokers import create_broker
from dromos.cli.jobs import broker_option

__all__ = ["migrate"]


@click.command()
@broker_option
def migrate(broker_url: str) -> None:
    """Apply the broker's pending schema migrations (PostgreSQL) and print its version."""
    broker = create_broker(broker_url)  # an unknown or unusable URL is one error line
    scheme = urlsplit(broker_url).scheme
    if scheme not in ("postgresql", "postgres"):
        click.echo(
            f"{scheme}:// needs no migration: dromos creates and updates what it needs when it "
            "opens the store"
        )
        return
    from dromos.brokers.postgres import PostgresBroker

    assert isinstance(broker, PostgresBroker)
    version = asyncio.run(broker.migrate())
    click.echo(f"PostgreSQL schema {broker.schema!r} is at version {version}")
