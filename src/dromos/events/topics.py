"""Topics and the patterns that subscribe to them.

A topic is dot-separated words (``orders.created``, ``dromos.job.succeeded``); it is the
event's CloudEvents ``type``. A pattern matches topics word by word, as AMQP topic exchanges
do (so RabbitMQ can route them natively): ``*`` is exactly one word, ``#`` is zero or more
words. ``orders.*`` matches ``orders.created`` but not ``orders.eu.created``; ``orders.#``
matches both, and ``orders`` itself; ``#`` matches everything.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from dromos.errors import ConfigurationError

__all__ = ["check_pattern", "check_topic", "matches", "matches_any"]

_WORD = re.compile(r"[A-Za-z0-9_\-]+\Z")
MAX_TOPIC = 255


def check_topic(topic: str) -> str:
    """``topic`` if it is dot-separated words (letters, digits, ``_``, ``-``); else raise."""
    if not isinstance(topic, str) or not topic or len(topic) > MAX_TOPIC:
        raise ConfigurationError(f"topic must be 1 to {MAX_TOPIC} characters, got {topic!r}")
    if not all(_WORD.match(word) for word in topic.split(".")):
        raise ConfigurationError(
            f"topic {topic!r}: dot-separated words of letters, digits, '_' and '-' only"
        )
    return topic


def check_pattern(pattern: str) -> str:
    """``pattern`` if it is a topic whose words may also be ``*`` or ``#``; else raise."""
    if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_TOPIC:
        raise ConfigurationError(f"pattern must be 1 to {MAX_TOPIC} characters, got {pattern!r}")
    for word in pattern.split("."):
        if word not in ("*", "#") and not _WORD.match(word):
            raise ConfigurationError(
                f"pattern {pattern!r}: words, '*' (one word) or '#' (any number of words)"
            )
    return pattern


@functools.lru_cache(maxsize=4096)
def matches(pattern: str, topic: str) -> bool:
    """True if ``topic`` is one of the topics ``pattern`` names."""
    return _match(tuple(pattern.split(".")), tuple(topic.split(".")))


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[k:]) for k in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])


def matches_any(patterns: Iterable[str], topic: str) -> bool:
    """True if one of ``patterns`` matches ``topic``."""
    return any(matches(p, topic) for p in patterns)
