"""What a failed run or event handler leaves in the store: its error, always writable.

The exception comes from user code, and so does its text. Two kinds of text made the write
of the outcome itself fail, which held back every later outcome of the worker, or crashed the
run's bookkeeping so that the job stayed running until its lease ended:

- a lone surrogate, which JSON cannot carry (``os.fsdecode`` leaves one for a file name that
  is not UTF-8: ``FileNotFoundError: ... 'report-\\udcff.csv'``): written as its escape;
- an exception whose ``__str__`` raises: described by its type instead.
"""

from __future__ import annotations

import traceback

from dromos.job import JobError

__all__ = ["EXITS", "error_of", "stored_text", "utf8", "words"]

TRACEBACK_LIMIT = 16_000  # characters of a traceback kept (its end: where it was raised)
MESSAGE_LIMIT = 16_000  # characters of a message kept (its start), the rest counted
# What user code may raise to end its run that is not an Exception: a failure of that job or
# event like any other. Let through, it ends the worker's event loop and its whole process.
EXITS = (SystemExit, KeyboardInterrupt)


def utf8(text: str) -> str:
    """``text`` as valid UTF-8: each lone surrogate written as its escape (``\\udcff``)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def words(exc: BaseException) -> str:
    """``str(exc)``, or its ``repr`` when that is empty, or a description when either raises;
    cut to :data:`MESSAGE_LIMIT` characters (an error is stored with every attempt, and a
    message of megabytes, a response body say, would be written and carried each time)."""
    try:
        text = str(exc) or repr(exc)
    except Exception as inner:
        return f"<{type(exc).__name__}: its str() raised {type(inner).__name__}>"
    return stored_text(text)


def stored_text(text: str) -> str:
    """``text`` as a message is stored: valid UTF-8, cut to :data:`MESSAGE_LIMIT` characters
    (the rest counted)."""
    if len(text) > MESSAGE_LIMIT:
        text = f"{text[:MESSAGE_LIMIT]}... ({len(text) - MESSAGE_LIMIT:,} more characters)"
    return utf8(text)


def error_of(exc: BaseException, attempt: int, kind: str | None = None) -> JobError:
    """The error record of ``exc`` (``kind`` names it, by default its class), with its
    traceback, every text valid UTF-8."""
    trace = "".join(traceback.format_exception(exc))[-TRACEBACK_LIMIT:]
    return JobError(
        type=utf8(kind or type(exc).__name__),
        message=words(exc),
        traceback=utf8(trace),
        attempt=attempt,
    )
