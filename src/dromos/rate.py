"""Rate limits: ``@app.task(rate_limit="100/s")``, across every worker, through the broker.

A limit of N per period means that no window of one period, anywhere in time, holds more than
N starts of the task (or of the task for one key, with ``rate_limit_key=``). The broker keeps
the starts of each key as a sliding-window log, and a worker *reserves* the next allowed start
with one call (:meth:`dromos.Broker.throttle`): the answer is how long to wait, and the slot is
the caller's from then on. Reservations, rather than "denied, ask again", keep a crowd of
waiting jobs from asking the broker in a loop: each asks once, then sleeps until its turn.

A reservation that finds the window full goes after every slot already handed out, at
``max(now, last, the limit-th newest + period)``; this keeps every window at or under the
limit (see :func:`next_start`, the one rule every backend implements).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dromos.errors import ConfigurationError

__all__ = ["RateLimit", "key_function", "next_start", "parse_rate", "split_rate"]

_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
}  # fmt: skip
_FORM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*(?:\.\d+)?)\s*([a-z]+)\s*$")
_EXAMPLES = "e.g. '100/s', '5/m', '1000/hour', '20/10s'"


def split_rate(text: str) -> tuple[float, float]:
    """``"COUNT/PERIOD"`` as (count, seconds): ``"100/s"``, ``"6000/min"``, ``"10/5s"``,
    ``"1000/hour"``, ``"10/d"``. The one reader of rates (tasks' and the HTTP gateway's)."""
    match = _FORM.match(text.lower())
    unit = _UNITS.get(match.group(3)) if match else None
    if match is None or unit is None:
        raise ConfigurationError(f"rate limit {text!r}: write COUNT/PERIOD, {_EXAMPLES}")
    count, period = float(match.group(1)), float(match.group(2) or 1) * unit
    if count <= 0 or period <= 0:
        raise ConfigurationError(f"rate limit {text!r}: the count and the period must be > 0")
    return count, period


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count`` starts in any window of ``period`` seconds."""

    count: int
    period: float

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"


def parse_rate(text: str) -> RateLimit:
    """A task's ``rate_limit=``: :func:`split_rate`'s forms, with a whole count of starts."""
    count, period = split_rate(text)
    if not count.is_integer():
        raise ConfigurationError(f"rate limit {text!r}: a task's count of starts is a whole number")
    return RateLimit(int(count), period)


def next_start(now: float, starts: Sequence[float], limit: int, period: float) -> float:
    """When the next start may be, given the ``starts`` of the last ``period`` and later
    (sorted, oldest first; reservations may lie in the future).

    Fewer than ``limit`` of them: now (no window can overflow). Else after the newest, and
    one period after the ``limit``-th newest: every window holding the new start then holds
    at most ``limit - 1`` of the others.
    """
    if len(starts) < limit:
        return now
    return max(now, starts[-1], starts[-limit] + period)


def key_function(
    task: str, func: Callable[..., Any], key: str | Callable[..., Any]
) -> Callable[[Sequence[Any], dict[str, Any]], str]:
    """What ``rate_limit_key=`` names, as a function of one job's (loaded) arguments: a
    parameter's name (its value is the key), or a function called with the job's arguments."""
    if callable(key):
        return lambda args, kwargs: str(key(*args, **kwargs))
    signature = inspect.signature(func)
    if key not in signature.parameters:
        names = ", ".join(signature.parameters) or "none"
        raise ConfigurationError(
            f"task {task!r}: rate_limit_key={key!r} names no parameter (parameters: {names})"
        )

    def by_name(args: Sequence[Any], kwargs: dict[str, Any]) -> str:
        bound = signature.bind_partial(*args, **kwargs)
        bound.apply_defaults()
        return str(bound.arguments.get(key))

    return by_name
