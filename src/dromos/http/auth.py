"""API keys and their scopes: who may call the gateway, and what they may do.

Keys come from ``gateway(api_keys=...)`` or ``$DROMOS_API_KEYS`` in one format::

    key1:enqueue+read,key2:admin,key3

Each entry is a key, then optionally ``:`` and scopes joined by ``+``; a key without scopes
is an ``admin`` key. Scopes:

- ``read``: look at jobs and queues (``GET``, the event stream);
- ``enqueue``: submit jobs and cancel them (a producer may take back what it asked for);
- ``admin``: everything, including replaying dead letters (an operator's decision, after
  the cause of the failures was fixed).

Only the SHA-256 digest of each key is kept in memory: a heap dump or a debugger shows no
key. A presented key is hashed and compared with every known digest through
``hmac.compare_digest``, with no early exit, so the time taken does not tell how close a guess
came or which entry matched.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dromos.errors import ConfigurationError

__all__ = ["MIN_KEY_LENGTH", "KeyRing", "Principal", "Scope", "parse_api_keys"]

#: Shorter keys are refused: they could be guessed within the rate limit's patience.
MIN_KEY_LENGTH = 16


class Scope(enum.StrEnum):
    """What a key may do; ``admin`` implies the others."""

    READ = "read"  # GET jobs, queues, the event stream
    ENQUEUE = "enqueue"  # POST jobs, DELETE (cancel) jobs
    PUBLISH = "publish"  # POST events
    ADMIN = "admin"  # all of the above, and replaying dead letters


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a short name for logs and rate limits, and its scopes."""

    name: str
    """``key-`` and the first 8 hex digits of the key's digest: safe to log."""
    scopes: frozenset[Scope]

    def allows(self, scope: Scope) -> bool:
        """True if this key may act within ``scope``."""
        return Scope.ADMIN in self.scopes or scope in self.scopes


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _scopes(key_hint: str, names: Iterable[str]) -> frozenset[Scope]:
    scopes = set()
    for name in names:
        try:
            scopes.add(Scope(name.strip().lower()))
        except ValueError:
            raise ConfigurationError(
                f"API key {key_hint}: unknown scope {name.strip()!r}; use read, enqueue, "
                "publish or admin (joined by +, e.g. key:enqueue+read)"
            ) from None
    return frozenset(scopes) or frozenset({Scope.ADMIN})


def parse_api_keys(text: str) -> dict[str, frozenset[Scope]]:
    """``key1:enqueue+read,key2:admin,key3`` as a mapping of key to scopes (bare key: admin)."""
    keys: dict[str, frozenset[Scope]] = {}
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        key, _, scopes = entry.partition(":")
        key = key.strip()
        names = [s for s in scopes.split("+") if s.strip()] if scopes else []
        keys[key] = _scopes(_hint(key), names)
    return keys


def _hint(key: str) -> str:
    # Never the key itself in an error message: it ends up in logs.
    return f"#{_digest(key).hex()[:8]} ({len(key)} characters)"


class KeyRing:
    """The configured keys, as digests; empty when the gateway needs no key."""

    __slots__ = ("_entries",)

    def __init__(self, keys: Mapping[str, Iterable[Scope | str] | str] | None = None) -> None:
        entries: list[tuple[bytes, Principal]] = []
        for key, scopes in (keys or {}).items():
            if len(key) < MIN_KEY_LENGTH:
                raise ConfigurationError(
                    f"API key {_hint(key)} is too short: use at least {MIN_KEY_LENGTH} random "
                    "characters, e.g. python -c 'import secrets; print(secrets.token_urlsafe())'"
                )
            if any(c in key for c in ",: \t") or not key.isprintable():
                raise ConfigurationError(
                    f"API key {_hint(key)} contains a comma, colon, space or control character; "
                    "use letters, digits, '-' and '_'"
                )
            names = scopes.split("+") if isinstance(scopes, str) else [str(s) for s in scopes]
            digest = _digest(key)
            entries.append(
                (digest, Principal(f"key-{digest.hex()[:8]}", _scopes(_hint(key), names)))
            )
        self._entries = tuple(entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, key: str) -> Principal | None:
        """The principal whose key this is, or ``None``; constant time over all entries."""
        digest = _digest(key)
        found: Principal | None = None
        for known, principal in self._entries:
            if hmac.compare_digest(known, digest):
                found = principal
        return found
