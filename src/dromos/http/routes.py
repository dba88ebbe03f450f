"""The job routes (status, events, cancel, retry, list), queues, and the health probes.

Every route reads through the broker's async interface (``await app.abroker()``), so the
event loop never blocks on it. Status codes, beyond the obvious ones: ``DELETE`` answers 200
with the status it left the job in (``cancelled`` for a waiting job; ``running`` with
``cancel_requested`` for a running one, which its worker then stops; an ended job as it was);
``POST .../retry`` answers 202 like an enqueue, and 409 for a job that is not dead-lettered.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from starlette.responses import Response, StreamingResponse

from dromos._loop import TimeLimit
from dromos.app import App
from dromos.brokers.base import Broker
from dromos.http.auth import Scope
from dromos.http.enqueue import respond_with_status
from dromos.http.guard import Guard
from dromos.http.openapi import ACCEPTED_HEADERS, json_body
from dromos.http.problems import ProblemError
from dromos.http.responses import Health, JobPage, Queue, QueueList
from dromos.http.settings import GatewaySettings
from dromos.http.sse import job_events
from dromos.job import JobState, JobStatus

__all__ = ["health_router", "jobs_router"]

MAX_PAGE = 500

log = logging.getLogger("dromos.http")

JobId = Annotated[str, Path(description="The job id.", min_length=1, max_length=200)]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such job."}}


def _json(value: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(value), headers=headers, media_type="application/json")


async def _status(broker: Broker, job_id: str) -> JobStatus:
    status = await broker.status(job_id)
    if status is None:
        raise ProblemError(
            404,
            f"no job {job_id!r}: check the id, or it outlived its retention",
            slug="unknown-job",
            title="No such job",
        )
    return status


def _next_link(request: Request, params: dict[str, Any], cursor: str) -> str:
    query = urlencode({k: v for k, v in {**params, "cursor": cursor}.items() if v is not None})
    return f'<{request.scope.get("root_path", "")}/v1/jobs?{query}>; rel="next"'


def jobs_router(app: App, guard: Guard) -> APIRouter:
    """``/v1/jobs...`` and ``/v1/queues``."""
    router = APIRouter(tags=["jobs"])
    read = [Depends(guard.require(Scope.READ))]
    _add_reading(router, app, read)
    _add_control(router, app, guard)
    _add_listing(router, app, read)
    return router


def _add_reading(router: APIRouter, app: App, read: list[Any]) -> None:
    """One job: its status, and its event stream."""

    @router.get(
        "/v1/jobs/{job_id}",
        operation_id="get_job",
        summary="A job's status, progress, result or error",
        dependencies=read,
        response_model=None,
        responses={200: json_body("JobStatus", "The job's status."), **_NOT_FOUND},
    )
    async def get_job(job_id: JobId) -> Response:
        return _json(await _status(await app.abroker(), job_id))

    @router.get(
        "/v1/jobs/{job_id}/events",
        operation_id="job_events",
        summary="The job's changes as Server-Sent Events, until it ends",
        description="`event:` the new state, or `progress`; `data:` the status JSON; `id:` "
        "counts the events. The stream ends after a terminal state.",
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
    async def events(
        job_id: JobId,
        last_event_id: Annotated[
            str | None, Header(alias="Last-Event-ID", description="Continue the numbering.")
        ] = None,
    ) -> Response:
        broker = await app.abroker()
        first = await _status(broker, job_id)  # 404 now, not half-way into a stream
        start = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
        return StreamingResponse(
            job_events(broker, first, min(start, 1 << 62)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def _add_control(router: APIRouter, app: App, guard: Guard) -> None:
    """Cancel (``enqueue`` scope) and replay (``admin``)."""

    @router.delete(
        "/v1/jobs/{job_id}",
        operation_id="cancel_job",
        summary="Cancel a job",
        description="A waiting job is cancelled at once; a running one is asked to stop "
        "(`cancel_requested`); an ended one is left as it is. Needs the `enqueue` scope.",
        dependencies=[Depends(guard.require(Scope.ENQUEUE))],
        response_model=None,
        responses={200: json_body("JobStatus", "The status the job was left in."), **_NOT_FOUND},
    )
    async def cancel_job(job_id: JobId) -> Response:
        broker = await app.abroker()
        if await broker.cancel(job_id) is None:
            await _status(broker, job_id)  # raises the 404
        return _json(await _status(broker, job_id))

    @router.post(
        "/v1/jobs/{job_id}/retry",
        operation_id="retry_job",
        summary="Replay a dead-lettered (failed) job",
        description="It runs afresh with a new retry budget, keeping its error history. "
        "Needs the `admin` scope.",
        dependencies=[Depends(guard.require(Scope.ADMIN))],
        status_code=202,
        response_model=None,
        responses={
            202: json_body("JobStatus", "Back in its queue.", ACCEPTED_HEADERS),
            409: {"description": "The job is not dead-lettered."},
            **_NOT_FOUND,
        },
    )
    async def retry_job(request: Request, job_id: JobId) -> Response:
        broker = await app.abroker()
        moved = await broker.replay([job_id])
        status = await _status(broker, job_id)
        if job_id not in moved:
            raise ProblemError(
                409,
                f"job {job_id} is {status.state.value}, not failed: only dead letters are replayed",
                slug="not-dead-lettered",
                title="The job is not dead-lettered",
            )
        return respond_with_status(request, status, 202)


def _add_listing(router: APIRouter, app: App, read: list[Any]) -> None:
    """The job list and the queue counts."""

    @router.get(
        "/v1/jobs",
        operation_id="list_jobs",
        summary="Jobs, newest first, a page at a time",
        description="Follow `next_cursor` (or the `Link: rel=next` header) for older jobs.",
        dependencies=read,
        response_model=None,
        responses={
            200: json_body(
                "JobPage",
                "One page of jobs.",
                {
                    "Link": {
                        "description": 'rel="next": the next page.',
                        "required": False,
                        "schema": {"type": "string"},
                    }
                },
            )
        },
    )
    async def list_jobs(
        request: Request,
        state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
        task: Annotated[str | None, Query(description="Only this task's.", max_length=200)] = None,
        queue: Annotated[
            str | None, Query(description="Only this queue's.", max_length=200)
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Jobs per page.")] = 50,
        cursor: Annotated[
            str | None, Query(description="From a previous page's next_cursor.", max_length=200)
        ] = None,
    ) -> Response:
        broker = await app.abroker()
        # One more than asked: whether it comes tells if there is a next page.
        found = await broker.jobs(
            state=state, task=task, queue=queue, limit=limit + 1, before=cursor
        )
        page, more = found[:limit], len(found) > limit
        next_cursor = page[-1].id if more and page else None
        headers = {}
        if next_cursor is not None:
            params = {"state": state.value if state else None, "task": task, "queue": queue,
                      "limit": limit}  # fmt: skip
            headers["Link"] = _next_link(request, params, next_cursor)
        return _json(JobPage(jobs=page, next_cursor=next_cursor), headers)

    @router.get(
        "/v1/queues",
        operation_id="list_queues",
        summary="How many jobs each queue holds in each state",
        dependencies=read,
        response_model=None,
        responses={200: json_body("QueueList", "Every queue that holds jobs.")},
    )
    async def list_queues() -> Response:
        stats = await (await app.abroker()).queues()
        queues = [
            Queue(queue=q.queue, counts={s.value: q.counts.get(s.value, 0) for s in JobState})
            for q in stats
        ]
        return _json(QueueList(queues=queues))


def health_router(app: App, settings: GatewaySettings) -> APIRouter:
    """``/healthz`` (the process answers) and ``/readyz`` (the broker answers too); no key."""
    router = APIRouter(tags=["health"])

    @router.get(
        "/healthz",
        operation_id="healthz",
        summary="Alive: the process answers (no broker call)",
        response_model=None,
        responses={200: json_body("Health", "Alive.")},
    )
    async def healthz() -> Response:
        return _json(Health(status="ok"))

    @router.get(
        "/readyz",
        operation_id="readyz",
        summary="Ready: the broker answers within the timeout",
        response_model=None,
        responses={
            200: json_body("Health", "The broker answers."),
            503: {"description": "The broker does not answer."},
        },
    )
    async def readyz() -> Response:
        try:
            async with TimeLimit(settings.ready_timeout):  # an answer past it is a timeout
                # A point read of an id that cannot exist: one cheap round trip.
                await (await app.abroker()).status("readyz-probe")
        except Exception as exc:
            # Unauthenticated callers read this: the broker's own words go to the log only.
            log.warning("readyz: the broker is not ready: %r", exc)
            why = (
                f"did not answer within {settings.ready_timeout:g}s"
                if isinstance(exc, TimeoutError)
                else f"failed ({type(exc).__name__}; the gateway's log has the details)"
            )
            raise ProblemError(503, f"the broker {why}", headers={"Retry-After": "5"}) from None
        return _json(Health(status="ready"))

    return router
