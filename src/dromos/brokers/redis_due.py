"""Due times as the Redis scripts take them (jobs, the event bus, event parking).

A time the client computed is Unix ms, rounded up so that nothing comes due before its time.
A wait the client computed is sent as ``+<ms>``, and the script adds it to the server's clock
(``TIME``): a worker whose clock is off then moves no retry (RELIABILITY #13). Each script
file reads both with its ``due(value, now)``.
"""

from __future__ import annotations

import math

__all__ = ["due_arg", "due_ms"]


def due_ms(moment: float) -> int:
    """A due time in ms, rounded up: never due before its time."""
    return math.ceil(moment * 1000)


def due_arg(at: float | None, wait: float | None) -> str | int:
    """``+<ms>`` for a wait (it decides when given), else ``at`` in Unix ms, else ''."""
    if wait is not None:
        return f"+{math.ceil(max(wait, 0.0) * 1000)}"
    return "" if at is None else due_ms(at)
