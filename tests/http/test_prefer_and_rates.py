"""The two small parsers and the token bucket, without a server."""

from __future__ import annotations

import pytest

from dromos.http.prefer import Preferences, parse_prefer
from dromos.http.ratelimit import Rate, RateLimiter, parse_rate


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], Preferences()),
        (["wait=5"], Preferences(wait=5)),
        (["respond-async"], Preferences(respond_async=True)),
        (["respond-async, wait=10"], Preferences(wait=10, respond_async=True)),
        (["wait=600"], Preferences(wait=60)),  # capped
        (["WAIT=3; foo=bar"], Preferences(wait=3)),  # names are case-insensitive; params ignored
        (["wait = 7 ; q=1 , respond-async"], Preferences(wait=7, respond_async=True)),
        (["wait=1", "wait=9"], Preferences(wait=1)),  # the first one counts
        (['return=minimal; x="a,b", wait=2'], Preferences(wait=2)),  # a comma in quotes
        (["wait=abc"], Preferences()),  # malformed values are ignored
        (["wait=-1"], Preferences()),
        (["wait=1.5"], Preferences()),  # delta-seconds are whole
        ([",,,handling=lenient"], Preferences()),
        (['"unbalanced, wait=4'], Preferences(wait=4)),
    ],
)
def test_prefer_headers(headers: list[str], expected: Preferences) -> None:
    assert parse_prefer(headers, max_wait=60) == expected


def test_preference_applied_names_what_was_done() -> None:
    assert Preferences(wait=5).applied(5) == "wait=5"
    assert Preferences(respond_async=True).applied(None) == "respond-async"
    assert Preferences(wait=5, respond_async=True).applied(5) == "respond-async, wait=5"
    assert Preferences().applied(None) is None


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("100/s", Rate(100, 1)),
        ("6000/min", Rate(6000, 60)),
        ("10/5s", Rate(10, 5)),
        ("1000 / hour", Rate(1000, 3600)),
        ("2.5/second", Rate(2.5, 1)),
    ],
)
def test_rates(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


def test_a_bucket_allows_a_burst_then_the_rate() -> None:
    limiter = RateLimiter(Rate(3, 1))
    assert [limiter.take("a", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a", now=100.0)
    assert wait == pytest.approx(1 / 3)
    assert limiter.take("b", now=100.0) == 0.0  # another caller, another bucket
    assert limiter.take("a", now=100.34) == 0.0  # a third of a second: one token back
    assert limiter.take("a", now=100.34) > 0
    assert RateLimiter.retry_after(0.2) == "1"
    assert RateLimiter.retry_after(2.1) == "3"


def test_full_buckets_are_forgotten_when_there_are_many() -> None:
    limiter = RateLimiter(Rate(10, 1), max_callers=100)
    for i in range(100):
        limiter.take(f"client-{i}", now=0.0)
    limiter.take("late", now=5.0)  # the 101st: the others have long refilled
    assert list(limiter._buckets) == ["late"]
