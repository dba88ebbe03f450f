"""RabbitMQ queue names from dromos names: always accepted by the client, never two alike."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dromos.brokers.rabbitmq_url import AmqpNames, amqp_name
from dromos.errors import ConfigurationError

# pamqp's check of a queue name (pamqp.constants.DOMAIN_REGEX["queue-name"])
_CLIENT_ACCEPTS = re.compile(r"^[a-zA-Z0-9-_.:@#,/+ ]*$")


def _unescape(name: str) -> str:
    """Undo amqp_name: each run of +HH is UTF-8 bytes."""
    return re.sub(
        r"(?:\+[0-9A-F]{2})+",
        lambda m: bytes.fromhex(m[0].replace("+", "")).decode(),
        name,
    )


@pytest.mark.parametrize(
    ("queue", "name"),
    [
        ("default", "default"),
        ("reports/daily, eu", "reports/daily, eu"),
        ("émails", "+C3+A9mails"),
        ("a+b", "a+2Bb"),
        ("exports *", "exports +2A"),
    ],
)
def test_names_the_client_refuses_are_escaped(queue: str, name: str) -> None:
    assert amqp_name(queue) == name


@given(st.text(max_size=40))
def test_every_name_is_accepted_by_the_client_and_can_be_read_back(queue: str) -> None:
    name = amqp_name(queue)
    assert _CLIENT_ACCEPTS.fullmatch(name)
    assert _unescape(name) == queue  # so two queues never share a RabbitMQ queue


def test_a_name_over_255_bytes_once_escaped_is_refused() -> None:
    names = AmqpNames("dromos")
    names.check("é" * 35)  # 210 bytes escaped, with the prefix and band: under 255
    with pytest.raises(ConfigurationError, match="too long for RabbitMQ"):
        names.check("é" * 45)
