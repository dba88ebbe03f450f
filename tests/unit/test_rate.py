"""Rate limits: the written form, and the one rule every broker applies (dromos.rate)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dromos.errors import ConfigurationError
from dromos.rate import RateLimit, key_function, next_start, parse_rate


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("100/s", RateLimit(100, 1.0)),
        ("5/m", RateLimit(5, 60.0)),
        ("1000/h", RateLimit(1000, 3600.0)),
        ("10/d", RateLimit(10, 86400.0)),
        ("20/10s", RateLimit(20, 10.0)),
        ("3 / 0.5 s", RateLimit(3, 0.5)),
        ("7/min", RateLimit(7, 60.0)),
    ],
)
def test_the_written_forms(text: str, limit: RateLimit) -> None:
    assert parse_rate(text) == limit


@pytest.mark.parametrize("text", ["", "100", "fast", "0/s", "10/0s", "10/w", "-1/s", "1.5/s"])
def test_anything_else_is_refused_with_the_forms_it_takes(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"COUNT/PERIOD|must be > 0|whole number"):
        parse_rate(text)


@given(
    limit=st.integers(1, 6),
    asks=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=60),  # gaps between requests
)
def test_reservations_never_put_more_than_the_limit_in_any_window(
    limit: int, asks: list[float]
) -> None:
    period, now, log = 1.0, 1000.0, []
    for gap in asks:
        now += gap
        window = [t for t in log if t > now - period]  # what the brokers keep
        log.append(next_start(now, window, limit, period))
        assert log[-1] >= now
    granted = sorted(log)
    for i, start in enumerate(granted):  # every window that starts at a start
        assert sum(1 for t in granted[i:] if t < start + period) <= limit


def test_a_key_names_a_parameter_or_is_a_function_of_the_arguments() -> None:
    def charge(customer: str, cents: int = 0) -> None: ...

    by_name = key_function("charge", charge, "customer")
    assert by_name(["acme"], {}) == by_name([], {"customer": "acme"}) == "acme"
    by_function = key_function("charge", charge, lambda customer, cents=0: customer.upper())
    assert by_function(["acme", 5], {}) == "ACME"
    with pytest.raises(ConfigurationError, match="names no parameter"):
        key_function("charge", charge, "tenant")
