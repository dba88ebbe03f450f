"""``POST /v1/tasks/{task}/jobs``: submit a job, and answer at once or when it ended.

One route per task registered when the gateway was made, each with its typed request body in
the OpenAPI document, and the general route for any task by name (tasks registered later
too). The body's arguments go through the task's normal path
(``task.options(...).aenqueue(*args, **kwargs)``), so they are validated exactly as a Python
caller's are and nothing is queued when they do not fit.

Answers: 202 Accepted with ``Location`` and ``Retry-After`` and the status; with
``Prefer: wait=N``, 200 with the final status (and result, or error: a failed job is a
completed request whose body says ``"state": "failed"``) if the job ended within N seconds,
else 202. ``Idempotency-Key`` names the job as ``options.idempotency_key`` does: the same key
returns the same job, never a second one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import msgspec
import pydantic
from fastapi import APIRouter, Depends, Header, Path, Request
from starlette.responses import Response

from dromos.app import App
from dromos.errors import (
    ConfigurationError,
    DependencyNotFound,
    UnknownTaskError,
    ValidationError,
)
from dromos.http.auth import Scope
from dromos.http.guard import Guard
from dromos.http.openapi import ACCEPTED_HEADERS, json_body, task_body
from dromos.http.prefer import parse_prefer
from dromos.http.problems import ProblemError, field_errors
from dromos.http.schemas import JobRequest
from dromos.http.settings import GatewaySettings
from dromos.job import JobState, JobStatus

__all__ = [
    "enqueue_router",
    "job_location",
    "read_json",
    "read_model",
    "respond_with_status",
    "unknown_dependency",
]

M = TypeVar("M", bound=pydantic.BaseModel)

#: Task names that can be a path segment as they are; others use the general route.
_PATH_SAFE = re.compile(r"^[A-Za-z0-9._~-]+$")
_JSON_TYPE = re.compile(r"^application/([a-z0-9.+-]+\+)?json$")

PreferHeader = Annotated[
    str | None,
    Header(
        alias="Prefer",
        description="RFC 7240: `wait=N` answers 200 with the result if the job ends within N "
        "seconds (capped); `respond-async` answers 202 at once.",
    ),
]
IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="The same key returns the same job (the option idempotency_key).",
    ),
]


def job_location(request: Request, job_id: str) -> str:
    """The job's URL path, under the prefix the gateway is mounted at."""
    return f"{request.scope.get('root_path', '')}/v1/jobs/{job_id}"


def _retry_after(status: JobStatus) -> str:
    """Seconds until polling is worthwhile: 1, or until a scheduled job's time."""
    if status.eta is not None and status.state is JobState.SCHEDULED:
        return str(max(1, math.ceil((status.eta - datetime.now(UTC)).total_seconds())))
    return "1"


def respond_with_status(
    request: Request, status: JobStatus, code: int, applied: str | None = None
) -> Response:
    """The status as the body of a 200 (ended) or 202 (accepted, still going) answer."""
    location = job_location(request, status.id)
    headers = {"Location": location}
    if code == 202:
        headers["Retry-After"] = _retry_after(status)
    else:
        headers["Content-Location"] = location
    if applied:
        headers["Preference-Applied"] = applied
    body = msgspec.json.encode(status)
    return Response(body, status_code=code, headers=headers, media_type="application/json")


async def read_json(request: Request, shape: str) -> Any:
    """The body's JSON value: 415 if not JSON by type, 400 if not JSON (``shape`` says what
    to send instead); an empty body is ``{}``."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await request.body()
    if raw.strip() and content_type and not _JSON_TYPE.match(content_type):
        raise ProblemError(415, f"send the body as application/json, not {content_type}")
    try:
        return msgspec.json.decode(raw) if raw.strip() else {}
    except msgspec.DecodeError as exc:
        raise ProblemError(
            400,
            f"the body is not valid JSON ({exc}); send {shape}",
            slug="invalid-json",
            title="The body is not valid JSON",
        ) from None


async def read_model(request: Request, model: type[M], shape: str) -> M:
    """The body as ``model``: 415 if not JSON by type, 400 if not JSON, 422 naming the fields
    that do not fit (``shape`` shows what to send)."""
    data = await read_json(request, shape)
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = field_errors(exc.errors(include_url=False, include_input=False), "(body)")
        raise ProblemError(
            422,
            f"the body does not fit {shape}: " + ", ".join(e.field for e in errors),
            errors=errors,
        ) from None


async def _read_envelope(request: Request) -> JobRequest:
    """The body as a :class:`JobRequest`."""
    return await read_model(
        request, JobRequest, '{"args": [...], "kwargs": {...}, "options": {...}}'
    )


def _options_located(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task's errors, those about the ``callback_url`` option placed under ``options``."""
    return [
        {**e, "loc": ("options", *e.get("loc", ()))} if e.get("type") == "callback_url" else e
        for e in errors
    ]


def unknown_dependency(
    exc: DependencyNotFound, where: tuple[str | int, ...], ids: list[str] | None
) -> ProblemError:
    """The 422 of an enqueue refused for a dependency the broker does not know, naming the
    place in the body (``options.depends_on.<i>``)."""
    loc = (*where, ids.index(exc.job_id)) if ids and exc.job_id in ids else where
    return ProblemError(
        422,
        str(exc),
        slug="unknown-dependency",
        title="A dependency names no job",
        errors=field_errors([{"loc": loc, "msg": str(exc), "type": "unknown_dependency"}]),
    )


def _idempotency_key(envelope: JobRequest, header: str | None) -> str | None:
    option = envelope.options.idempotency_key
    if header is not None and option is not None and header != option:
        raise ProblemError(
            422,
            "the Idempotency-Key header and options.idempotency_key differ; give the key once",
            errors=field_errors(
                [
                    {
                        "loc": ("options", "idempotency_key"),
                        "msg": "differs from the header",
                        "type": "idempotency_key_mismatch",
                    }
                ]
            ),
        )
    return header if header is not None else option


def _enqueuer(app: App, settings: GatewaySettings) -> Callable[..., Awaitable[Response]]:
    async def enqueue(request: Request, task_name: str, idempotency_key: str | None) -> Response:
        try:
            task = app.get_task(task_name)
        except UnknownTaskError as exc:
            raise ProblemError(404, str(exc), slug="unknown-task", title="No such task") from None
        envelope = await _read_envelope(request)
        options = envelope.options
        try:
            bound = task.options(
                delay=options.delay,
                priority=options.priority,
                idempotency_key=_idempotency_key(envelope, idempotency_key),
                callback_url=options.callback_url,
                depends_on=options.depends_on,
            )
            job = await bound.aenqueue(*envelope.args, **envelope.kwargs)
        except ValidationError as exc:
            errors = field_errors(_options_located(exc.errors))
            raise ProblemError(
                422, str(exc), slug="invalid-arguments", title="The arguments do not fit the "
                "task's signature", errors=errors,
            ) from None  # fmt: skip
        except DependencyNotFound as exc:
            raise unknown_dependency(exc, ("options", "depends_on"), options.depends_on) from None
        except ConfigurationError as exc:
            raise ProblemError(422, str(exc), errors=[]) from None
        prefer = parse_prefer(request.headers.getlist("prefer"), settings.max_wait)
        broker = await app.abroker()
        final = None
        if prefer.wait:
            final = await broker.wait(job.id, prefer.wait)
        status = final or await job.astatus()
        ended = prefer.wait is not None and status.state.terminal
        applied = prefer.applied(prefer.wait)
        return respond_with_status(request, status, 200 if ended else 202, applied)

    return enqueue


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: json_body(
        "JobStatus",
        "With `Prefer: wait=N`: the job ended within N seconds (succeeded, failed or "
        "cancelled: see `state`, `result`, `error`).",
        {"Location": ACCEPTED_HEADERS["Location"]},
    ),
    202: json_body("JobStatus", "Queued (or still running after the wait).", ACCEPTED_HEADERS),
    404: {"description": "No such task."},
    422: {"description": "The arguments or options do not fit."},
}


def _typed_endpoint(
    enqueue: Callable[..., Awaitable[Response]], name: str
) -> Callable[..., Awaitable[Response]]:
    """The endpoint of one task's own route (its name bound, not a parameter)."""

    async def typed(
        request: Request, prefer: PreferHeader = None, idempotency_key: IdempotencyHeader = None
    ) -> Response:
        return await enqueue(request, name, idempotency_key)

    return typed


def enqueue_router(
    app: App, settings: GatewaySettings, guard: Guard, task_names: list[str]
) -> APIRouter:
    """The enqueue routes: one per task in ``task_names``, then the general one."""
    router = APIRouter(dependencies=[Depends(guard.require(Scope.ENQUEUE))])
    enqueue = _enqueuer(app, settings)

    operation_ids: set[str] = set()
    for name in task_names:
        if not _PATH_SAFE.match(name):
            continue  # served by the general route below, untyped in the document
        snake = base = "enqueue_" + re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower()
        n = 2
        while snake in operation_ids:  # "a-b" and "a_b"
            snake, n = f"{base}_{n}", n + 1
        operation_ids.add(snake)
        task = app.tasks[name]
        router.add_api_route(
            f"/v1/tasks/{name}/jobs",
            _typed_endpoint(enqueue, name),
            methods=["POST"],
            status_code=202,
            operation_id=snake,
            summary=f"Enqueue {name}",
            description=(task.__doc__ or f"Submit a job of task `{name}`.").strip(),
            tags=["tasks"],
            responses=_RESPONSES,
            openapi_extra=task_body(name),
            response_model=None,
        )

    async def general(
        request: Request,
        task: Annotated[str, Path(description="The task's name.", max_length=200)],
        prefer: PreferHeader = None,
        idempotency_key: IdempotencyHeader = None,
    ) -> Response:
        return await enqueue(request, task, idempotency_key)

    router.add_api_route(
        "/v1/tasks/{task}/jobs",
        general,
        methods=["POST"],
        status_code=202,
        operation_id="enqueue",
        summary="Enqueue a job of any task",
        description="The same as the per-task routes, for a task named in the path.",
        tags=["jobs"],
        responses=_RESPONSES,
        openapi_extra=task_body(None),
        response_model=None,
    )
    return router
