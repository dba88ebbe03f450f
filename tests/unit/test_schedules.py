"""Schedules: fire times of intervals and cron expressions, and what a tick enqueues."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import dromos
from dromos.schedules import Scheduler
from tests.unit.test_cli import Cli, cli  # noqa: F401 - the fixture


def _ts(text: str, zone: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def test_intervals_are_aligned_to_the_epoch(app: dromos.App) -> None:
    @app.periodic(every=timedelta(minutes=15))
    async def report() -> None: ...

    [p] = app.periodics
    ticks = list(p.ticks(_ts("2026-11-26 08:03:00"), _ts("2026-11-26 08:45:00")))
    assert [t.strftime("%H:%M") for t in ticks] == ["08:15", "08:30", "08:45"]  # (after, until]
    assert all(t.tzinfo is UTC for t in ticks)
    assert p.schedule == "every 0:15:00"


def test_cron_is_read_in_its_timezone_across_a_dst_change(app: dromos.App) -> None:
    @app.periodic(cron="30 2 * * *", timezone="Europe/Paris")
    async def nightly() -> None: ...

    [p] = app.periodics
    # 2026-03-29: Paris skips 02:00-03:00; cronsim runs a skipped time at the next valid one.
    runs = p.next_runs(3, _ts("2026-03-27 12:00:00", "Europe/Paris"))
    assert [r.isoformat() for r in runs][:1] == ["2026-03-28T02:30:00+01:00"]
    assert runs[2].utcoffset() == timedelta(hours=2)  # summer time after the change
    assert "Europe/Paris" in p.schedule


def test_a_tick_is_one_idempotent_job_with_its_time_in_the_headers(app: dromos.App) -> None:
    @app.periodic(every=60, args=(7,), kwargs={"loud": True})
    async def ping(n: int, loud: bool = False) -> None: ...

    [p] = app.periodics
    tick = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
    call = p.call(tick)
    assert (call.args, call.kwargs) == ((7,), {"loud": True})
    assert call.options.idempotency_key == "dromos:periodic:ping:2026-11-26T08:00:00+00:00"
    assert call.options.headers == {
        "periodic": "ping",
        "scheduled_for": "2026-11-26T08:00:00+00:00",
    }


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({}, "either cron= or every="),
        ({"cron": "* * * * *", "every": 5}, "either cron= or every="),
        ({"every": 0}, "positive"),
        ({"cron": "61 * * * *"}, "bad cron"),
        ({"every": 5, "timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"every": 5, "misfire_grace": 10 * 86400}, "idempotency_window"),
    ],
)
def test_bad_schedules_are_refused_at_registration(
    app: dromos.App, settings: dict[str, object], fragment: str
) -> None:
    with pytest.raises(dromos.ConfigurationError, match=fragment):

        @app.periodic(**settings)  # type: ignore[arg-type]
        async def job() -> None: ...

    assert "job" not in app.tasks  # nothing half-registered
    assert app.periodics == []


async def test_a_scheduler_fires_each_tick_once_and_looks_back_on_takeover(
    app: dromos.App,
) -> None:
    @app.periodic(every=10, misfire_grace=25)
    async def tick() -> None: ...

    broker = await app.abroker()
    one = Scheduler(app, broker, "one")
    now = _ts("2026-11-26 08:00:05")
    one.take_over(now, last=0.0)  # never held before: nothing to catch up
    assert await one.fire(now) == 0
    assert await one.fire(now + 6) == 1  # 08:00:10
    assert await one.fire(now + 7) == 0
    # "one" died after its renewal at 08:00:12; "two" takes over at 08:00:45: it looks back
    # 25 s (grace), after 08:00:20: 08:00:30 and 08:00:40 were missed.
    two = Scheduler(app, broker, "two")
    two.take_over(now + 40, last=now + 7)
    assert await two.fire(now + 40) == 2
    # "three" takes over right after "two" renewed at 08:00:45: its last second again.
    three = Scheduler(app, broker, "three")
    three.take_over(now + 41, last=now + 40)
    assert await three.fire(now + 41) == 0  # (08:00:44, 08:00:46]: no tick
    assert len(await broker.jobs()) == 3  # one job per tick, whoever fired it


async def test_catch_up_false_fires_only_the_latest_missed_tick(app: dromos.App) -> None:
    @app.periodic(every=10, misfire_grace=60, catch_up=False)
    async def tick() -> None: ...

    broker = await app.abroker()
    scheduler = Scheduler(app, broker, "one")
    now = _ts("2026-11-26 08:00:05")
    scheduler.take_over(now, last=now - 100)
    assert await scheduler.fire(now) == 1  # 07:59:10 ... 08:00:00 missed: one run
    assert await scheduler.fire(now + 30) == 3  # then every tick again


def test_the_schedules_command_lists_next_runs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Cli,  # noqa: F811
) -> None:
    (tmp_path / "periodic_app.py").write_text(
        "import dromos\n"
        "app = dromos.App('p', broker='memory://')\n"
        "@app.periodic(cron='0 7 * * 1-5', timezone='Europe/Paris')\n"
        "async def digest() -> None: ...\n"
        "@app.periodic(every=30)\n"
        "async def heartbeat() -> None: ...\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, _ = cli("schedules", "periodic_app:app", "--json", "-n", "2")
    assert code == 0
    rows = {r["task"]: r for r in json.loads(out)}
    assert rows["digest"]["schedule"] == "cron 0 7 * * 1-5 (Europe/Paris)"
    assert all(r.endswith(("+01:00", "+02:00")) for r in rows["digest"]["next"])
    assert len(rows["heartbeat"]["next"]) == 2
    code, out, _ = cli("schedules", "periodic_app:app")
    assert "heartbeat" in out
    assert "every 0:00:30" in out
