"""The command line: enqueue, status, jobs, queues, dlq and demo, and their one-line errors.

Commands run in-process through ``dromos.cli.main`` (the console script's entry point, so
errors are rendered exactly as a user sees them) against a SQLite file in ``tmp_path``; the
app is a module written to ``tmp_path``. Jobs that must run use a worker on a second import
of that module in a thread, as a separate worker process would hold its own app.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest

import dromos
from dromos.brokers.base import Outcome
from dromos.cli import main
from dromos.cli.jobs import parse_arguments
from dromos.job import JobError, JobState, JobStatus

APP_SOURCE = """
import asyncio

import dromos

app = dromos.App("clitest")


@app.task
def add(x: int, y: int = 0) -> int:
    return x + y


@app.task(retries=0)
def boom() -> None:
    raise ValueError("kaboom")


@app.task
async def slow(steps: int) -> str:
    job = dromos.current_job()
    for i in range(steps):
        await job.progress(i / steps, f"step {i + 1} of {steps}")
        await asyncio.sleep(0.05)
    return "done"
"""

Result = tuple[int, str, str]


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("DROMOS_BROKER", url)
    return url


@pytest.fixture
def app_module(tmp_path: Path, db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    name = f"cliapp_{uuid.uuid4().hex[:8]}"  # a fresh module per test: no stale imports
    (tmp_path / f"{name}.py").write_text(APP_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    module.app.close()
    sys.modules.pop(name, None)


@pytest.fixture
def app(app_module: ModuleType) -> dromos.App:
    app: dromos.App = app_module.app
    return app


@pytest.fixture
def worker(app_module: ModuleType) -> Iterator[dromos.Worker]:
    """A worker on its own import of the app module, in a thread with its own loop."""
    spec = importlib.util.spec_from_file_location(
        f"{app_module.__name__}_worker", app_module.__file__
    )
    assert spec is not None
    assert spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    runner = copy.app.worker(concurrency=4, grace=1.0)

    async def serve() -> None:
        try:
            await runner.run()
        finally:
            await copy.app.aclose()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    yield runner
    runner.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()


class Cli:
    """Runs ``dromos ARGS`` as the console script does: (exit code, stdout, stderr)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
        self.monkeypatch = monkeypatch
        self.capsys = capsys

    def __call__(self, *args: str) -> Result:
        self.monkeypatch.setattr(sys, "argv", ["dromos", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(monkeypatch, capsys)


@pytest.fixture
def target(app_module: ModuleType) -> str:
    """MODULE:APP for the app fixture."""
    return f"{app_module.__name__}:app"


def assert_one_line_error(result: Result, *fragments: str) -> None:
    code, _, err = result
    assert code == 1
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def dead_letter(app: dromos.App, job_id: str) -> None:
    """Make the job a dead letter directly through the broker (no worker needed)."""

    async def go() -> None:
        broker = await app.abroker()
        [delivery] = await broker.claim(["default"], 1, 30.0)
        assert delivery.job_id == job_id
        error = JobError(type="ValueError", message="kaboom", attempt=delivery.attempt)
        await broker.settle([Outcome(job_id, delivery.attempt, JobState.FAILED, error=error)])

    app.portal.call(go)


# -- ARGS_JSON ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1, 2]", ([1, 2], {})),
        ('{"x": 1}', ([], {"x": 1})),
        ('{"args": [1], "kwargs": {"y": 2}}', ([1], {"y": 2})),
        ('{"args": [3]}', ([3], {})),
        (None, ([], {})),
    ],
)
def test_args_json_takes_an_array_an_object_or_the_envelope_form(
    text: str | None, expected: tuple[list[Any], dict[str, Any]]
) -> None:
    assert parse_arguments("add", text) == expected


def test_args_json_object_with_other_keys_beside_args_is_keyword_arguments() -> None:
    assert parse_arguments("t", '{"args": [1], "x": 2}') == ([], {"args": [1], "x": 2})


# -- enqueue ---------------------------------------------------------------------------------
def test_enqueue_prints_the_id_of_a_queued_job(cli: Cli, app: dromos.App, target: str) -> None:
    code, out, _ = cli("enqueue", target, "add", "[2, 3]")
    assert code == 0
    status = app.job(out.strip()).status()
    assert (status.task, status.state) == ("add", JobState.QUEUED)


def test_enqueue_options_set_delay_priority_and_queue(
    cli: Cli, app: dromos.App, target: str
) -> None:
    args = ["--delay", "60", "--priority", "7", "--queue", "urgent"]
    code, out, _ = cli("enqueue", target, "add", "[1]", *args)
    assert code == 0
    status = app.job(out.strip()).status()
    assert (status.state, status.priority, status.queue) == (JobState.SCHEDULED, 7, "urgent")


def test_enqueue_with_the_same_idempotency_key_returns_the_same_job(
    cli: Cli, app: dromos.App, target: str
) -> None:
    argv = ["enqueue", target, "add", "[1]", "--idempotency-key", "order-7"]
    first = cli(*argv)
    second = cli(*argv)
    assert first[1] == second[1]
    assert first[1].strip()


def test_enqueue_bad_json_is_one_line_and_exit_1(cli: Cli, app: dromos.App, target: str) -> None:
    result = cli("enqueue", target, "add", "[1,")
    assert_one_line_error(result, "ARGS_JSON", "not valid JSON")


def test_enqueue_scalar_json_is_refused(cli: Cli, app: dromos.App, target: str) -> None:
    result = cli("enqueue", target, "add", "42")
    assert_one_line_error(result, "ARGS_JSON", "JSON array")


def test_enqueue_unknown_task_is_one_line_naming_the_known_ones(
    cli: Cli, app: dromos.App, target: str
) -> None:
    result = cli("enqueue", target, "nope", "[]")
    assert_one_line_error(result, "unknown task 'nope'", "add")


def test_enqueue_arguments_that_do_not_fit_name_the_field_and_queue_nothing(
    cli: Cli, app: dromos.App, target: str
) -> None:
    result = cli("enqueue", target, "add", '{"x": "many"}')
    assert_one_line_error(result, "invalid arguments for task 'add'", "x")
    assert app.portal.call(lambda: _jobs(app)) == []


def test_enqueue_missing_argument_is_one_line(cli: Cli, app: dromos.App, target: str) -> None:
    result = cli("enqueue", target, "add")
    assert_one_line_error(result, "invalid arguments for task 'add'")


def test_enqueue_wait_prints_the_result_as_json(
    cli: Cli, app: dromos.App, worker: dromos.Worker, target: str
) -> None:
    argv = ["enqueue", target, "slow", "[4]", "--wait", "--timeout", "20"]
    code, out, err = cli(*argv)
    assert (code, out) == (0, '"done"\n')
    assert "enqueued slow as" in err
    assert "100%" in err  # the progress bar, drawn on stderr


def test_enqueue_wait_on_a_failing_job_exits_1_with_its_error(
    cli: Cli, app: dromos.App, worker: dromos.Worker, target: str
) -> None:
    argv = ["enqueue", target, "boom", "--wait", "--timeout", "20"]
    code, out, err = cli(*argv)
    assert (code, out) == (1, "")
    assert "ValueError: kaboom" in err
    assert "Traceback" not in err


def test_enqueue_wait_gives_up_after_its_timeout(cli: Cli, app: dromos.App, target: str) -> None:
    argv = ["enqueue", target, "add", "[1]", "--wait", "--timeout", "0.3"]
    code, _, err = cli(*argv)
    assert code == 1
    assert "still queued after 0.3s" in err.strip().splitlines()[-1]


# -- status, jobs, queues ---------------------------------------------------------------------
def test_status_shows_the_job(cli: Cli, app: dromos.App) -> None:
    job = app.tasks["add"].enqueue(1, 2)
    code, out, _ = cli("status", job.id)
    assert code == 0
    assert [job.id, "add", "queued"] == [w for w in out.split() if w in (job.id, "add", "queued")]


def test_status_json_is_a_job_status(cli: Cli, app: dromos.App) -> None:
    job = app.tasks["add"].enqueue(1, 2)
    code, out, _ = cli("status", job.id, "--json")
    assert code == 0
    status = msgspec.json.decode(out, type=JobStatus)
    assert (status.id, status.state) == (job.id, JobState.QUEUED)


def test_status_of_an_unknown_job_is_one_line(cli: Cli, app: dromos.App) -> None:
    app.tasks["add"].enqueue(1)  # the store exists; the id does not
    assert_one_line_error(cli("status", "no-such-id"), "no job 'no-such-id'")


def test_inspecting_a_missing_sqlite_file_says_which_path(cli: Cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'absent.db'}"
    assert_one_line_error(cli("jobs", "--broker", url), "absent.db")
    assert not (tmp_path / "absent.db").exists()


def test_broker_option_wins_over_the_environment(
    cli: Cli, app: dromos.App, db: str, tmp_path: Path
) -> None:
    job = app.tasks["add"].enqueue(1)
    cli.monkeypatch.setenv("DROMOS_BROKER", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    code, out, _ = cli("status", job.id, "--broker", db, "--json")
    assert code == 0
    assert msgspec.json.decode(out, type=JobStatus).id == job.id


def test_jobs_lists_newest_first(cli: Cli, app: dromos.App) -> None:
    ids = [app.tasks["add"].enqueue(i).id for i in range(3)]
    code, out, _ = cli("jobs", "--json")
    assert code == 0
    assert [s.id for s in msgspec.json.decode(out, type=list[JobStatus])] == ids[::-1]


def test_jobs_filters_by_state_and_task(cli: Cli, app: dromos.App) -> None:
    app.tasks["add"].enqueue(1)
    later = app.tasks["add"].options(delay=60).enqueue(2)
    app.tasks["boom"].options(delay=60).enqueue()
    code, out, _ = cli("jobs", "--state", "scheduled", "--task", "add", "--json")
    assert code == 0
    assert [s.id for s in msgspec.json.decode(out, type=list[JobStatus])] == [later.id]


def test_jobs_table_shows_each_job(cli: Cli, app: dromos.App) -> None:
    ids = [app.tasks["add"].enqueue(i).id for i in range(2)]
    code, out, _ = cli("jobs", "--limit", "1")
    assert code == 0
    assert (ids[1] in out, ids[0] in out) == (True, False)


def test_queues_counts_jobs_per_state(cli: Cli, app: dromos.App) -> None:
    app.tasks["add"].enqueue(1)
    app.tasks["add"].enqueue(2)
    app.tasks["add"].options(delay=60, queue="later").enqueue(3)
    code, out, _ = cli("queues", "--json")
    assert code == 0
    counts = {q["queue"]: q["counts"] for q in msgspec.json.decode(out)}
    assert counts == {"default": {"queued": 2}, "later": {"scheduled": 1}}


def test_queues_table_names_each_queue(cli: Cli, app: dromos.App) -> None:
    app.tasks["add"].options(queue="reports").enqueue(1)
    code, out, _ = cli("queues")
    assert code == 0
    assert "reports" in out


# -- dead letters -----------------------------------------------------------------------------
def test_dlq_list_shows_dead_letters_with_their_error(cli: Cli, app: dromos.App) -> None:
    job = app.tasks["boom"].enqueue()
    app.tasks["add"].enqueue(1)
    dead_letter(app, job.id)
    code, out, _ = cli("dlq", "list", "--json")
    assert code == 0
    [status] = msgspec.json.decode(out, type=list[JobStatus])
    assert (status.id, status.error and status.error.message) == (job.id, "kaboom")
    code, out, _ = cli("dlq", "list")
    assert job.id in out
    assert "ValueError: kaboom" in out


def test_dlq_replay_of_an_id_moves_it_back_to_its_queue(cli: Cli, app: dromos.App) -> None:
    job = app.tasks["boom"].enqueue()
    dead_letter(app, job.id)
    code, out, _ = cli("dlq", "replay", job.id)
    assert (code, out) == (0, "replayed 1 job(s)\n")
    assert job.status().state is JobState.QUEUED


def test_dlq_replay_without_ids_replays_every_dead_letter(cli: Cli, app: dromos.App) -> None:
    jobs = [app.tasks["boom"].enqueue() for _ in range(2)]
    for job in jobs:
        dead_letter(app, job.id)
    code, out, _ = cli("dlq", "replay")
    assert (code, out) == (0, "replayed 2 job(s)\n")
    assert {j.status().state for j in jobs} == {JobState.QUEUED}


def test_dlq_replay_of_an_id_not_dead_lettered_is_one_line(cli: Cli, app: dromos.App) -> None:
    job = app.tasks["add"].enqueue(1)
    result = cli("dlq", "replay", job.id, "no-such-id")
    assert_one_line_error(result, f"{job.id} is queued", "no job 'no-such-id'")


# -- demo -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_runs_end_to_end_and_exits_0(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dromos", "demo", "--dir", str(tmp_path), "--burst", "1000"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "checks passed" in proc.stdout
    # The second act, over HTTP: both styles, the signed webhook, the refused arguments.
    out = " ".join(proc.stdout.split())
    assert "Prefer: wait=10 -> 200" in out
    assert "(callback_url) -> 202, Location: /v1/jobs/" in out
    assert "dromos.job.succeeded" in out
    assert "signature verified" in out
    assert '"many" -> 422' in out
    # The third act, on the event bus: each group got each of its events once.
    for group in ("billing", "analytics", "receipts"):
        assert f"group {group} got each of its" not in out  # a failed check would name it
        assert f" {group} " in out
    assert "who got what" in out


@pytest.mark.slow
def test_demo_reports_a_timeout_and_exits_1(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dromos", "demo", "--dir", str(tmp_path), "--timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 1
    assert "everything finished within 0.5s" in proc.stdout


# -- helpers ----------------------------------------------------------------------------------
async def _jobs(app: dromos.App) -> list[JobStatus]:
    return await (await app.abroker()).jobs()


@pytest.mark.parametrize(
    ("target_text", "fragment"),
    [
        ("no_such_module_here:app", "cannot import 'no_such_module_here'"),
        ("no_colon", "write MODULE:ATTR"),
        ("dromos:__version__", "not a dromos.App"),
        ("dromos:missing_attr", "has no attribute 'missing_attr'"),
    ],
)
def test_a_wrong_module_app_is_one_line(cli: Cli, target_text: str, fragment: str) -> None:
    assert_one_line_error(cli("enqueue", target_text, "add"), fragment)
