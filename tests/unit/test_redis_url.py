"""The Redis URL's own options (``prefix=``, ``retries=``) are dromos's: checked when the
broker is made, and not handed to redis-py, which refuses query options it does not know."""

from __future__ import annotations

import pytest

from dromos.brokers.redis import RedisBroker
from dromos.brokers.redis_retry import RETRIES, async_retry
from dromos.errors import ConfigurationError


def test_dromos_options_are_taken_out_of_the_url_and_the_rest_is_left_to_redis_py() -> None:
    broker = RedisBroker("redis://127.0.0.1:1/0?prefix=shop&retries=2&socket_timeout=5")
    assert broker.prefix == "shop"
    assert broker.url == "redis://127.0.0.1:1/0?socket_timeout=5"


@pytest.mark.parametrize("value", ["-1", "two", "1.5", "²"])
def test_retries_must_be_a_whole_number(value: str) -> None:
    with pytest.raises(ConfigurationError, match="retries= must be a whole number >= 0"):
        RedisBroker(f"redis://127.0.0.1:1/0?retries={value}")


def test_the_default_retries_back_off_for_seconds_not_minutes() -> None:
    # 8 retries, from 0.1 s doubling to at most 2 s apart: a restart of a few seconds is
    # ridden out; a server that stays away is an error within about 10 s.
    retry = async_retry()
    waits = [retry._backoff.compute(n) for n in range(1, RETRIES + 1)]
    assert RETRIES == 8
    assert 5.0 < sum(waits) < 12.0
