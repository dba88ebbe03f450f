"""The demo's third act: services that never call each other, talking through the event bus.

An "orders" service publishes order events; two consumer groups handle them in the worker
processes: ``billing`` (two instances: they share its events) and ``analytics`` (one). A third
group, ``receipts``, learns of every completed ``charge_card`` job from the job lifecycle
events (``dromos.job.succeeded``) instead of polling. Each handler notes what it got in a
ledger file; this act reads it and shows, per group and per process, who got what.
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dromos.demo import app as demo

__all__ = ["groups_per_process", "run_events", "run_periodic"]

Expectation = tuple[str, bool, str]  # (what, held, detail)

ORDERS = 24
CANCELLED = 4


def groups_per_process(processes: int) -> list[str | None]:
    """``-g`` of each worker process: billing and receipts everywhere, analytics in one."""
    if processes == 1:
        return [None]
    rest: list[str | None] = ["billing,receipts"] * (processes - 1)
    return ["billing,analytics,receipts", *rest]


def _read(ledger: Path) -> list[tuple[str, int, str, str]]:
    if not ledger.exists():
        return []
    rows = []
    for line in ledger.read_text().splitlines():
        group, pid, topic, what = line.split()
        rows.append((group, int(pid), topic, what))
    return rows


async def run_events(
    console: Console, ledger: Path, charged: list[str], timeout: float = 20.0
) -> list[Expectation]:
    """Publish the orders, wait for every group, show and check who got what.

    ``charged``: ids of the ``charge_card`` jobs that succeeded in the first act.
    """
    console.print("\n[bold]On the event bus[/]: the orders service publishes; nobody is called")
    created = []
    for i in range(ORDERS):  # one by one, as orders come in: both billing instances get some
        created.append(
            await demo.app.apublish("orders.created", {"order": i, "total_cents": 1000 + i})
        )
        await asyncio.sleep(0.01)
    cancelled = await demo.app.apublish_many(
        [("orders.cancelled", {"order": i}) for i in range(CANCELLED)]
    )
    want = {
        "billing": set(created),
        "analytics": set(created) | set(cancelled),
        "receipts": set(charged),
    }
    deadline = time.monotonic() + timeout
    rows = _read(ledger)
    while time.monotonic() < deadline:
        got = {g: {r[3] for r in rows if r[0] == g} for g in want}
        if all(got[g] >= want[g] for g in want):
            break
        await asyncio.sleep(0.05)
        rows = _read(ledger)
    await asyncio.sleep(0.2)  # anything handled twice would show now
    rows = _read(ledger)
    console.print(_table(rows))
    out: list[Expectation] = []
    for group, expected in want.items():
        mine = [r for r in rows if r[0] == group]
        handled = collections.Counter(r[3] for r in mine)
        missing = expected - set(handled)
        twice = [k for k, n in handled.items() if n > 1]
        out.append((
            f"group {group} got each of its {len(expected)} events once",
            not missing and not twice,
            f"missing {len(missing)}, twice {len(twice)}",
        ))  # fmt: skip
    return out


async def run_periodic(console: Console, started: float) -> list[Expectation]:
    """The periodic task's runs since the workers started: one per tick, none missed."""
    broker = await demo.app.abroker()
    now = time.time()
    [periodic] = [p for p in demo.app.periodics if p.name == "refresh_rates"]
    expected = [t.isoformat() for t in periodic.ticks(started + 3.0, now - 1.0)]  # settled
    runs = await broker.jobs(task="refresh_rates", limit=1000)
    fired = collections.Counter(str(r.result) for r in runs if r.state.value == "succeeded")
    console.print(
        f"\n[bold]Periodic[/]: refresh_rates every 2 s, fired by whichever worker holds the "
        f"scheduler lease: {sum(fired.values())} runs ({', '.join(sorted(fired)[-3:])} ...)",
        highlight=False,
    )
    missing = [t for t in expected if t not in fired]
    twice = [t for t, n in fired.items() if n > 1]
    return [(
        "the periodic task ran once per tick",
        bool(expected) and not missing and not twice,
        f"{len(expected)} ticks expected, missing {missing}, twice {twice}",
    )]  # fmt: skip


def _table(rows: list[tuple[str, int, str, str]]) -> Table:
    table = Table(title="who got what", box=None, header_style="bold", title_justify="left")
    for name in ("group", "subscribes to", "process", "events handled"):
        table.add_column(name, justify="right" if name == "events handled" else "left")
    patterns = {"billing": "orders.created", "analytics": "orders.#",
                "receipts": "dromos.job.succeeded (charge_card)"}  # fmt: skip
    per = collections.Counter((r[0], r[1]) for r in rows)
    for (group, pid), n in sorted(per.items()):
        table.add_row(group, patterns.get(group, ""), str(pid), str(n))
    return table
