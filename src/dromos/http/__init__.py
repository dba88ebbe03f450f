"""The HTTP gateway: dromos over HTTP, for services in any language.

``gateway(app)`` is an ASGI application (FastAPI, on Starlette) to serve with any ASGI server
(``dromos serve MODULE:APP`` runs it on uvicorn) or to mount in your own app::

    from dromos.http import gateway
    api = gateway(app, api_keys="k8Jd...:enqueue+read")
    your_starlette_app.mount("/jobs-api", api)

Routes (DESIGN.md §2): ``POST /v1/tasks/{task}/jobs``, ``GET /v1/jobs/{id}``,
``GET /v1/jobs/{id}/events`` (SSE), ``DELETE /v1/jobs/{id}``, ``POST /v1/jobs/{id}/retry``,
``GET /v1/jobs``, ``GET /v1/queues``, ``/healthz``, ``/readyz``; the OpenAPI document at
``/openapi.json`` and its browsable docs at ``/docs``. ``docs/http.md`` has the whole story.

Modules, one concept each: ``settings`` (arguments and ``DROMOS_*``), ``auth`` (keys and
scopes), ``ratelimit`` (token buckets), ``guard`` (both, in front of each route), ``prefer``
(RFC 7240), ``limits`` (the body size), ``problems`` (RFC 9457 errors), ``schemas`` (request
bodies, typed per task), ``responses`` (answers), ``openapi`` (the document), ``enqueue`` and
``routes`` (the routes), ``sse`` (the event stream).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

try:
    from fastapi import FastAPI
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the HTTP gateway needs FastAPI and uvicorn: pip install 'dromos[http]' ({exc})"
    ) from exc
from pydantic import BaseModel

from dromos import __version__
from dromos.app import App
from dromos.http.auth import KeyRing, Principal, Scope, parse_api_keys
from dromos.http.batches import batches_router
from dromos.http.bus import events_router
from dromos.http.enqueue import enqueue_router
from dromos.http.guard import Guard
from dromos.http.limits import BodyLimit
from dromos.http.openapi import build_openapi
from dromos.http.problems import ProblemError, install_handlers
from dromos.http.ratelimit import Rate, RateLimiter, parse_rate
from dromos.http.routes import health_router, jobs_router
from dromos.http.schemas import task_request_models
from dromos.http.settings import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_WAIT,
    ApiKeys,
    GatewaySettings,
)

__all__ = [
    "Gateway",
    "GatewaySettings",
    "KeyRing",
    "Principal",
    "ProblemError",
    "Rate",
    "Scope",
    "gateway",
    "parse_api_keys",
    "parse_rate",
]

_DESCRIPTION = """\
Background jobs over HTTP. Submit a job with `POST /v1/tasks/{task}/jobs` and either poll
`Location` (202 Accepted) or ask `Prefer: wait=N` to get the result in the same response
(200). Errors are RFC 9457 problem details (`application/problem+json`).
"""


class Gateway(FastAPI):
    """The gateway's ASGI app: a FastAPI app that knows its dromos app and settings."""

    def __init__(
        self,
        app: App,
        settings: GatewaySettings,
        task_models: dict[str, type[BaseModel]],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dromos_app = app
        self.settings = settings
        self.task_models = task_models

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document, with each task's typed body and the problem format."""
        if self.openapi_schema is None:
            self.openapi_schema = build_openapi(
                title=self.title,
                version=self.version,
                description=self.description,
                routes=self.routes,
                task_models=self.task_models,
                keys=bool(self.settings.keys),
                rate_limited=self.settings.rate is not None,
            )
        return self.openapi_schema


def gateway(
    app: App,
    *,
    api_keys: ApiKeys | None = None,
    rate_limit: str | Rate | None = None,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    max_wait: int = DEFAULT_MAX_WAIT,
    ready_timeout: float = 2.0,
    docs: bool = True,
    title: str | None = None,
) -> Gateway:
    """The HTTP gateway of ``app``, an ASGI application.

    ``api_keys``: ``"key1:enqueue+read,key2:admin"`` or ``{"key": ["enqueue", "read"]}``
    (``$DROMOS_API_KEYS`` wins); none means no key is asked for. ``rate_limit``: requests per
    caller such as ``"100/s"`` (``$DROMOS_RATE_LIMIT`` wins); none means no limit.
    ``max_body_size``: bytes (413 past it). ``max_wait``: the cap on ``Prefer: wait=N``.
    ``ready_timeout``: seconds ``/readyz`` gives the broker. ``docs``: serve
    ``/openapi.json`` and ``/docs``.

    Tasks registered before this call get a typed route each; later ones are served by the
    general route. On shutdown (the ASGI lifespan) the app's broker connection is closed;
    when mounted in another app, whose lifespan runs instead, close it there
    (``await app.aclose()``).
    """
    settings = GatewaySettings.resolve(
        api_keys=api_keys,
        rate_limit=rate_limit,
        max_body_size=max_body_size,
        max_wait=max_wait,
        ready_timeout=ready_timeout,
    )
    limiter = RateLimiter(settings.rate) if settings.rate is not None else None
    guard = Guard(settings.keys, limiter)
    task_models = task_request_models(app.tasks)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await app.aclose()

    api = Gateway(
        app,
        settings,
        task_models,
        title=title or f"dromos gateway: {app.name}",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/openapi.json" if docs else None,
        docs_url="/docs" if docs else None,
        redoc_url=None,
    )
    install_handlers(api)
    api.add_middleware(BodyLimit, limit=settings.max_body_size)
    api.include_router(enqueue_router(app, settings, guard, list(task_models)))
    api.include_router(jobs_router(app, guard))
    api.include_router(events_router(app, guard))
    api.include_router(batches_router(app, guard))
    api.include_router(health_router(app, settings))
    return api
