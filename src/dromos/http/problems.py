"""Every error the gateway answers has one shape: RFC 9457 problem details.

``application/problem+json`` with ``type`` (a URN naming the kind of problem, stable for
clients to branch on), ``title`` (the same words for every problem of that type), ``status``,
``detail`` (this occurrence, saying what to do next) and, for 422, ``errors``: one entry per
field that does not fit, with its ``field`` (dotted path), ``loc`` (the path as a list) and
``reason``. Routes raise :class:`ProblemError`; the handlers installed by
:func:`install_handlers` turn it, Starlette's and FastAPI's own errors (404 for an unknown
path, 405, invalid query parameters), a broker that cannot be reached (503) and any bug (500)
into that shape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from dromos.errors import BrokerError
from dromos.http.responses import FieldError, Problem

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "ProblemError",
    "field_errors",
    "install_handlers",
    "problem_response",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"

log = logging.getLogger("dromos.http")

#: status -> (type slug, title) for the problems that have no more specific kind.
_GENERIC = {
    400: ("bad-request", "The request is malformed"),
    401: ("unauthorized", "An API key is needed"),
    403: ("forbidden", "The API key may not do this"),
    404: ("not-found", "Nothing is here"),
    405: ("method-not-allowed", "This method is not allowed here"),
    409: ("conflict", "The job is not in a state that allows this"),
    413: ("payload-too-large", "The request body is too large"),
    415: ("unsupported-media-type", "The request body must be JSON"),
    422: ("invalid-input", "The input does not fit"),
    429: ("rate-limited", "Too many requests"),
    500: ("internal", "The gateway failed"),
    503: ("unavailable", "The broker cannot be reached"),
}


def problem_type(slug: str) -> str:
    """The ``type`` URI of a kind of problem: ``urn:dromos:problem:<slug>``."""
    return f"urn:dromos:problem:{slug}"


class ProblemError(Exception):
    """Raised by routes: answered as a problem document with ``status`` and ``headers``."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        errors: list[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        generic_slug, generic_title = _GENERIC.get(status, ("error", "The request failed"))
        self.status = status
        self.detail = detail
        self.slug = slug or generic_slug
        self.title = title or generic_title
        self.errors = errors
        self.headers = dict(headers or {})
        super().__init__(detail)

    def response(self, instance: str | None = None) -> Response:
        """This problem as a response."""
        body = Problem(
            type=problem_type(self.slug),
            title=self.title,
            status=self.status,
            detail=self.detail,
            instance=instance,
            errors=self.errors,
        )
        return Response(
            msgspec.json.encode(body),
            status_code=self.status,
            headers=self.headers,
            media_type=PROBLEM_MEDIA_TYPE,
        )


def problem_response(status: int, detail: str, **kwargs: Any) -> Response:
    """A problem response without raising (for middleware, which has no handlers)."""
    return ProblemError(status, detail, **kwargs).response()


def field_errors(
    errors: Iterable[Mapping[str, Any]], whole: str = "(arguments)"
) -> list[FieldError]:
    """pydantic-style errors (``loc``, ``msg``, ``type``) as the problem's ``errors`` entries.

    An error about no field in particular (a missing argument, a body of the wrong type) is
    named ``whole``.
    """
    out = []
    for e in errors:
        loc: list[str | int] = [p if isinstance(p, int) else str(p) for p in e.get("loc", ())]
        out.append(
            FieldError(
                field=".".join(str(p) for p in loc) or whole,
                loc=loc,
                reason=str(e.get("msg", "invalid")),
                type=str(e.get("type", "invalid")),
            )
        )
    return out


def _instance(request: Request) -> str:
    return request.url.path  # the whole path, the mount's prefix included


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return exc.response(_instance(request))


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else "the request failed"
    if exc.status_code == 404:
        detail = f"no route for {request.method} {request.url.path}: see /openapi.json"
    problem = ProblemError(exc.status_code, detail, headers=exc.headers)
    return problem.response(_instance(request))


async def _on_invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = field_errors(exc.errors())
    names = ", ".join(e.field for e in errors)
    problem = ProblemError(422, f"invalid request parameters: {names}", errors=errors)
    return problem.response(_instance(request))


async def _on_broker_error(request: Request, exc: Exception) -> Response:
    # The broker's own words (a path, a host) are for the operator's log, not the client.
    log.warning("%s %s: the broker failed: %s", request.method, request.url.path, exc)
    problem = ProblemError(
        503,
        "the broker cannot be reached; try again later",
        headers={"Retry-After": "5"},
    )
    return problem.response(_instance(request))


async def _on_bug(request: Request, exc: Exception) -> Response:
    # Starlette logs the exception itself after this answer is sent.
    problem = ProblemError(500, "the gateway failed; the error is in its log", slug="internal")
    return problem.response(_instance(request))


def install_handlers(api: FastAPI) -> None:
    """Answer every error of ``api`` as a problem document."""
    api.add_exception_handler(ProblemError, _on_problem)
    api.add_exception_handler(StarletteHTTPException, _on_http_error)
    api.add_exception_handler(RequestValidationError, _on_invalid_request)
    api.add_exception_handler(BrokerError, _on_broker_error)
    api.add_exception_handler(Exception, _on_bug)
