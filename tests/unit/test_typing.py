"""The public API is typed: mypy --strict checks task arguments and knows result types.

One small example module is checked once per test session (a few seconds cold; the mypy
cache lives in pytest's cache directory, so later runs take a second or two). A line that
must be a type error carries ``# type: ignore[code]``: under ``--strict`` an ignore that is
not needed is itself an error, so the check fails both when the error is missing and when
another one appears.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

EXAMPLE = textwrap.dedent(
    """
    import dataclasses

    import dromos

    app = dromos.App("typed", broker="memory://")


    @dataclasses.dataclass
    class Size:
        width: int
        height: int


    @app.task
    async def resize(image_id: int, width: int = 800) -> str:
        return f"/img/{image_id}-{width}.png"


    @app.task
    def measure(path: str) -> Size:
        return Size(1, 2)


    @app.task(retries=3, timeout=30.0, queue="images")
    async def crop(image_id: int, box: tuple[int, int, int, int]) -> bytes:
        return b""


    @app.task(retries=1)
    def count(words: list[str]) -> int:
        return len(words)


    @app.task(batch_size=100, batch_wait=0.5)
    async def insert(rows: list[Size]) -> list[int]:
        return [row.width for row in rows]


    @app.task(batch_size=10, rate_limit="5/s")
    def notify(addresses: list[str]) -> None:
        pass


    async def use() -> None:
        # good calls type-check
        resize.enqueue(1, width=2)
        await resize.aenqueue(1)
        resize.options(delay=1, priority=5).enqueue(3)
        measure.enqueue("a.png")
        crop.enqueue(1, (0, 0, 10, 10))
        count.enqueue(["a"])
        app.enqueue_many([resize.call(1), measure.call("b")])

        # wrong argument types are errors
        resize.enqueue("one")  # type: ignore[arg-type]
        await resize.aenqueue(1, width="wide")  # type: ignore[arg-type]
        resize.options(priority=1).enqueue("x")  # type: ignore[arg-type]
        measure.enqueue(42)  # type: ignore[arg-type]
        crop.enqueue(1, (0, 0))  # type: ignore[arg-type]
        count.enqueue("not a list")  # type: ignore[arg-type]
        resize.enqueue(1, height=2)  # type: ignore[call-arg]
        measure.enqueue()  # type: ignore[call-arg]

        # results are typed as the task's return type
        reveal_type(resize.enqueue(1).result())  # R1
        reveal_type(await (await resize.aenqueue(1)).aresult())  # R2
        reveal_type(measure.enqueue("a").result(timeout=1))  # R3
        reveal_type(crop.enqueue(1, (0, 0, 1, 1)).result())  # R4
        reveal_type(count.enqueue([]).result())  # R5
        reveal_type(crop.options(priority=2).enqueue(1, (0, 0, 1, 1)).result())  # R6

        # inline calls keep the function's own types
        pending = resize(1)
        _ = reveal_type(pending)  # R7
        await pending
        reveal_type(measure("a"))  # R8
        reveal_type(crop)  # R9

        # a batch task's jobs carry one item each, and get one result each
        insert.enqueue(Size(1, 2))
        notify.enqueue("a@example.com")
        insert.enqueue([Size(1, 2)])  # type: ignore[arg-type]
        notify.enqueue(1)  # type: ignore[arg-type]
        reveal_type(insert.enqueue(Size(1, 2)).result())  # R10
        reveal_type(notify.enqueue("b").result())  # R11
    """
)


@pytest.fixture(scope="module")
def mypy_report(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> str:
    source = tmp_path_factory.mktemp("typing") / "typed_example.py"
    source.write_text(EXAMPLE)
    cache = pytestconfig.cache.mkdir("mypy") if pytestconfig.cache else source.parent / "cache"
    stdout, stderr, _ = mypy_api.run(
        ["--strict", "--cache-dir", str(cache), "--no-error-summary", str(source)]
    )
    assert not stderr, stderr
    return str(stdout)


def _revealed(report: str, marker: str) -> str:
    line = next(n for n, text in enumerate(EXAMPLE.splitlines(), 1) if text.endswith(marker))
    found = re.search(rf":{line}: note: Revealed type is \"(.*)\"", report)
    assert found, f"no reveal_type on line {line} in:\n{report}"
    return found.group(1).replace("builtins.", "")  # mypy < 2 spells builtins out


def test_the_example_has_no_other_type_errors_and_every_expected_error_occurs(
    mypy_report: str,
) -> None:
    errors = [line for line in mypy_report.splitlines() if ": error:" in line]
    assert errors == []


def test_an_async_tasks_result_is_its_return_type(mypy_report: str) -> None:
    assert _revealed(mypy_report, "# R1") == "str"
    assert _revealed(mypy_report, "# R2") == "str"


def test_a_plain_tasks_result_is_its_return_type(mypy_report: str) -> None:
    assert _revealed(mypy_report, "# R3") == "typed_example.Size"


def test_tasks_declared_with_options_keep_their_result_types(mypy_report: str) -> None:
    assert _revealed(mypy_report, "# R4") == "bytes"
    assert _revealed(mypy_report, "# R5") == "int"
    assert _revealed(mypy_report, "# R6") == "bytes"


def test_inline_calls_keep_the_functions_types(mypy_report: str) -> None:
    assert re.fullmatch(r"(typing\.)?Coroutine\[Any, Any, str\]", _revealed(mypy_report, "# R7"))
    assert _revealed(mypy_report, "# R8") == "typed_example.Size"
    assert _revealed(mypy_report, "# R9").startswith("dromos.task.AsyncTask[")


def test_a_batch_tasks_jobs_take_one_item_and_give_one_result(mypy_report: str) -> None:
    assert _revealed(mypy_report, "# R10") == "int"
    assert _revealed(mypy_report, "# R11") == "None"


def test_a_missing_expected_error_would_be_reported(tmp_path: Path) -> None:
    # The mechanism itself: were an expected error absent, mypy would flag the ignore.
    source = tmp_path / "fine.py"
    source.write_text("x: int = 1  # type: ignore[arg-type]\n")
    stdout, _, _ = mypy_api.run(["--strict", "--no-incremental", str(source)])
    assert 'Unused "type: ignore" comment' in stdout
