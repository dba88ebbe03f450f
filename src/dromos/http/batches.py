"""``/v1/batches``: submit jobs of any tasks as one batch, follow it, be told when it is done.

``POST /v1/batches`` with ``{"jobs": [{"task", "args", "kwargs", "options"}, ...],
"on_complete": {"task", "args", "kwargs"}}`` checks every job against its task (422 names
``jobs.<i>.<field>``; nothing is queued), queues them all in one write, and answers 202 with
``Location: /v1/batches/{id}`` and the batch (counts, progress, job ids). ``GET
/v1/batches/{id}`` is the same answer now; ``GET /v1/batches/{id}/events`` streams it as
Server-Sent Events (``progress`` on every change, ``done`` at the end, then the stream ends).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Path, Request
from starlette.responses import Response, StreamingResponse

from dromos.app import App
from dromos.batch import Batch
from dromos.errors import (
    ConfigurationError,
    DependencyNotFound,
    JobNotFound,
    UnknownTaskError,
    ValidationError,
)
from dromos.http.auth import Scope
from dromos.http.enqueue import read_model, unknown_dependency
from dromos.http.guard import Guard
from dromos.http.openapi import json_body
from dromos.http.problems import ProblemError, field_errors
from dromos.http.responses import BatchAnswer
from dromos.http.schemas import BatchJob, BatchRequest
from dromos.http.sse import format_event
from dromos.task import Call

__all__ = ["batches_router"]

BatchId = Annotated[str, Path(description="The batch id.", min_length=1, max_length=200)]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such batch."}}
_POLL = 0.25  # seconds between two looks at a streamed batch's counts
_KEEPALIVE = 15.0


async def _answer(batch: Batch[Any]) -> BatchAnswer:
    s = await batch.astatus()
    return BatchAnswer(
        id=s.id,
        total=s.total,
        succeeded=s.succeeded,
        failed=s.failed,
        cancelled=s.cancelled,
        ended=s.ended,
        progress=s.progress,
        done=s.done,
        callback_id=s.callback_id,
        finished_at=s.finished_at,
        jobs=[j.id for j in batch.jobs],
    )


async def _batch(app: App, batch_id: str) -> Batch[Any]:
    try:
        return await app.aget_batch(batch_id)
    except JobNotFound:
        raise ProblemError(
            404,
            f"no batch {batch_id!r}: check the id, or it outlived its retention",
            slug="unknown-batch",
            title="No such batch",
        ) from None


def _call(app: App, job: BatchJob, where: tuple[Any, ...]) -> Call[Any]:
    """One job of the body as a checked call (422 with its place in the body if it is not)."""
    try:
        task = app.get_task(job.task)
    except UnknownTaskError as exc:
        raise ProblemError(
            422,
            str(exc),
            errors=field_errors(
                [{"loc": (*where, "task"), "msg": str(exc), "type": "unknown_task"}]
            ),
        ) from None
    o = job.options
    if o.idempotency_key is not None:
        raise ProblemError(
            422,
            "a job of a batch cannot take an idempotency key (a repeat "
            "would not belong to the batch)",
            errors=field_errors(
                [
                    {
                        "loc": (*where, "options", "idempotency_key"),
                        "msg": "not in a batch",
                        "type": "batch",
                    }
                ]
            ),
        )
    try:
        bound = task.options(
            delay=o.delay, priority=o.priority, callback_url=o.callback_url,
            depends_on=o.depends_on,
        )  # fmt: skip
    except ConfigurationError as exc:
        raise ProblemError(422, str(exc), errors=[]) from None
    call = Call(task, tuple(job.args), dict(job.kwargs), bound.opts)
    try:
        task.request(call, app.idempotency_window)  # checked here, to say which job
    except ValidationError as exc:
        errors = [{**e, "loc": (*where, "args", *e.get("loc", ()))} for e in exc.errors]
        raise ProblemError(
            422,
            str(exc),
            slug="invalid-arguments",
            title="The arguments do not fit the task's signature",
            errors=field_errors(errors),
        ) from None
    return call


def batches_router(app: App, guard: Guard) -> APIRouter:
    """``POST /v1/batches``, ``GET /v1/batches/{id}`` and its event stream."""
    router = APIRouter(tags=["batches"])
    read = [Depends(guard.require(Scope.READ))]

    @router.post(
        "/v1/batches",
        operation_id="submit_batch",
        summary="Queue jobs of any tasks as one batch",
        description="Every job is checked first (nothing is queued if one does not fit); "
        "`on_complete` runs once when every job has ended, with the summary. Needs the "
        "`enqueue` scope.",
        status_code=202,
        dependencies=[Depends(guard.require(Scope.ENQUEUE))],
        response_model=None,
        responses={
            202: json_body("BatchAnswer", "Queued.", {"Location": {"schema": {"type": "string"}}}),
            422: {"description": "A job's task, arguments or options do not fit."},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "dromos:BatchRequest"}}},
            }
        },
    )
    async def submit(request: Request) -> Response:
        shape = '{"jobs": [{"task": ..., "args": [...]}, ...], "on_complete": {...}}'
        body = await read_model(request, BatchRequest, shape)
        calls = [_call(app, job, ("jobs", i)) for i, job in enumerate(body.jobs)]
        callback: Call[Any] | None = None
        if body.on_complete is not None:
            done = body.on_complete
            sample = {"batch_id": "", "total": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
            checked = BatchJob(task=done.task, args=[sample, *done.args], kwargs=done.kwargs)
            task = _call(app, checked, ("on_complete",)).task  # 422 here if it does not fit
            callback = Call(task, tuple(done.args), dict(done.kwargs))
        try:
            batch = await app.abatch(calls, on_complete=callback)
        except DependencyNotFound as exc:
            where = next(
                (i for i, j in enumerate(body.jobs) if exc.job_id in (j.options.depends_on or ())),
                None,
            )
            place: tuple[str | int, ...] = (
                ("jobs", where, "options", "depends_on") if where is not None else ("jobs",)
            )
            ids = body.jobs[where].options.depends_on if where is not None else None
            raise unknown_dependency(exc, place, ids) from None
        except ValidationError as exc:
            raise ProblemError(422, str(exc), errors=field_errors(exc.errors)) from None
        except ConfigurationError as exc:
            raise ProblemError(422, str(exc), errors=[]) from None
        answer = await _answer(batch)
        location = f"{request.scope.get('root_path', '')}/v1/batches/{batch.id}"
        return Response(
            msgspec.json.encode(answer),
            status_code=202,
            headers={"Location": location},
            media_type="application/json",
        )

    @router.get(
        "/v1/batches/{batch_id}",
        operation_id="get_batch",
        summary="A batch's counts, progress and jobs",
        dependencies=read,
        response_model=None,
        responses={200: json_body("BatchAnswer", "The batch."), **_NOT_FOUND},
    )
    async def get_batch(batch_id: BatchId) -> Response:
        batch = await _batch(app, batch_id)
        return Response(msgspec.json.encode(await _answer(batch)), media_type="application/json")

    @router.get(
        "/v1/batches/{batch_id}/events",
        operation_id="batch_events",
        summary="The batch's progress as Server-Sent Events, until it is done",
        description="`event: progress` on every change of its counts, `event: done` at the "
        "end (then the stream ends); `data:` the batch JSON.",
        dependencies=read,
        response_model=None,
        responses={
            200: {
                "description": "A stream of events.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_NOT_FOUND,
        },
    )
    async def batch_events(batch_id: BatchId) -> Response:
        batch = await _batch(app, batch_id)
        return StreamingResponse(
            _stream(batch), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return router


async def _stream(batch: Batch[Any]) -> AsyncIterator[bytes]:
    yield b"retry: 1000\n\n"
    last: tuple[int, int, int] | None = None
    n, quiet = 0, time.monotonic()
    while True:
        answer = await _answer(batch)
        key = (answer.succeeded, answer.failed, answer.cancelled)
        if key != last or answer.done:
            n += 1
            name = "done" if answer.done else "progress"
            answer_json = msgspec.json.encode(msgspec.structs.replace(answer, jobs=[]))
            yield format_event(name, answer_json, n)
            last, quiet = key, time.monotonic()
            if answer.done:
                return
        elif time.monotonic() - quiet > _KEEPALIVE:
            yield b": keep-alive\n\n"
            quiet = time.monotonic()
        await asyncio.sleep(_POLL)
