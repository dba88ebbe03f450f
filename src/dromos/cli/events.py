"""``dromos publish`` and ``dromos events ...``: the event bus from a shell.

They talk to the broker alone (``--broker`` / ``$DROMOS_BROKER``), as the inspection commands
of jobs do: no app module is needed to publish an event or to see how far a group is behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from datetime import UTC, datetime
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.table import Table

from dromos.brokers.base import Broker, EventDeadLetter, EventOutcome, EventRecord, GroupStats
from dromos.cli.jobs import _print_json, broker_option, error_line, json_option, with_broker
from dromos.errors import DromosError, ValidationError
from dromos.events.envelope import decode_event, encode_event
from dromos.events.topics import check_pattern, check_topic
from dromos.message import DecodeError, new_job_ids

__all__ = ["events", "publish"]


@click.command()
@click.argument("topic")
@click.argument("data_json", required=False, metavar="[DATA_JSON]")
@click.option("--source", default="/dromos/cli", show_default=True, help="CloudEvents source.")
@click.option("--subject", default=None, help="CloudEvents subject (what it is about).")
@broker_option
def publish(
    topic: str, data_json: str | None, source: str, subject: str | None, broker_url: str
) -> None:
    """Publish one event on TOPIC with DATA_JSON as its data; print its id."""
    check_topic(topic)
    try:
        data: Any = None if data_json is None else json.loads(data_json)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            topic, [{"loc": ("DATA_JSON",), "msg": f"not valid JSON ({exc})"}]
        ) from None
    event_id = new_job_ids(1)[0]
    body = encode_event(
        topic, data, event_id=event_id, source=source, time=datetime.now(UTC), subject=subject
    )
    with_broker(broker_url, lambda b: b.publish([EventRecord(topic, event_id, body)]))
    click.echo(event_id)


@click.group()
def events() -> None:
    """The event bus: consumer groups, their lag and their dead letters."""


def _groups_table(stats: list[GroupStats]) -> Table:
    table = Table(box=None, header_style="bold")
    for name in ("group", "patterns", "lag", "running", "retrying", "dead"):
        table.add_column(name, justify="right" if name not in ("group", "patterns") else "left")
    for s in stats:
        table.add_row(
            s.group, " ".join(s.patterns), str(s.lag), str(s.running), str(s.retrying),
            f"[red]{s.dead}[/red]" if s.dead else "0",
        )  # fmt: skip
    return table


@events.command("groups")
@broker_option
@json_option
def groups(broker_url: str, as_json: bool) -> None:
    """Every consumer group: its patterns, lag (events not looked at yet) and events in flight."""
    stats = with_broker(broker_url, lambda b: b.event_groups())
    if as_json:
        _print_json(stats)
    elif not stats:
        click.echo("no consumer groups: no subscriber has run yet", err=True)
    else:
        Console().print(_groups_table(stats))


def _dead_json(letter: EventDeadLetter) -> dict[str, Any]:
    try:
        event: Any = msgspec.json.decode(letter.payload)
    except msgspec.DecodeError:
        event = letter.payload.decode(errors="replace")
    return {
        "group": letter.group, "key": letter.key, "topic": letter.topic, "event": event,
        "attempts": letter.attempts, "errors": msgspec.to_builtins(letter.errors),
        "failed_at": msgspec.to_builtins(letter.failed_at),
    }  # fmt: skip


@events.command("tail")
@click.argument("pattern", default="#")
@click.option("--count", "-n", type=click.IntRange(min=1), default=None,
              help="Stop after this many events (default: until Ctrl-C).")  # fmt: skip
@click.option("--earliest", is_flag=True, help="Start with everything the bus still keeps.")
@broker_option
@json_option
def tail(pattern: str, count: int | None, earliest: bool, broker_url: str, as_json: bool) -> None:
    """Print events matching PATTERN as they are published (default '#': all of them).

    It reads as a consumer group of its own, left (deleted) when it stops: the groups of
    the app's subscribers are not disturbed.
    """
    check_pattern(pattern)
    group = f"dromos-tail-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    console = Console()

    async def follow(broker: Broker) -> int:
        await broker.join_group(group, [pattern], "earliest" if earliest else "latest")
        seen = 0
        try:
            while count is None or seen < count:
                want = 100 if count is None else min(100, count - seen)
                got = await broker.claim_events(group, want, 60.0)
                for d in got:
                    _show(console, d.topic, d.payload, as_json)
                seen += len(got)
                if got:
                    await broker.settle_events(group, [EventOutcome(d.key, d.attempt) for d in got])
                else:
                    await broker.wait_for_events([group], 1.0)
        finally:
            await broker.leave_group(group)
        return seen

    # Ctrl-C cancels ``follow``, whose ``finally`` leaves the group first.
    with contextlib.suppress(KeyboardInterrupt):
        with_broker(broker_url, follow)


def _show(console: Console, topic: str, payload: bytes, as_json: bool) -> None:
    if as_json:
        click.echo(payload.decode(errors="replace"))
        return
    try:
        event = decode_event(payload)
    except DecodeError as exc:
        console.print(f"[red]{topic}[/red] unreadable: {exc}", highlight=False)
        return
    when = event.time.astimezone().strftime("%H:%M:%S.%f")[:-3]
    data = msgspec.json.encode(event.data).decode()
    subject = f" [{event.subject}]" if event.subject else ""
    console.print(f"{when} [bold]{event.type}[/bold]{subject} {data}", highlight=False,
                  soft_wrap=True)  # fmt: skip


@events.command("dlq")
@click.argument("group")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@broker_option
@json_option
def dead_letters(group: str, limit: int, broker_url: str, as_json: bool) -> None:
    """The events GROUP gave up on, oldest first, with why."""
    found = with_broker(broker_url, lambda b: b.event_dead_letters(group, limit))
    if as_json:
        _print_json([_dead_json(d) for d in found])
        return
    if not found:
        click.echo(f"group {group!r} has no dead letters", err=True)
        return
    table = Table(box=None, header_style="bold")
    for name in ("key", "topic", "attempts", "failed at", "last error"):
        table.add_column(name)
    for d in found:
        when = d.failed_at.strftime("%Y-%m-%d %H:%M:%S") if d.failed_at else "-"
        last = error_line(d.errors[-1]) if d.errors else "-"
        table.add_row(d.key, d.topic, str(d.attempts), when, last)
    Console().print(table)


@events.command("replay")
@click.argument("group")
@click.argument("keys", nargs=-1, metavar="[KEY]...")
@broker_option
def replay(group: str, keys: tuple[str, ...], broker_url: str) -> None:
    """Deliver GROUP's dead letters again (no KEY: all of them), with a fresh retry budget."""

    async def run(broker: Broker) -> int:
        return await broker.replay_events(group, list(keys) if keys else None)

    moved = with_broker(broker_url, run)
    click.echo(f"replayed {moved} event(s)")
    if keys and moved < len(set(keys)):
        raise DromosError(f"{len(set(keys)) - moved} key(s) are not dead letters of {group!r}")
