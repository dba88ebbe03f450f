"""The error records of failed runs: always valid UTF-8, never megabytes, never raising."""

from __future__ import annotations

import os

from dromos._failures import MESSAGE_LIMIT, error_of


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_a_huge_message_is_cut_saying_how_much_was_left_out() -> None:
    # A response body in an exception: stored with every attempt, carried to every waiter.
    error = error_of(_raised(ValueError("x" * 1_000_000)), attempt=1)
    assert error.message.startswith("x" * MESSAGE_LIMIT)
    assert error.message.endswith(f"({1_000_000 - MESSAGE_LIMIT:,} more characters)")
    assert len(error.message) < MESSAGE_LIMIT + 100


def test_text_that_is_not_utf8_is_escaped_everywhere_in_the_record() -> None:
    name = os.fsdecode(b"report-\xff.csv")
    error = error_of(_raised(FileNotFoundError(2, "No such file", name)), attempt=2)
    for text in (error.message, error.traceback or "", error.type):
        text.encode()  # valid UTF-8
    assert "report-\\udcff.csv" in error.message
    assert (error.type, error.attempt) == ("FileNotFoundError", 2)


def test_an_exception_whose_str_raises_is_described() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    error = error_of(_raised(Unprintable()), attempt=1)
    assert error.message == "<Unprintable: its str() raised RuntimeError>"
    assert error.traceback is not None
