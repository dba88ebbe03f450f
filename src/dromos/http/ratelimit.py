"""A token bucket per caller: bursts up to the limit, then a steady rate.

``"100/s"`` gives each caller (each API key; each client address when no key is needed) a
bucket of 100 tokens that refills at 100 per second: a quiet caller may send 100 requests at
once, a busy one gets 100 a second on average. A request finding the bucket empty is answered
429 with ``Retry-After``: the whole seconds until a token is back.

Buckets live in this process's memory: behind several gateway processes each holds its own,
so the effective limit is the sum. Buckets left full are forgotten once there are many, so a
stream of one-off clients cannot grow memory without bound.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from dromos.rate import split_rate

__all__ = ["Rate", "RateLimiter", "parse_rate"]


@dataclass(frozen=True, slots=True)
class Rate:
    """``tokens`` requests per ``period`` seconds; also the largest burst."""

    tokens: float
    period: float

    def __str__(self) -> str:
        return f"{self.tokens:g}/{self.period:g}s"


def parse_rate(text: str) -> Rate:
    """``"100/s"``, ``"6000/min"``, ``"10/5s"``, ``"1000/hour"`` as a :class:`Rate`."""
    return Rate(*split_rate(text))


class RateLimiter:
    """Token buckets keyed by caller identity; thread-safe (a lock held for microseconds)."""

    __slots__ = ("_buckets", "_lock", "max_callers", "rate")

    def __init__(self, rate: Rate, *, max_callers: int = 10_000) -> None:
        self.rate = rate
        self.max_callers = max_callers
        self._lock = threading.Lock()
        # identity -> (tokens left, monotonic time they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, identity: str, now: float | None = None) -> float:
        """Spend one token of ``identity``'s bucket: 0.0 if allowed, else seconds to wait."""
        now = time.monotonic() if now is None else now
        capacity, per_second = self.rate.tokens, self.rate.tokens / self.rate.period
        with self._lock:
            tokens, then = self._buckets.get(identity, (capacity, now))
            tokens = min(capacity, tokens + (now - then) * per_second)
            if tokens >= 1.0:
                self._buckets[identity] = (tokens - 1.0, now)
                if len(self._buckets) > self.max_callers:
                    self._forget_full(now)
                return 0.0
            self._buckets[identity] = (tokens, now)
            return (1.0 - tokens) / per_second

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: forgetting them changes nothing."""
        full_after = self.rate.period
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}

    @staticmethod
    def retry_after(wait: float) -> str:
        """``Retry-After`` for a wait: whole seconds, at least 1."""
        return str(max(1, math.ceil(wait)))
