"""A SQLite file made before the webhook columns existed is brought up to date when opened."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import dromos
from dromos.brokers.base import EventRecord


async def test_a_file_without_the_webhook_columns_gets_them_and_keeps_its_jobs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    app = dromos.App("old", f"sqlite:///{path}")

    @app.task
    async def one() -> int:
        return 1

    kept = await one.aenqueue()
    await app.aclose()
    with sqlite3.connect(path) as db:  # back to the first schema: no webhook columns
        db.execute("DROP TRIGGER dromos_jobs_release")  # (schema 4's, which names them)
        db.execute("DROP INDEX dromos_jobs_hooks")
        for column in ("hook_due", "webhooks", "callback_url"):
            db.execute(f"ALTER TABLE dromos_jobs DROP COLUMN {column}")
        db.execute("UPDATE dromos_meta SET value = '1' WHERE key = 'schema_version'")
    db.close()

    again = dromos.App("old", f"sqlite:///{path}")
    again.task(one.func, name="one")
    assert (await again.job(kept.id).astatus()).state is dromos.JobState.QUEUED
    hooked = await again.get_task("one").options(callback_url="https://hooks.example/x").aenqueue()
    assert (await hooked.astatus()).webhooks == []
    await again.aclose()
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(dromos_jobs)")}
        version = db.execute("SELECT value FROM dromos_meta WHERE key = 'schema_version'")
        assert version.fetchone() == ("7",)
    db.close()
    assert {"callback_url", "webhooks", "hook_due"} <= columns


async def test_a_file_without_dependencies_gets_them_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    app = dromos.App("old", f"sqlite:///{path}")

    @app.task
    async def one() -> int:
        return 1

    kept = await one.aenqueue()
    await app.aclose()
    with sqlite3.connect(path) as db:  # back to schema 3: no dependencies
        db.execute("DROP TRIGGER dromos_jobs_release")
        db.execute("DROP TABLE dromos_dependencies")
        for column in ("waiting", "dependents"):
            db.execute(f"ALTER TABLE dromos_jobs DROP COLUMN {column}")
        db.execute("UPDATE dromos_meta SET value = '3' WHERE key = 'schema_version'")
    db.close()

    again = dromos.App("old", f"sqlite:///{path}")
    task = again.task(one.func, name="one")
    waiting = await task.options(depends_on=[kept.id]).aenqueue()
    assert (await waiting.astatus()).state is dromos.JobState.SCHEDULED
    assert await again.job(kept.id).acancel() is dromos.JobState.CANCELLED
    assert (await waiting.astatus()).state is dromos.JobState.CANCELLED  # the trigger is back
    await again.aclose()


async def test_a_file_without_the_event_parking_tables_gets_them(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    app = dromos.App("old", f"sqlite:///{path}")
    await app.broker.open()
    await app.aclose()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE dromos_amqp_parked")
        db.execute("DROP TABLE dromos_amqp_names")
        db.execute("UPDATE dromos_meta SET value = '4' WHERE key = 'schema_version'")
    db.close()

    again = dromos.App("old", f"sqlite:///{path}")
    await again.broker.open()
    await again.broker.names_add("group", {"g": ["#"]})
    assert await again.broker.names_list("group") == {"g": ("#",)}
    assert await again.broker.parked_counts() == {}
    await again.aclose()


async def test_a_file_of_schema_5_gets_the_trigger_that_ends_a_dependent_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    app = dromos.App("old", f"sqlite:///{path}")
    await app.broker.open()
    await app.aclose()
    with sqlite3.connect(path) as db:  # schema 5's trigger ended a diamond's dependent twice
        db.execute("DROP TRIGGER dromos_jobs_release")
        db.execute(  # a stand-in: what matters is that the open replaces it
            "CREATE TRIGGER dromos_jobs_release AFTER UPDATE OF state ON dromos_jobs "
            "BEGIN SELECT 1; END"
        )
        db.execute("UPDATE dromos_meta SET value = '5' WHERE key = 'schema_version'")
    db.close()

    again = dromos.App("old", f"sqlite:///{path}")

    @again.task
    async def one() -> int:
        return 1

    first = await one.aenqueue()
    second = await one.options(depends_on=[first.id]).aenqueue()
    third = await one.options(depends_on=[first.id, second.id]).aenqueue()
    assert await first.acancel() is dromos.JobState.CANCELLED
    status = await third.astatus()
    assert status.state is dromos.JobState.CANCELLED
    assert [e.type for e in status.errors] == ["DependencyCancelled"]
    await again.aclose()


async def test_a_file_of_schema_6_gets_the_replay_base_of_event_claims(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    app = dromos.App("old", f"sqlite:///{path}")
    broker = app.broker
    await broker.open()
    await broker.join_group("g", ["#"], "latest")
    await app.aclose()
    with sqlite3.connect(path) as db:  # schema 6: replays restarted the attempt
        db.execute("ALTER TABLE dromos_event_claims DROP COLUMN base")
        db.execute("UPDATE dromos_meta SET value = '6' WHERE key = 'schema_version'")
    db.close()

    again = dromos.App("old", f"sqlite:///{path}")
    bus = again.broker
    await bus.open()
    await bus.publish([EventRecord("orders.placed", "e1", b"{}")])
    [d] = await bus.claim_events("g", 10, 30.0)
    assert (d.attempt, d.tries) == (1, 1)
    await again.aclose()
    with sqlite3.connect(path) as db:
        assert "base" in {row[1] for row in db.execute("PRAGMA table_info(dromos_event_claims)")}
    db.close()
