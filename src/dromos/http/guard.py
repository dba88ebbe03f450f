"""The check in front of every ``/v1`` route: rate limit, then API key, then scope.

The rate limit comes first, keyed by the key when it is a known one and by the client's
address otherwise, so that guessing keys is rate-limited too. Then, when keys are configured:
no key is 401, an unknown key 401 (both with ``WWW-Authenticate``, RFC 6750), a key outside
the route's scope 403. A key is read from ``Authorization: Bearer <key>`` or, failing that,
``X-API-Key``. When no key is configured, every caller may do everything (``dromos serve``
then listens on the loopback address only).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from dromos.http.auth import KeyRing, Principal, Scope
from dromos.http.problems import ProblemError
from dromos.http.ratelimit import RateLimiter

__all__ = ["Guard"]

_REALM = 'Bearer realm="dromos"'

# Declared for the OpenAPI document (clients learn the two ways to send a key); the key is
# read by Guard itself, which answers in the gateway's problem format.
_bearer = HTTPBearer(
    auto_error=False, scheme_name="bearerAuth", description="Authorization: Bearer <API key>"
)
_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name="apiKeyHeader", description="X-API-Key: <key>"
)

Check = Callable[..., Awaitable[Principal | None]]


def presented_key(request: Request) -> str | None:
    """The key a request carries: ``Authorization: Bearer`` first, then ``X-API-Key``."""
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


class Guard:
    """Makes the FastAPI dependency that guards one route with one scope."""

    def __init__(self, keys: KeyRing, limiter: RateLimiter | None) -> None:
        self.keys = keys
        self.limiter = limiter

    def check(self, request: Request, scope: Scope) -> Principal | None:
        """Rate limit, authenticate and authorize ``request``; raise a problem if refused."""
        key = presented_key(request) if self.keys else None
        principal = self.keys.authenticate(key) if key is not None else None
        if self.limiter is not None:
            client = request.client.host if request.client else "unknown"
            wait = self.limiter.take(principal.name if principal else f"client-{client}")
            if wait > 0:
                raise ProblemError(
                    429,
                    f"over the rate limit of {self.limiter.rate}; retry after the time in "
                    "Retry-After",
                    headers={"Retry-After": RateLimiter.retry_after(wait)},
                )
        if not self.keys:
            return None
        if key is None:
            raise ProblemError(
                401,
                "send an API key: Authorization: Bearer <key>, or X-API-Key: <key>",
                headers={"WWW-Authenticate": _REALM},
            )
        if principal is None:
            raise ProblemError(
                401,
                "the API key is not valid; check it, or ask for one",
                slug="invalid-key",
                title="The API key is not valid",
                headers={"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
            )
        if not principal.allows(scope):
            held = "+".join(sorted(principal.scopes))
            raise ProblemError(
                403,
                f"this key has the scope(s) {held}; this needs {scope.value} (or admin)",
                headers={
                    "WWW-Authenticate": f'{_REALM}, error="insufficient_scope", scope="{scope}"'
                },
            )
        return principal

    def require(self, scope: Scope) -> Check:
        """The dependency for a route that needs ``scope`` (admin implies every scope)."""
        if not self.keys:

            async def open_check(request: Request) -> Principal | None:
                return self.check(request, scope)

            return open_check

        async def keyed_check(
            request: Request,
            _bearer_doc: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
            _header_doc: Annotated[str | None, Security(_header)],
        ) -> Principal | None:
            return self.check(request, scope)

        return keyed_check
