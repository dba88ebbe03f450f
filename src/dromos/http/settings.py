"""The gateway's settings: ``gateway(...)`` arguments, overridden by ``DROMOS_*`` variables.

As everywhere in dromos, an operator's environment wins over the code's arguments:
``DROMOS_API_KEYS`` (``key1:enqueue+read,key2:admin``; see :mod:`dromos.http.auth`) and
``DROMOS_RATE_LIMIT`` (``100/s``; see :mod:`dromos.http.ratelimit`). An empty variable counts
as unset.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dromos.errors import ConfigurationError
from dromos.http.auth import KeyRing, Scope, parse_api_keys
from dromos.http.ratelimit import Rate, parse_rate

__all__ = ["DEFAULT_MAX_BODY_SIZE", "DEFAULT_MAX_WAIT", "ApiKeys", "GatewaySettings"]

DEFAULT_MAX_BODY_SIZE = 1 << 20  # 1 MiB
DEFAULT_MAX_WAIT = 60

#: What ``api_keys=`` takes: the environment's text format, or a mapping of key to scopes
#: (``{"k...": ["enqueue", "read"]}`` or ``{"k...": "enqueue+read"}``).
ApiKeys = str | Mapping[str, Iterable[Scope | str] | str]


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Everything the routes need to know besides the app."""

    keys: KeyRing
    """The API keys (empty: no key needed)."""
    rate: Rate | None
    """Requests per caller, or ``None`` for no limit."""
    max_body_size: int
    """Largest request body, in bytes (413 past it)."""
    max_wait: int
    """Cap on ``Prefer: wait=N``, in seconds."""
    ready_timeout: float
    """Seconds ``/readyz`` gives the broker to answer."""

    @classmethod
    def resolve(
        cls,
        *,
        api_keys: ApiKeys | None,
        rate_limit: str | Rate | None,
        max_body_size: int,
        max_wait: int,
        ready_timeout: float,
    ) -> GatewaySettings:
        """Settings from ``gateway()``'s arguments and the environment (which wins)."""
        env_keys = os.environ.get("DROMOS_API_KEYS", "").strip()
        keys_source: ApiKeys | None = env_keys or api_keys
        keys = KeyRing(parse_api_keys(keys_source) if isinstance(keys_source, str) else keys_source)
        env_rate = os.environ.get("DROMOS_RATE_LIMIT", "").strip()
        rate_source = env_rate or rate_limit
        rate = parse_rate(rate_source) if isinstance(rate_source, str) else rate_source
        if max_body_size < 1:
            raise ConfigurationError("max_body_size must be a positive number of bytes")
        if max_wait < 0:
            raise ConfigurationError("max_wait must be 0 or more seconds")
        if ready_timeout <= 0:
            raise ConfigurationError("ready_timeout must be a positive number of seconds")
        return cls(keys, rate, max_body_size, max_wait, ready_timeout)
