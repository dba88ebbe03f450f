"""Retries for the Redis clients: what may pass is retried, a refusal is not.

redis-py counts a wrong password (``AuthenticationError``) and a missing permission
(``AuthorizationError``) as connection errors, so its ``Retry`` retried them with backoff for
about nine seconds before the caller learned why. These subclasses let them through at once:
the caller gets the server's word (a :class:`~dromos.errors.BrokerError` naming the server)
while a lost connection or a timeout is still retried.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio.retry import Retry  # not redis.retry.Retry: it never retries a coroutine
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, AuthorizationError
from redis.retry import Retry as SyncRetry

__all__ = ["RETRIES", "async_retry", "sync_retry"]

T = TypeVar("T")
_REFUSALS = (AuthenticationError, AuthorizationError)
RETRIES = 8  # the default; with backoff from 0.1 s doubling to 2 s: about 9 s in all


class _Refused(Exception):
    """Carries a refusal past Retry (it retries only connection errors and timeouts)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _AsyncRetry(Retry):
    async def call_with_retry(
        self, do: Callable[[], Awaitable[T]], fail: Any, *args: Any, **kwargs: Any
    ) -> T:
        async def once() -> T:
            try:
                return await do()
            except _REFUSALS as error:
                raise _Refused(error) from error

        try:
            return await super().call_with_retry(once, fail, *args, **kwargs)
        except _Refused as refused:
            raise refused.error from None


class _SyncRetry(SyncRetry):
    def call_with_retry(self, do: Callable[[], T], fail: Any, *args: Any, **kwargs: Any) -> T:
        def once() -> T:
            try:
                return do()
            except _REFUSALS as error:
                raise _Refused(error) from error

        try:
            return super().call_with_retry(once, fail, *args, **kwargs)
        except _Refused as refused:
            raise refused.error from None


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=2.0, base=0.05)


def async_retry(retries: int = RETRIES) -> Retry:
    """The asyncio clients' retry: lost connections and timeouts, not refusals."""
    return _AsyncRetry(_backoff(), retries=retries)


def sync_retry(retries: int = RETRIES) -> SyncRetry:
    """The same for the blocking client."""
    return _SyncRetry(_backoff(), retries=retries)
