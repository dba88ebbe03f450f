"""A worker carries only what it uses: heavy packages are imported on first need.

Each check runs in a fresh interpreter (this one has imported everything already), so a
module-level import creeping back into the hot path fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import dromos

HEAVY = (
    "pydantic",
    "rich",
    "standardwebhooks",
    "httpx",
    "fastapi",
    "cloudevents",
    "multiprocessing",
    "zoneinfo",  # with sysconfig and its build data: only a cron schedule's timezone needs it
)


def _loaded_after(code: str) -> set[str]:
    """The HEAVY packages a fresh interpreter has imported after running ``code``."""
    probe = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
    """)
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_tasks_of_plain_types_enqueue_run_and_answer_without_pydantic(tmp_path: object) -> None:
    loaded = _loaded_after(f"""
        import asyncio, dromos
        app = dromos.App("lean", broker="sqlite:///{tmp_path}/lean.db")

        @app.task
        async def add(a: int, b: int = 0) -> int:
            return a + b

        @app.task
        def echo(value: str, flag: bool = False):  # no return hint: Any
            return value

        async def main():
            job = await add.aenqueue(1, 2)
            other = await echo.aenqueue("x")
            worker = app.worker(concurrency=2)
            runner = asyncio.create_task(worker.run())
            assert await job.aresult(timeout=10) == 3
            assert await other.aresult(timeout=10) == "x"
            worker.stop()
            await runner
            await app.aclose()

        asyncio.run(main())
    """)
    assert loaded == set()


def test_a_richer_signature_still_validates_through_pydantic(app: dromos.App) -> None:
    @app.task
    def scale(factor: float, names: list[str]) -> list[str]:
        return names

    args, _ = scale.signature.dump(("2", ["a"]), {})
    assert args == [2.0, ["a"]]
    with pytest.raises(dromos.ValidationError, match="names"):
        scale.signature.dump((1.0, "not a list"), {})


def test_a_plain_signature_still_converts_and_refuses_on_the_slow_path(app: dromos.App) -> None:
    @app.task
    def resize(width: int) -> int:
        return width

    assert resize.signature.dump(("7",), {}) == ([7], {})  # lax, as pydantic is
    with pytest.raises(dromos.ValidationError, match="width"):
        resize.signature.dump(("seven",), {})
    assert resize.signature.load_result(7) == 7
    assert resize.signature.load_result(7.0) == 7  # declared int: converted
    assert type(resize.signature.load_result(7.0)) is int


def test_the_worker_command_does_not_import_the_other_commands() -> None:
    loaded = _loaded_after("""
        import sys
        from dromos.cli import cli
        cli.get_command(None, "worker")
    """)
    assert loaded == set()


def test_every_command_is_listed_and_found() -> None:
    from dromos.cli import cli

    names = cli.list_commands(None)  # type: ignore[arg-type]
    expected = [
        "batch", "demo", "dlq", "enqueue", "events", "jobs", "migrate", "publish", "queues",
        "schedules", "serve", "status", "worker",
    ]  # fmt: skip
    assert names == expected
    for name in names:
        command = cli.get_command(None, name)  # type: ignore[arg-type]
        assert command is not None
        assert command.name == name
    assert cli.get_command(None, "nope") is None  # type: ignore[arg-type]
