"""The demo's story: enqueue a realistic mix of jobs, watch them live, check every outcome.

The scenes, all at once on two worker processes:

* ``resize_image`` reports progress and a message at every step;
* ``charge_card`` fails twice (a flaky gateway), is retried with backoff, then succeeds;
* ``sync_inventory`` fails for good and lands in the dead-letter list; the demo then ends the
  outage and replays it, and it succeeds with its error history kept;
* ``send_reminder`` is delayed by a few seconds and must not run before its time;
* a burst of thousands of ``send_newsletter`` jobs is enqueued in one round trip, with one
  ``send_password_reset`` of priority 10 enqueued last, which must run first.

Every outcome is checked, not only shown: the demo is also the smoke test CI runs, so a job
in an unexpected state, a worker that dies or a timeout makes :func:`run` return False.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn
from rich.table import Column, Table

from dromos.brokers.base import Broker
from dromos.cli.jobs import error_line, state_text
from dromos.demo import app as demo
from dromos.demo._processes import WorkerProcesses
from dromos.demo.on_the_bus import groups_per_process, run_events, run_periodic
from dromos.demo.over_http import run_http
from dromos.demo.workflows import run_workflows
from dromos.errors import ConfigurationError
from dromos.job import Job, JobState, JobStatus
from dromos.task import Call

__all__ = ["run"]

_S = JobState
REMINDER_DELAY = 4.0
POLL = 0.1


@dataclass
class Check:
    """One expectation about the run and whether it held."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class Story:
    """The jobs of one run and what was observed while they ran."""

    burst: int
    outage: Path
    jobs: dict[str, Job[Any]] = field(default_factory=dict)
    final: dict[str, JobStatus] = field(default_factory=dict)
    enqueued_at: float = 0.0  # wall clock, when the story's first jobs were enqueued
    reminder_eta: datetime | None = None
    messages: list[str] = field(default_factory=list)  # resize_image's messages, as seen live
    dead_letter: JobStatus | None = None  # sync_inventory as it sat in the dead-letter list
    burst_started: float | None = None  # wall clock, when the burst's enqueue began
    burst_enqueue_seconds: float = 0.0
    burst_seen_done: float | None = None  # wall clock, when the burst was first seen done
    email: dict[str, int] = field(default_factory=dict)  # the email queue's counts per state
    ahead: int = 0  # newsletters that started before the priority-10 password reset
    drain_seconds: float = 0.0  # from the burst's enqueue until its last job finished

    @property
    def burst_total(self) -> int:
        return self.burst + 1  # the newsletters and the password reset

    @property
    def burst_done(self) -> int:
        return sum(n for s, n in self.email.items() if _S(s).terminal)


# -- the scenes -------------------------------------------------------------------------------
async def _enqueue_story(story: Story) -> None:
    story.outage.write_text("the warehouse API is down\n")
    story.enqueued_at = time.time()
    jobs = story.jobs
    jobs["resize"] = await demo.resize_image.aenqueue("photo-42.jpg", width=640)
    jobs["charge"] = await demo.charge_card.aenqueue(7, amount_cents=4999)
    jobs["inventory"] = await demo.sync_inventory.aenqueue("eu-west", str(story.outage))
    jobs["reminder"] = await demo.send_reminder.options(delay=REMINDER_DELAY).aenqueue(7)
    story.reminder_eta = (await jobs["reminder"].astatus()).eta


async def _enqueue_burst(story: Story) -> None:
    """Thousands of newsletters and, last, one urgent mail: one call, one transaction."""
    calls: list[Call[Any]] = [demo.send_newsletter.call(user) for user in range(story.burst)]
    calls.append(demo.send_password_reset.call(7))
    story.burst_started = time.time()
    started = time.perf_counter()
    handles = await demo.app.aenqueue_many(calls)
    story.burst_enqueue_seconds = time.perf_counter() - started
    story.jobs["reset"] = handles[-1]


async def _replay_dead_letter(story: Story, broker: Broker, console: Console) -> None:
    """Show the dead letter, end the outage, replay it: the usual way out of the list."""
    console.print("[bold red]sync_inventory failed for good[/]; [bold]dromos dlq list[/] shows:")
    for s in await broker.jobs(state=_S.FAILED):
        console.print(f"  {s.id}  {s.task}  {s.attempts} attempts")
        for e in s.errors:
            console.print(f"    attempt {e.attempt}: {error_line(e)}", highlight=False)
    story.outage.unlink()
    moved = await broker.replay([story.jobs["inventory"].id])
    console.print(
        f"the warehouse is back: [bold]dromos dlq replay[/] moved {len(moved)} job(s) "
        "back to their queue\n"
    )


# -- the live view ----------------------------------------------------------------------------
_LABELS = {
    "resize": "resize_image   photo-42.jpg",
    "charge": "charge_card    order 7",
    "inventory": "sync_inventory eu-west",
    "reminder": f"send_reminder  in {REMINDER_DELAY:g}s",
    "reset": "password reset priority 10",
}


def _note(key: str, s: JobStatus, story: Story) -> str:
    if key == "resize" and s.state is _S.RUNNING and s.message:
        return s.message
    if key == "reminder" and s.state is _S.SCHEDULED and s.eta is not None:
        return f"scheduled, due in {max(0.0, s.eta.timestamp() - time.time()):.1f}s"
    if key == "inventory" and story.dead_letter is not None and s.state is not _S.FAILED:
        return f"replayed: {s.state.value} (attempt {s.attempts})"
    if s.state in (_S.RETRYING, _S.FAILED) and s.error is not None:
        return f"{s.state.value} after attempt {s.attempts}: {error_line(s.error)}"
    return s.state.value if s.attempts <= 1 else f"{s.state.value} (attempt {s.attempts})"


def _burst_note(story: Story) -> str:
    if story.burst_started is None:
        return "waiting for a worker to start"
    if story.burst_seen_done is None and story.burst_done >= story.burst_total:
        story.burst_seen_done = time.time()
    now = story.burst_seen_done or time.time()
    elapsed = max(1e-3, now - story.burst_started - story.burst_enqueue_seconds)
    rate = story.burst_done / elapsed
    return f"{story.burst_done:,}/{story.burst_total:,} done, {rate:,.0f} jobs/s"


def _finished(story: Story) -> bool:
    if len(story.final) < len(_LABELS) or story.burst_done < story.burst_total:
        return False
    replayed = story.dead_letter is not None
    return replayed and all(s.state.terminal for s in story.final.values())


def _pending(story: Story) -> str:
    left = [f"{s.task} {s.state.value}" for s in story.final.values() if not s.state.terminal]
    left.append(f"email queue {story.burst_done:,}/{story.burst_total:,} done")
    if story.dead_letter is None:
        left.append("sync_inventory never reached the dead-letter list")
    return "still waiting: " + ", ".join(left)


async def _watch(
    story: Story, broker: Broker, workers: WorkerProcesses, timeout: float, console: Console
) -> list[Check]:
    """Poll ~10 times a second and draw; drive the scenes that wait for an event.

    Returns the problems that ended the watch early (a dead worker, the timeout).
    """
    columns = (
        TextColumn("{task.description}", table_column=Column(no_wrap=True, min_width=26)),
        BarColumn(bar_width=16),
        TaskProgressColumn(),
        TextColumn("{task.fields[note]}", table_column=Column(no_wrap=True, overflow="ellipsis")),
    )
    deadline = time.monotonic() + timeout
    with Progress(*columns, console=console) as view:
        rows: dict[str, TaskID] = {
            k: view.add_task(v, total=1.0, note="") for k, v in _LABELS.items()
        }
        view.update(rows["reset"], note="enqueued last, with the burst")
        email = view.add_task(
            f"email queue x{story.burst_total:,}", total=story.burst_total, note=""
        )
        while not _finished(story):
            if dead := workers.exited():
                return [Check("worker processes keep running", False, "; ".join(dead))]
            if time.monotonic() > deadline:
                return [Check(f"everything finished within {timeout:g}s", False, _pending(story))]
            for key, job in story.jobs.items():
                s = story.final[key] = await job.astatus()
                view.update(rows[key], completed=s.progress, note=_note(key, s, story))
                if key == "resize" and s.message and s.message not in story.messages:
                    story.messages.append(s.message)
            resize = story.final["resize"].state
            if story.burst_started is None and resize is not _S.QUEUED:
                await _enqueue_burst(story)  # a worker is up: measure the burst, not start-up
            inventory = story.final["inventory"]
            if inventory.state is _S.FAILED and story.dead_letter is None:
                story.dead_letter = inventory
                await _replay_dead_letter(story, broker, view.console)
            stats = {q.queue: q.counts for q in await broker.queues()}
            story.email = stats.get(demo.send_newsletter.queue, {})
            view.update(email, completed=story.burst_done, note=_burst_note(story))
            await asyncio.sleep(POLL)
    return []


# -- checks and summary ----------------------------------------------------------------------
def _expect(checks: list[Check], name: str, ok: bool, detail: str = "") -> None:
    checks.append(Check(name, ok, detail))


def _state_is(checks: list[Check], s: JobStatus, state: JobState, attempts: int) -> None:
    got = f"{s.state.value} after {s.attempts} attempt(s)"
    if s.error is not None and s.state is not _S.SUCCEEDED:
        got += f": {error_line(s.error)}"
    ok = s.state is state and s.attempts == attempts
    _expect(checks, f"{s.task} is {state.value} after {attempts} attempt(s)", ok, got)


async def _check(story: Story, broker: Broker, capacity: int) -> list[Check]:
    """Check every scene's outcome (and note the figures the summary shows)."""
    checks: list[Check] = []
    f = story.final
    _state_is(checks, f["resize"], _S.SUCCEEDED, 1)
    _expect(
        checks,
        "resize_image's progress messages were seen while it ran",
        len(story.messages) >= 2,
        f"{len(story.messages)} distinct message(s) seen",
    )
    _state_is(checks, f["charge"], _S.SUCCEEDED, 3)
    kinds = [e.type for e in f["charge"].errors]
    _expect(
        checks,
        "charge_card kept the errors of its 2 failed attempts",
        kinds == ["ConnectionError"] * 2,
        str(kinds),
    )
    dead = story.dead_letter
    _expect(
        checks,
        "sync_inventory was dead-lettered after 3 attempts",
        dead is not None and dead.attempts == 3 and len(dead.errors) == 3,
        "" if dead is None else f"{dead.attempts} attempt(s), {len(dead.errors)} error(s)",
    )
    _state_is(checks, f["inventory"], _S.SUCCEEDED, 4)
    reminder, eta = f["reminder"], story.reminder_eta
    _state_is(checks, reminder, _S.SUCCEEDED, 1)
    ran = reminder.result if isinstance(reminder.result, float) else None
    _expect(
        checks,
        "send_reminder did not run before its eta",
        eta is not None and ran is not None and ran >= eta.timestamp(),
        f"eta {eta}, ran at {ran}",
    )
    _expect(
        checks,
        f"the email queue ran all {story.burst_total:,} jobs",
        story.email == {"succeeded": story.burst_total},
        str(story.email),
    )
    letters = await broker.jobs(task=demo.send_newsletter.name, limit=story.burst + 1)
    repeats = sum(1 for s in letters if s.attempts != 1)
    _expect(checks, "no newsletter ran twice", repeats == 0, f"{repeats} ran more than once")
    reset = f["reset"]
    _state_is(checks, reset, _S.SUCCEEDED, 1)
    start = reset.started_at
    story.ahead = sum(1 for s in letters if start and s.started_at and s.started_at < start)
    # Enqueued last but in the same transaction, it is the first job any claim can see; the
    # bound allows for claims in flight, far below the thousands it would wait behind FIFO.
    _expect(
        checks,
        "the password reset (priority 10) jumped the newsletters' line",
        start is not None and story.ahead < capacity,
        f"{story.ahead} newsletter(s) started before it",
    )
    last = max((s.finished_at.timestamp() for s in letters if s.finished_at), default=0.0)
    story.drain_seconds = last - (story.burst_started or 0.0) - story.burst_enqueue_seconds
    return checks


def _clock(moment: datetime | float | None) -> str:
    if moment is None:
        return "?"
    if isinstance(moment, float):
        moment = datetime.fromtimestamp(moment)
    return moment.astimezone().strftime("%H:%M:%S.%f")[:-3]


def _seconds_between(start: datetime | None, end: datetime | None) -> float:
    return 0.0 if start is None or end is None else (end - start).total_seconds()


def _after(s: JobStatus | None, since: float) -> str:
    if s is None or s.finished_at is None:
        return "?"
    return f"+{s.finished_at.timestamp() - since:.1f}s"


def _outcomes(story: Story) -> list[tuple[str, str, str]]:
    """(job, what it shows, what happened) per scene, for the summary."""
    f, t0 = story.final, story.enqueued_at
    resize, dead = f["resize"], story.dead_letter
    ran = _seconds_between(resize.started_at, resize.finished_at)
    eta = story.reminder_eta.timestamp() if story.reminder_eta else 0.0
    late = f["reminder"].result - eta if isinstance(f["reminder"].result, float) else 0.0
    n, secs = story.burst_total, story.burst_enqueue_seconds
    return [
        (
            "resize_image",
            "progress",
            f"{json.dumps(resize.result)}\nran {ran:.1f}s;"
            f" {len(story.messages)}/{len(demo.RESIZE_STEPS)} progress messages seen live",
        ),
        (
            "charge_card",
            "retries",
            f"{json.dumps(f['charge'].result)} after 2 x ConnectionError\n"
            f"done {_after(f['charge'], t0)} (jittered exponential backoff)",
        ),
        (
            "sync_inventory",
            "dead letter",
            f"{f['inventory'].result} items on the replay\n"
            f"dead-lettered {_after(dead, t0)}, replayed, done {_after(f['inventory'], t0)}",
        ),
        (
            "send_reminder",
            "delayed job",
            f"due {_clock(story.reminder_eta)}, ran "
            f"{_clock(f['reminder'].result)}\n{late * 1000:+.0f} ms after its eta",
        ),
        (
            "send_password_reset",
            "priority",
            f"enqueued after {story.burst:,} newsletters\n{story.ahead} of them started before it",
        ),
        (
            f"send_newsletter x{story.burst:,}",
            "bulk",
            f"enqueued in {secs:.2f}s "
            f"({n / max(secs, 1e-6):,.0f} jobs/s, one call)\ndrained in {story.drain_seconds:.2f}s "
            f"({n / max(story.drain_seconds, 1e-6):,.0f} jobs/s)",
        ),
    ]


def _summary(story: Story) -> Table:
    table = Table(title="what happened", header_style="bold", title_style="bold")
    table.add_column("job", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("tries", justify="right")
    table.add_column("outcome", overflow="fold")
    keys = ("resize", "charge", "inventory", "reminder", "reset")
    for (task, shows, outcome), key in zip(_outcomes(story), (*keys, ""), strict=True):
        if key:
            s = story.final[key]
            state, tries = state_text(s.state), str(s.attempts)
        else:
            all_done = story.email == {"succeeded": story.burst_total}
            state = state_text(_S.SUCCEEDED if all_done else _S.FAILED)
            tries = "1"
        table.add_row(f"{task}\n[dim]{shows}[/]", state, tries, outcome)
    return table


async def run(
    directory: Path,
    url: str,
    *,
    burst: int,
    processes: int,
    concurrency: int,
    timeout: float,
    console: Console,
) -> bool:
    """Run the whole demo on the SQLite file ``url`` names, in ``directory``.

    The demo app takes its broker from ``$DROMOS_BROKER`` when it is imported, like any app:
    the caller sets it to ``url`` first. Returns True if every check passed.
    """
    if demo.app.broker_url != url:
        raise ConfigurationError(
            f"the demo app was imported with broker {demo.app.broker_url!r}; set DROMOS_BROKER "
            f"to {url!r} before importing dromos.demo"
        )
    broker = await demo.app.abroker()  # creates the schema before the workers race to
    workers = WorkerProcesses(
        directory, url, processes=processes, concurrency=concurrency, grace=5.0,
        groups=groups_per_process(processes),
    )  # fmt: skip
    story = Story(burst=burst, outage=directory / "warehouse-outage")
    began = time.perf_counter()
    started = time.time()
    workers.start()
    console.print(
        f"[bold]dromos demo[/]: {processes} worker processes (pids "
        f"{', '.join(map(str, workers.pids))}), {concurrency} jobs at once each"
    )
    console.print(f"store: {directory / 'demo.db'}\n", highlight=False)
    checks: list[Check] = []
    try:
        await _enqueue_story(story)
        checks += await _watch(story, broker, workers, timeout, console)
        if not checks:
            checks += await _check(story, broker, capacity=2 * concurrency * processes)
            console.print()
            console.print(_summary(story))
            checks += [Check(*e) for e in await run_http(console)]
            charged = [story.jobs["charge"].id]
            ledger = Path(os.environ.get(demo.LEDGER_ENV, directory / "events.log"))
            checks += [Check(*e) for e in await run_events(console, ledger, charged)]
            checks += [Check(*e) for e in await run_workflows(console)]
            checks += [Check(*e) for e in await run_periodic(console, started)]
    finally:
        codes = workers.stop()
        await demo.app.aclose()
    _expect(
        checks,
        "worker processes stopped cleanly on SIGTERM",
        all(c == 0 for c in codes),
        f"exit statuses {codes}",
    )
    return _verdict(checks, workers, time.perf_counter() - began, console)


def _verdict(
    checks: list[Check], workers: WorkerProcesses, seconds: float, console: Console
) -> bool:
    failed = [c for c in checks if not c.ok]
    say: Callable[[str], None] = console.print
    if not failed:
        say(f"\n[bold green]✓ all {len(checks)} checks passed[/] in {seconds:.1f}s")
        return True
    for c in failed:
        say(f"[bold red]✗ {c.name}[/]: {c.detail}")
    say(f"\n[bold red]{len(failed)} of {len(checks)} checks failed[/] after {seconds:.1f}s")
    console.print(workers.log_tail(), markup=False, highlight=False, soft_wrap=True)
    return False
