"""A SQLite file made before the webhook columns existed is brought up to date when opened."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import dromos


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
        assert version.fetchone() == ("3",)
    db.close()
    assert {"callback_url", "webhooks", "hook_due"} <= columns
