"""Broker backends, chosen by URL scheme.

``create_broker`` is the one place that maps a URL to a backend; the rest of dromos only sees
the :class:`~dromos.brokers.base.Broker` interface.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from dromos.brokers.base import Broker, BrokerOptions
from dromos.errors import ConfigurationError

__all__ = ["Broker", "BrokerOptions", "create_broker"]

_PLANNED = {
    "amqp": "the RabbitMQ broker",
    "amqps": "the RabbitMQ broker",
}


def create_broker(url: str, options: BrokerOptions | None = None) -> Broker:
    """Make the broker a URL names: ``sqlite:///path``, ``memory://``, ``redis://...``,
    ``postgresql://...``."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from dromos.brokers.sqlite import SQLiteBroker

        return SQLiteBroker(url, options)
    if scheme == "memory":
        from dromos.brokers.memory import MemoryBroker

        return MemoryBroker(options)
    if scheme in ("redis", "rediss"):
        try:
            from dromos.brokers.redis import RedisBroker
        except ImportError as exc:
            raise ConfigurationError(
                f"the Redis broker needs redis-py: pip install 'dromos[redis]' ({exc})"
            ) from exc
        return RedisBroker(url, options)
    if scheme in ("postgresql", "postgres"):
        try:
            from dromos.brokers.postgres import PostgresBroker
        except ImportError as exc:
            raise ConfigurationError(
                "the PostgreSQL broker needs psycopg 3 and psycopg-pool: "
                f"pip install 'dromos[postgres]' ({exc})"
            ) from exc
        return PostgresBroker(url, options)
    if scheme in _PLANNED:
        raise ConfigurationError(
            f"{_PLANNED[scheme]} ({scheme}://) is not available in this version; "
            "use sqlite:///path.db (the default) or memory://"
        )
    raise ConfigurationError(
        f"unknown broker URL {url!r}: use sqlite:///path.db (the default) or memory://"
    )
