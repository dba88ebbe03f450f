"""Broker backends, chosen by URL scheme.

``create_broker`` is the one place that maps a URL to a backend; the rest of dromos only sees
the :class:`~dromos.brokers.base.Broker` interface.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import msgspec

from dromos.brokers.base import Broker, BrokerOptions
from dromos.errors import ConfigurationError

__all__ = ["NO_BACKEND", "Broker", "BrokerOptions", "create_broker", "keeps_status"]

_NO_STATUS = ("amqp", "amqps")  # brokers that keep no job status: they need a backend=
NO_BACKEND = (
    "the RabbitMQ broker keeps no job status: give it a state store, "
    'App(..., backend="redis://..." | "postgresql://..." | "sqlite:///path.db") '
    "or DROMOS_BACKEND=...; status, progress, results, retries and schedules live there"
)


def keeps_status(url: str) -> bool:
    """Whether the broker a URL names keeps job status itself (else it needs a backend)."""
    return urlsplit(url).scheme not in _NO_STATUS


def create_broker(
    url: str, options: BrokerOptions | None = None, backend: str | None = None
) -> Broker:
    """Make the broker a URL names: ``sqlite:///path``, ``memory://``, ``redis://...``,
    ``postgresql://...``, or ``amqp://...`` with the state store ``backend`` names."""
    scheme = urlsplit(url).scheme
    if scheme in _NO_STATUS:
        if backend is None:
            raise ConfigurationError(NO_BACKEND)
        if not keeps_status(backend):
            raise ConfigurationError(f"backend={backend!r} keeps no job status itself")
        try:
            from dromos.brokers.rabbitmq import RabbitMQBroker
        except ImportError as exc:
            raise ConfigurationError(
                f"the RabbitMQ broker needs aio-pika: pip install 'dromos[rabbitmq]' ({exc})"
            ) from exc
        opts = options or BrokerOptions()
        store = create_broker(backend, msgspec.structs.replace(opts, relay=True))
        return RabbitMQBroker(url, store, opts)
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
    raise ConfigurationError(
        f"unknown broker URL {url!r}: use sqlite:///path.db (the default) or memory://"
    )
