"""``enqueue``, ``status``, ``jobs``, ``queues`` and ``dlq``: submit and inspect jobs.

``enqueue`` needs the app (it validates the arguments against the task's signature); the
inspection commands need only the broker, so that an operator can look at any store without
the application's code: they take ``--broker URL`` (or ``$DROMOS_BROKER``). Tables go to
stdout for people; ``--json`` prints the same data as JSON for scripts. Progress bars and
notes go to stderr, so stdout stays the answer a script wants (an id, a result, a listing).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click
import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from dromos.app import DEFAULT_BROKER
from dromos.brokers import create_broker
from dromos.brokers.base import Broker, QueueStats
from dromos.cli._load import load_app
from dromos.errors import DromosError, JobCancelled, JobFailed, JobNotFound, ValidationError
from dromos.job import Job, JobError, JobState, JobStatus
from dromos.task import Task

__all__ = [
    "broker_option",
    "dead_letter_table",
    "dlq",
    "enqueue",
    "error_line",
    "jobs",
    "jobs_table",
    "json_option",
    "parse_arguments",
    "queues",
    "queues_table",
    "state_text",
    "status",
    "status_table",
    "with_broker",
]

T = TypeVar("T")

#: One colour per state, the same in every table and in the demo.
STATE_STYLES = {
    JobState.SCHEDULED: "cyan",
    JobState.QUEUED: "blue",
    JobState.RUNNING: "yellow",
    JobState.RETRYING: "magenta",
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "bold red",
    JobState.CANCELLED: "dim",
}

_ARGS_HELP = 'write a JSON array [1, 2], an object {"x": 1}, or {"args": [...], "kwargs": {...}}'


# -- rendering (shared with ``dromos demo``) ------------------------------------------------
def state_text(state: JobState) -> Text:
    """The state in its colour."""
    return Text(state.value, style=STATE_STYLES.get(state, ""))


def _when(moment: datetime | None) -> str:
    """Local date and time, to the second."""
    return "" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _short_when(moment: datetime | None) -> str:
    """Local time only for today (as ``ls -l`` does), so that tables fit 80 columns."""
    if moment is None:
        return ""
    local = moment.astimezone()
    today = local.date() == datetime.now().astimezone().date()
    return local.strftime("%H:%M:%S" if today else "%Y-%m-%d %H:%M")


def error_line(error: JobError | None) -> str:
    """``Type: message`` of an error, on one line."""
    if error is None:
        return ""
    return f"{error.type}: {' '.join(error.message.split())}"


def _table(title: str | None = None) -> Table:
    # No box: each border column costs width that an 80-column terminal does not have.
    return Table(title=title, box=None, header_style="bold underline", pad_edge=False)


def _id_cell(s: JobStatus) -> Text:
    # The message or error goes on a line of its own under the id: a column of its own leaves
    # it a few characters on an 80-column terminal, beside a 36-character id.
    cell = Text(s.id)
    note = error_line(s.error) if s.error is not None else s.message
    if note:
        cell.append(f"\n{note}", style="dim")
    return cell


def jobs_table(statuses: Sequence[JobStatus], title: str | None = None) -> Table:
    """One row per job, its message or error beneath: what ``dromos jobs`` shows."""
    table = _table(title)
    table.add_column("id / message or error", overflow="fold", min_width=36, max_width=72)
    table.add_column("task", no_wrap=True, max_width=24)
    table.add_column("state", no_wrap=True)
    table.add_column("tries", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for s in statuses:
        state = state_text(s.state)
        if s.state is JobState.RUNNING:
            state.append(f" {s.progress:.0%}")
        table.add_row(_id_cell(s), s.task, state, str(s.attempts), _short_when(s.created_at))
    return table


def dead_letter_table(statuses: Sequence[JobStatus], title: str | None = None) -> Table:
    """One row per dead letter, its last error beneath: what ``dromos dlq list`` shows."""
    table = _table(title)
    table.add_column("id / last error", overflow="fold", min_width=36, max_width=72)
    table.add_column("task", no_wrap=True, max_width=24)
    table.add_column("queue", no_wrap=True, max_width=16)
    table.add_column("tries", justify="right", no_wrap=True)
    table.add_column("failed", no_wrap=True)
    for s in statuses:
        when = _short_when(s.finished_at)
        table.add_row(_id_cell(s), s.task, s.queue, str(s.attempts), when)
    return table


def queues_table(stats: Sequence[QueueStats]) -> Table:
    """Jobs per state per queue: what ``dromos queues`` shows (· for none)."""
    table = _table()
    table.add_column("queue", overflow="fold", min_width=6)
    for state in JobState:
        table.add_column(Text(state.value, style=STATE_STYLES[state]), justify="right")
    for q in stats:
        table.add_row(q.queue, *(str(q.counts.get(state.value, 0) or "·") for state in JobState))
    return table


def status_table(s: JobStatus) -> Table:
    """Everything known about one job, as label/value lines: what ``dromos status`` shows."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    progress = f"{s.progress:.0%}" + (f"  {s.message}" if s.message else "")
    rows: list[tuple[str, str | Text]] = [
        ("id", s.id),
        ("task", s.task),
        ("queue", s.queue),
        ("state", state_text(s.state)),
        ("progress", progress),
        ("attempts", str(s.attempts)),
        ("priority", str(s.priority)),
        ("created", _when(s.created_at)),
    ]
    for label, when in (("eta", s.eta), ("started", s.started_at), ("finished", s.finished_at)):
        if when is not None:
            rows.append((label, _when(when)))
    if s.state is JobState.SUCCEEDED:
        rows.append(("result", json.dumps(s.result, ensure_ascii=False)))
    if s.cancel_requested:
        rows.append(("cancel", "requested; the worker is stopping it"))
    for e in s.errors:
        rows.append((f"error (attempt {e.attempt})", error_line(e)))
    for label, value in rows:
        grid.add_row(label, value)
    return grid


def _print_json(value: Any) -> None:
    click.echo(msgspec.json.encode(value).decode())


# -- the broker the inspection commands read -----------------------------------------------
_BACKEND = "dromos.backend"  # where --backend leaves its value, in the click context's meta


def _remember_backend(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    ctx.meta[_BACKEND] = value or None


def broker_option(func: Callable[..., T]) -> Callable[..., T]:
    """``--broker URL`` (or ``$DROMOS_BROKER``), the same default as ``dromos.App``, and
    ``--backend URL`` (or ``$DROMOS_BACKEND``), the state store of a broker that keeps no
    status (RabbitMQ): read by :func:`with_broker`, so that no command needs a parameter."""
    option = click.option(
        "--broker",
        "broker_url",
        envvar="DROMOS_BROKER",
        default=DEFAULT_BROKER,
        show_default=True,
        help="Broker URL (env: DROMOS_BROKER).",
    )
    backend = click.option(
        "--backend",
        envvar="DROMOS_BACKEND",
        default=None,
        expose_value=False,
        callback=_remember_backend,
        help="State store URL, for a broker that keeps no job status: RabbitMQ "
        "(env: DROMOS_BACKEND).",
    )
    return option(backend(func))


def json_option(func: Callable[..., T]) -> Callable[..., T]:
    """``--json``: machine-readable output instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


def with_broker(url: str, action: Callable[[Broker], Awaitable[T]]) -> T:
    """Run ``action`` against the broker at ``url``, then disconnect."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite" and not Path(parts.path[1:]).exists():
        # Opening a missing SQLite file would create an empty store and report "no job":
        # a wrong path or directory is the likely mistake, so say so.
        raise DromosError(
            f"no SQLite database at {parts.path[1:]!r}: pass --broker URL or set DROMOS_BROKER "
            "to the broker your app uses"
        )

    async def run() -> T:
        # The broker alone, not an App: App prefers $DROMOS_BROKER to its argument, and here
        # an explicit --broker must win over the environment.
        # A broker that keeps no status (RabbitMQ) reads its state store from --backend
        # (or $DROMOS_BACKEND, the app's setting).
        ctx = click.get_current_context(silent=True)
        if ctx is not None and _BACKEND in ctx.meta:
            backend = ctx.meta[_BACKEND]
        else:
            backend = os.environ.get("DROMOS_BACKEND") or None
        broker = create_broker(url, backend=backend)
        await broker.open()
        try:
            return await action(broker)
        finally:
            await broker.close()

    return asyncio.run(run())


# -- enqueue ----------------------------------------------------------------------------
def parse_arguments(task: str, text: str | None) -> tuple[list[Any], dict[str, Any]]:
    """ARGS_JSON as (args, kwargs): an array, an object, or ``{"args": [], "kwargs": {}}``.

    An object whose only keys are ``args`` and/or ``kwargs``, holding an array and an object,
    is the envelope form (as the HTTP API takes it); any other object is keyword arguments.
    """
    if text is None or not text.strip():
        return [], {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            task, [{"loc": ("ARGS_JSON",), "msg": f"not valid JSON ({exc}); {_ARGS_HELP}"}]
        ) from None
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        args, kwargs = value.get("args", []), value.get("kwargs", {})
        envelope = bool(value) and set(value) <= {"args", "kwargs"}
        if envelope and isinstance(args, list) and isinstance(kwargs, dict):
            return args, kwargs
        return [], value
    raise ValidationError(
        task, [{"loc": ("ARGS_JSON",), "msg": f"got a JSON {type(value).__name__}; {_ARGS_HELP}"}]
    )


def _describe(s: JobStatus) -> str:
    if s.state is JobState.RETRYING and s.error is not None:
        return f"retrying after {error_line(s.error)}"
    if s.state is JobState.RUNNING and s.message:
        return s.message
    return s.state.value if s.attempts <= 1 else f"{s.state.value} (attempt {s.attempts})"


async def _watch(job: Job[Any], timeout: float | None, console: Console) -> JobStatus:
    """Poll the job ~10 times a second, drawing its progress, until it ends or time is up."""
    deadline = None if timeout is None else time.monotonic() + timeout
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=console) as bar:
        row = bar.add_task(job.id, total=1.0, note="queued")
        while True:
            s = await job.astatus()
            bar.update(row, description=s.task, completed=s.progress, note=_describe(s))
            if s.state.terminal:
                return s
            if deadline is not None and time.monotonic() >= deadline:
                raise DromosError(
                    f"job {job.id} is still {s.state.value} after {timeout:g}s (it goes on; "
                    f"check it with: dromos status {job.id})"
                )
            await asyncio.sleep(0.1)


@click.command()
@click.argument("app_path", metavar="MODULE:APP")
@click.argument("task_name", metavar="TASK")
@click.argument("args_json", metavar="[ARGS_JSON]", required=False)
@click.option("--wait", is_flag=True, help="Show live progress; print the result as JSON.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after S seconds.")
@click.option("--delay", type=float, default=None, help="Run no earlier than S seconds from now.")
@click.option("--priority", type=int, default=None, help="Higher runs first within a queue.")
@click.option("--queue", default=None, help="Queue to use instead of the task's own.")
@click.option("--idempotency-key", default=None, help="The same key returns the same job.")
def enqueue(
    app_path: str,
    task_name: str,
    args_json: str | None,
    wait: bool,
    timeout: float | None,
    delay: float | None,
    priority: int | None,
    queue: str | None,
    idempotency_key: str | None,
) -> None:
    """Submit a job of TASK; print its id (with --wait: follow it, print its result).

    ARGS_JSON is a JSON array (positional arguments), an object (keyword arguments) or
    {"args": [...], "kwargs": {...}}. Arguments are checked against the task's signature
    before anything is queued. With --wait the id and a live progress bar go to stderr and
    the result alone to stdout; a job that fails exits with status 1.
    """
    app = load_app(app_path)
    task: Task[Any, Any] = app.get_task(task_name)
    args, kwargs = parse_arguments(task.name, args_json)
    bound = task.options(
        delay=delay, priority=priority, queue=queue, idempotency_key=idempotency_key
    )

    async def run() -> JobStatus | None:
        try:
            job = await bound.aenqueue(*args, **kwargs)
            if not wait:
                click.echo(job.id)
                return None
            console = Console(stderr=True)
            console.print(f"enqueued {task.name} as [bold]{job.id}[/]")
            return await _watch(job, timeout, console)
        finally:
            await app.aclose()

    final = asyncio.run(run())
    if final is None:
        return
    if final.state is JobState.SUCCEEDED:
        click.echo(json.dumps(final.result, ensure_ascii=False))
    elif final.state is JobState.CANCELLED:
        raise JobCancelled(final)
    else:
        raise JobFailed(final)


# -- inspection -----------------------------------------------------------------------------
@click.command()
@click.argument("job_id")
@broker_option
@json_option
def status(job_id: str, broker_url: str, as_json: bool) -> None:
    """Show one job: state, progress, attempts, result or errors."""

    async def fetch(broker: Broker) -> JobStatus:
        found = await broker.status(job_id)
        if found is None:
            raise JobNotFound(job_id)
        return found

    found = with_broker(broker_url, fetch)
    if as_json:
        _print_json(found)
    else:
        Console().print(status_table(found))


def _state(value: str | None) -> JobState | None:
    return None if value is None else JobState(value)


_STATES = click.Choice([s.value for s in JobState])


@click.command()
@click.option("--state", type=_STATES, default=None, help="Only jobs in this state.")
@click.option("--task", default=None, help="Only jobs of this task.")
@click.option("--queue", default=None, help="Only jobs in this queue.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@broker_option
@json_option
def jobs(
    state: str | None,
    task: str | None,
    queue: str | None,
    limit: int,
    broker_url: str,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    found = with_broker(
        broker_url,
        lambda b: b.jobs(state=_state(state), task=task, queue=queue, limit=limit),
    )
    if as_json:
        _print_json(found)
    elif not found:
        click.echo("no jobs", err=True)
    else:
        Console().print(jobs_table(found))


@click.command()
@broker_option
@json_option
def queues(broker_url: str, as_json: bool) -> None:
    """How many jobs each queue holds in each state."""
    stats = with_broker(broker_url, lambda b: b.queues())
    if as_json:
        _print_json(stats)
    elif not stats:
        click.echo("no queues: nothing was enqueued yet", err=True)
    else:
        Console().print(queues_table(stats))


@click.group()
def dlq() -> None:
    """Dead letters: jobs that failed for good, kept with every attempt's error.

    Fix the cause, then replay them: they run afresh with a new retry budget.
    """


@dlq.command("list")
@click.option("--task", default=None, help="Only dead letters of this task.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@broker_option
@json_option
def dlq_list(task: str | None, limit: int, broker_url: str, as_json: bool) -> None:
    """List dead-lettered jobs, newest first, with why they failed."""
    found = with_broker(broker_url, lambda b: b.jobs(state=JobState.FAILED, task=task, limit=limit))
    if as_json:
        _print_json(found)
    elif not found:
        click.echo("the dead-letter list is empty", err=True)
    else:
        Console().print(dead_letter_table(found))


@dlq.command("replay")
@click.argument("job_ids", nargs=-1, metavar="[JOB_ID]...")
@broker_option
def dlq_replay(job_ids: tuple[str, ...], broker_url: str) -> None:
    """Move dead letters back to their queue (no JOB_ID: all of them)."""

    async def replay(broker: Broker) -> tuple[list[str], list[str]]:
        moved = await broker.replay(list(job_ids) if job_ids else None)
        problems = []
        for job_id in dict.fromkeys(job_ids):
            if job_id in moved:
                continue
            found = await broker.status(job_id)
            problems.append(
                f"no job {job_id!r}" if found is None else f"{job_id} is {found.state.value}"
            )
        return moved, problems

    moved, problems = with_broker(broker_url, replay)
    click.echo(f"replayed {len(moved)} job(s)")
    if problems:
        raise DromosError(f"not replayed (not in the dead-letter list): {'; '.join(problems)}")
